"""Attach, enable, scale, feed and detach reference attention on a diffusers ``UNet3DConditionModel``.

Same style as :mod:`dreamvideo.adapters`: the base weights are never touched; attaching swaps the processors of the
chosen spatial self-attentions for :class:`~dreamvideo.reference.layer.ReferenceAttnProcessor`s that wrap the
originals, and detaching puts the originals back, so a detached UNet is exactly the plain one.
"""

from __future__ import annotations

import torch
from torch import nn

from dreamvideo.adapters.layer import unwrap
from dreamvideo.adapters.model import find_transformer_blocks
from dreamvideo.reference.config import ReferenceConfig
from dreamvideo.reference.layer import ReferenceAttnProcessor, ReferenceState

_STATE_ATTR = "_dreamvideo_reference_state"
_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def _forward_order(path: str) -> tuple[int, ...]:
    """Sort key of a block path in UNet3D forward order (down, mid, up; then by index)."""
    parts = path.split(".")
    return (_ORDER.get(parts[0], -1), *(int(p) for p in parts if p.isdigit()))


def find_reference_sites(unet: nn.Module, config: ReferenceConfig) -> list[tuple[str, nn.Module]]:
    """``(block path, attn1)`` of every spatial transformer block in ``config.blocks``, in forward order.

    Args:
        unet: a ``UNet3DConditionModel`` (adapters and gradient checkpointing may be attached).
        config: which levels (``down``/``mid``/``up``).
    """
    sites = []
    for path, block in find_transformer_blocks(unet, "spatial"):
        if path.startswith(config.prefixes()):
            sites.append((path, unwrap(block.attn1)))
    return sorted(sites, key=lambda s: _forward_order(s[0]))


def reference_state(unet: nn.Module) -> ReferenceState | None:
    """The shared state of the UNet's reference attention, ``None`` when none is attached."""
    return getattr(unet, _STATE_ATTR, None)


def _require(unet: nn.Module) -> ReferenceState:
    state = reference_state(unet)
    if state is None:
        raise KeyError("no reference attention is attached to this UNet")
    return state


def attach_reference_attention(unet: nn.Module, config: ReferenceConfig | None = None) -> list[str]:
    """Hook the spatial self-attentions of ``config.blocks`` (default mid and up, section 9); return their paths.

    Args:
        unet: the main UNet.
        config: :class:`ReferenceConfig`.
    """
    config = config or ReferenceConfig()
    if reference_state(unet) is not None:
        raise ValueError("reference attention is already attached; detach it first")
    sites = find_reference_sites(unet, config)
    if not sites:
        raise ValueError(f"no spatial transformer blocks in {config.blocks} of this UNet")
    for path, attn in sites:
        if attn.is_cross_attention or attn.group_norm is not None or attn.spatial_norm is not None:
            raise ValueError(f"{path}.attn1: not a plain self-attention")
    state = ReferenceState()
    for path, attn in sites:
        attn.set_processor(ReferenceAttnProcessor(attn.processor, path, state))
    object.__setattr__(unet, _STATE_ATTR, state)
    return [p for p, _ in sites]


def _hooked(unet: nn.Module) -> list[nn.Module]:
    return [m for m in unet.modules() if isinstance(getattr(m, "processor", None), ReferenceAttnProcessor)]


def detach_reference_attention(unet: nn.Module) -> None:
    """Restore every original processor and forget the features."""
    _require(unet)
    for attn in _hooked(unet):
        attn.set_processor(attn.processor.base_processor)
    object.__delattr__(unet, _STATE_ATTR)


def reference_paths(unet: nn.Module) -> list[str]:
    return sorted((a.processor.path for a in _hooked(unet)), key=_forward_order)


def enable_reference_attention(unet: nn.Module, enabled: bool = True) -> None:
    """Turn the reference on or off without detaching (off: exactly the plain UNet)."""
    _require(unet).enabled = bool(enabled)


def set_reference_scale(unet: nn.Module, scale: torch.Tensor | float) -> None:
    """Blend ``plain + scale * (reference - plain)``: 1 is section 9's attention, 0 the plain one; a tensor
    (samples,) gives each sample its own (e.g. the two classifier-free-guidance branches)."""
    _require(unet).scale = scale if isinstance(scale, torch.Tensor) else float(scale)


def set_reference_features(unet: nn.Module, features: dict[str, torch.Tensor]) -> None:
    """Give every hooked block its reference features ``y_a`` (samples, tokens, dim), keyed by block path."""
    state = _require(unet)
    missing = sorted(set(reference_paths(unet)) - set(features))
    if missing:
        raise ValueError(f"reference features missing for {len(missing)} hooked blocks, e.g. {missing[0]}")
    state.features = dict(features)


def clear_reference_features(unet: nn.Module) -> None:
    """No features: every hooked block runs its plain attention."""
    state = reference_state(unet)
    if state is not None:
        state.features = {}
