"""Motion baselines that fine-tune UNet weights on the videos: ModelScopeT2V fine-tuning, Tune-A-Video, AnimateDiff.

- ``finetune``: every temporal parameter (``temp_convs``, ``temp_attentions``, ``transformer_in``).
- ``tune-a-video``: one video; the query projections ``to_q`` of every attention (spatial self- and
  cross-attention, both temporal attentions) plus the temporal attentions themselves (``attn1``/``attn2`` with
  their ``norm1``/``norm2`` in every temporal transformer block), as Tune-A-Video tunes queries and temporal
  attention.
- ``animatediff``: a motion module trained from scratch. Every temporal transformer of the UNet
  (``transformer_in`` and each ``temp_attentions.*``: norm, proj_in, transformer blocks, proj_out) is
  re-initialised with diffusers' default initialisation (seeded), and its ``proj_out`` (weight and bias) is zeroed
  so that each module starts as the identity (AnimateDiff's zero-initialised output); then only these modules are
  trained. The temporal convolutions (``temp_convs``) keep their pretrained weights, frozen.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

from dreamvideo.baselines.common import (
    Trainable,
    canonical_name,
    run_motion,
    select,
    temporal_parameters,
    unet_parameters,
    weight_trainable,
)
from dreamvideo.pipeline import DreamVideoPipeline
from dreamvideo.stages import MotionSettings

TEMPORAL_ATTENTION = r"(temp_attentions\.\d+|transformer_in)\.transformer_blocks\.\d+\.(attn1|attn2|norm1|norm2)\."


def finetune_trainable(pipe: DreamVideoPipeline, seed: int) -> Trainable:
    return weight_trainable(pipe.unet, temporal_parameters(pipe.unet), {"trained": "temporal UNet parameters"})


def tune_a_video_trainable(pipe: DreamVideoPipeline, seed: int) -> Trainable:
    params = unet_parameters(pipe.unet)
    chosen = select(params, r"\.to_q\.weight$") | select(params, TEMPORAL_ATTENTION)
    return weight_trainable(pipe.unet, chosen, {"trained": "to_q of every attention + temporal attentions"})


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


def animatediff_trainable(pipe: DreamVideoPipeline, seed: int) -> Trainable:
    paths = reinit_temporal_transformers(pipe.unet, seed)
    chosen = {n: p for n, p in unet_parameters(pipe.unet).items() if any(n.startswith(m + ".") for m in paths)}
    info = {"trained": "temporal transformers re-initialised and trained from scratch (proj_out zero-initialised)",
            "reinitialised": paths}
    return weight_trainable(pipe.unet, chosen, info)


def learn_temporal_motion(
    method: str,
    pipe: DreamVideoPipeline,
    videos: str | os.PathLike,
    out: str | os.PathLike,
    settings: MotionSettings,
    captions: str | dict[str, str] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train a motion baseline (``finetune``, ``tune-a-video`` or ``animatediff``) on videos.

    Args:
        method: which one.
        pipe, videos, out, settings, captions, overwrite, resume, progress: see
            :func:`dreamvideo.baselines.common.run_motion`. Tune-A-Video uses the first video only.
    """
    make = {"finetune": finetune_trainable, "tune-a-video": tune_a_video_trainable,
            "animatediff": animatediff_trainable}[method]
    return run_motion(method, pipe, videos, out, settings, make, captions=captions,
                      max_videos=1 if method == "tune-a-video" else None, overwrite=overwrite, resume=resume,
                      progress=progress)


def learn_finetune(*args, **kwargs) -> Path:
    """ModelScopeT2V fine-tuning of the temporal parameters (arguments as :func:`learn_temporal_motion`)."""
    return learn_temporal_motion("finetune", *args, **kwargs)


def learn_tune_a_video(*args, **kwargs) -> Path:
    """Tune-A-Video on the first video."""
    return learn_temporal_motion("tune-a-video", *args, **kwargs)


def learn_animatediff(*args, **kwargs) -> Path:
    """AnimateDiff's motion module trained from scratch."""
    return learn_temporal_motion("animatediff", *args, **kwargs)
