"""DreamVideo's adapters as trainable stages and as files: attach a fresh one, save it, load one into a pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from dreamvideo import adapters as ad
from dreamvideo.fileio import DreamVideoError, load_safetensors, save_safetensors


def attach_fresh(unet: nn.Module, config: ad.AdapterConfig, seed: int) -> list[nn.Parameter]:
    """Attach a new adapter (replacing one of the same name) and return its trainable parameters.

    Args:
        unet: the UNet.
        config: the adapter's placement and width.
        seed: seed of its initialisation.
    """
    if config.name in ad.adapter_names(unet):
        ad.detach_adapter(unet, config.name)
    ad.attach_adapter(unet, config, seed=seed)
    return ad.adapter_parameters(unet, config.name)


def save_adapter(unet: nn.Module, config: ad.AdapterConfig, file: Path) -> None:
    """Write the adapter's tensors, with its config in the metadata."""
    save_safetensors(ad.adapter_state_dict(unet, config.name), file, {"adapter": config.to_dict()})


def restore_adapter(unet: nn.Module, config: ad.AdapterConfig, file: Path) -> None:
    """Load saved tensors into the attached adapter (resume)."""
    ad.load_adapter_state_dict(unet, config.name, load_safetensors(file)[0])


def load_adapter(pipe: Any, config: ad.AdapterConfig, file: Path, scale: float) -> None:
    """Attach the adapter ``config`` to ``pipe``'s UNet with the tensors of ``file`` at output scale ``scale``.

    Raises:
        DreamVideoError: the tensors do not fit the adapter (the adapter is removed again).
    """
    if config.name in ad.adapter_names(pipe.unet):
        ad.detach_adapter(pipe.unet, config.name)
    tensors, _ = load_safetensors(file)
    ad.attach_adapter(pipe.unet, config)
    try:
        ad.load_adapter_state_dict(pipe.unet, config.name, tensors)
    except ValueError as err:
        ad.detach_adapter(pipe.unet, config.name)
        raise DreamVideoError(f"{file}: {err}") from err
    ad.set_adapter_scale(pipe.unet, config.name, scale)
    pipe.unet.to(pipe.device)
