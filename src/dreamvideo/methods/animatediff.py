"""AnimateDiff: DreamBooth on the spatial (image) layers for a subject, as Dreamix; for a motion, a motion module
trained from scratch.

Every temporal transformer of the UNet (``transformer_in`` and each ``temp_attentions.*``: norm, proj_in,
transformer blocks, proj_out) is re-initialised with diffusers' default initialisation (seeded), and its
``proj_out`` (weight and bias) is zeroed so that each module starts as the identity (AnimateDiff's zero-initialised
output); then only these modules are trained. The temporal convolutions (``temp_convs``) keep their pretrained
weights, frozen.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

from dreamvideo.methods.baseline import BaselineMotion, BaselineSubject
from dreamvideo.methods.registry import register
from dreamvideo.methods.weights import (
    Trainable,
    canonical_name,
    spatial_trainable,
    unet_parameters,
    weight_trainable,
)

SUMMARY = "DreamBooth on spatial layers; temporal transformers re-initialised and trained"


def reinit_temporal_transformers(unet: torch.nn.Module, seed: int) -> list[str]:
    """Re-initialise every temporal transformer (seeded) with a zero ``proj_out``; return their module paths.

    Each layer gets PyTorch's default initialisation (``reset_parameters``), which is what constructing the
    diffusers module anew gives.
    """
    paths = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for path, module in unet.named_modules():
            if not isinstance(module, TransformerTemporalModel):
                continue
            for layer in module.modules():
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
            torch.nn.init.zeros_(module.proj_out.weight)
            torch.nn.init.zeros_(module.proj_out.bias)
            paths.append(canonical_name(path))
    return paths


@register
class AnimateDiffSubject(BaselineSubject):
    name = "animatediff"
    summary = SUMMARY
    identifier = True

    def trainable(self) -> Trainable:
        return spatial_trainable(self.pipe.unet)


@register
class AnimateDiffMotion(BaselineMotion):
    name = "animatediff"
    summary = SUMMARY

    def trainable(self) -> Trainable:
        paths = reinit_temporal_transformers(self.pipe.unet, self.stage.seed)
        chosen = {
            n: p
            for n, p in unet_parameters(self.pipe.unet).items()
            if any(n.startswith(m + ".") for m in paths)
        }
        info = {
            "trained": "temporal transformers re-initialised and trained from scratch (proj_out zero-initialised)",
            "reinitialised": paths,
        }
        return weight_trainable(self.pipe.unet, chosen, info)
