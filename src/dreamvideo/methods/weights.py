"""What the baselines train and store: parameter groups of the UNet (spatial, temporal), and weight files."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dreamvideo.artifacts import WEIGHTS_FILE
from dreamvideo.fileio import DreamVideoError, load_safetensors, save_safetensors

TEMPORAL_MODULES = ("temp_convs", "temp_attentions", "transformer_in")


class BaselineError(DreamVideoError):
    pass


@dataclass
class Trainable:
    """The parameters a baseline trains and how they are stored.

    Args:
        params: the trained tensors by name (state-dict names for weights, peft names for LoRA).
        file: the file they go to, in the output folder and in every checkpoint.
        save: ``save(path)`` writes them.
        load: ``load(path)`` restores them (resume).
        info: extra JSON fields describing them (e.g. the LoRA config, re-initialised modules).
    """

    params: dict[str, nn.Parameter]
    file: str
    save: Callable[[Path], None]
    load: Callable[[Path], None]
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- parameter groups


def canonical_name(name: str) -> str:
    """A UNet parameter's plain diffusers state-dict name: without DreamVideo's block wrapper, peft's base layer or
    the gradient-checkpointing wrapper."""
    for wrapper in (".block.", ".base_layer.", ".module."):
        name = name.replace(wrapper, ".")
    return name


def unet_parameters(unet: nn.Module) -> dict[str, nn.Parameter]:
    """Base parameters of the UNet by canonical name (adapter and LoRA parameters excluded)."""
    skip = ("adapters.", "lora_")
    return {canonical_name(n): p for n, p in unet.named_parameters() if not any(s in n for s in skip)}


def is_temporal(name: str) -> bool:
    """Temporal layers of a UNet3D: ``temp_convs``, ``temp_attentions`` and ``transformer_in``."""
    return any(part in TEMPORAL_MODULES for part in name.split("."))


def spatial_parameters(unet: nn.Module) -> dict[str, nn.Parameter]:
    """Everything that is not temporal: resnets, spatial transformers, conv in/out, time embedding, samplers."""
    return {n: p for n, p in unet_parameters(unet).items() if not is_temporal(n)}


def temporal_parameters(unet: nn.Module) -> dict[str, nn.Parameter]:
    """The temporal convolutions and transformers (``transformer_in`` included)."""
    return {n: p for n, p in unet_parameters(unet).items() if is_temporal(n)}


def select(params: dict[str, nn.Parameter], pattern: str) -> dict[str, nn.Parameter]:
    """The parameters whose name matches the regular expression (``re.search``)."""
    rx = re.compile(pattern)
    return {n: p for n, p in params.items() if rx.search(n)}


def count(params: dict[str, nn.Parameter] | list[nn.Parameter]) -> int:
    """Number of scalars in ``params``."""
    values = params.values() if isinstance(params, dict) else params
    return sum(p.numel() for p in values)


# ----------------------------------------------------------------------------- weight files


def save_weights(params: dict[str, nn.Parameter], path: Path, metadata: dict[str, Any] | None = None) -> None:
    """Store exactly the given (trained) tensors under their state-dict names."""
    save_safetensors({n: p.detach().float() for n, p in params.items()}, path, metadata)


def load_weights(
    unet: nn.Module, tensors: dict[str, torch.Tensor], scale: float = 1.0, source: str = ""
) -> None:
    """Load stored tensors into the UNet: ``W <- W + scale * (W_stored - W)`` (scale 1 replaces the weights).

    Raises:
        BaselineError: a name the UNet does not have or a shape that differs.
    """
    own = unet_parameters(unet)
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise BaselineError(f"{source}: {len(unknown)} tensors do not fit this UNet (e.g. {unknown[:2]})")
    with torch.no_grad():
        for name, value in tensors.items():
            p = own[name]
            if p.shape != value.shape:
                raise BaselineError(
                    f"{source}: {name} has shape {tuple(value.shape)}, the UNet {tuple(p.shape)}"
                )
            value = value.to(p.device, p.dtype)
            p.copy_(value if scale == 1.0 else p + scale * (value - p))


def weight_trainable(
    unet: nn.Module, params: dict[str, nn.Parameter], info: dict[str, Any] | None = None
) -> Trainable:
    """Train UNet weights in place; store only them, under their state-dict names, in ``unet_weights.safetensors``."""

    def load(path: Path) -> None:
        load_weights(unet, load_safetensors(path)[0], source=str(path))

    return Trainable(
        params,
        WEIGHTS_FILE,
        lambda path: save_weights(params, path),
        load,
        {"storage": "weights", **(info or {})},
    )


def spatial_trainable(unet: nn.Module) -> Trainable:
    """All spatial parameters of the UNet (Dreamix, the spatial fine-tune, AnimateDiff's DreamBooth step)."""
    return weight_trainable(unet, spatial_parameters(unet), {"trained": "spatial UNet parameters"})


def temporal_trainable(unet: nn.Module) -> Trainable:
    """All temporal parameters of the UNet (the temporal fine-tune)."""
    return weight_trainable(unet, temporal_parameters(unet), {"trained": "temporal UNet parameters"})
