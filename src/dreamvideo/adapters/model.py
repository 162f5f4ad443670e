"""Attach, scale, disable, save, load and remove adapters on a base UNet, peft-style.

Attaching wraps sub-layers of the blocks that the UNet's site map names (:mod:`dreamvideo.adapters.sites`) in
:class:`~dreamvideo.adapters.layer.AdaptedSublayer`s; the base weights are never touched, and detaching the last
adapter of a sub-layer puts the original module objects back, so a detached UNet is exactly the untouched one.
"""

from __future__ import annotations

import torch
from torch import nn

from dreamvideo.adapters.config import AdapterConfig
from dreamvideo.adapters.layer import (
    AdaptedSublayer,
    Adapter,
    AdapterCondition,
    unwrap_sublayer,
    wrap_sublayer,
)
from dreamvideo.adapters.sites import SiteMap, site_map_for
from dreamvideo.fileio import copy_exactly

_CONDITIONS_ATTR = "_dreamvideo_adapter_conditions"


def find_transformer_blocks(unet: nn.Module, target: str) -> list[tuple[str, nn.Module]]:
    """``(path, block)`` for every transformer block of ``target`` kind (``"spatial"``/``"temporal"``), in module
    order, as the UNet's site map finds them (plain diffusers paths, adapted blocks included)."""
    return site_map_for(unet).blocks(unet, target)


def _selected_blocks(
    site_map: SiteMap, unet: nn.Module, config: AdapterConfig
) -> list[tuple[str, nn.Module]]:
    blocks = site_map.blocks(unet, config.target)
    if config.blocks is not None:
        blocks = [(p, b) for p, b in blocks if any(p.startswith(prefix) for prefix in config.blocks)]
    return blocks


def adapted_sublayers(unet: nn.Module) -> list[AdaptedSublayer]:
    return [m for m in unet.modules() if isinstance(m, AdaptedSublayer)]


def _conditions(unet: nn.Module) -> dict[str, AdapterCondition]:
    if not hasattr(unet, _CONDITIONS_ATTR):
        object.__setattr__(unet, _CONDITIONS_ATTR, {})
    return getattr(unet, _CONDITIONS_ATTR)


def attach_adapter(unet: nn.Module, config: AdapterConfig, seed: int = 0) -> nn.ModuleDict:
    """Add the adapters described by ``config`` to ``unet`` and return them (``path -> site -> Adapter``).

    Args:
        unet: a model that a site map describes (e.g. diffusers' ``UNet3DConditionModel``).
        config: where the adapters go and their shape.
        seed: makes the (non-zero) initialisation of ``W_down`` and ``W_cond`` reproducible.
    """
    if config.name in adapter_names(unet):
        raise ValueError(f"an adapter named {config.name!r} is already attached")
    site_map = site_map_for(unet)
    blocks = _selected_blocks(site_map, unet, config)
    if not blocks:
        raise ValueError(f"no {config.target} transformer blocks match adapter {config.name!r}")
    for path, block in blocks:  # refuse before changing anything
        site_map.check(block, path, config.sites)
    added = nn.ModuleDict()
    ref = next(unet.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for path, block in blocks:
            added[path.replace(".", "/")] = _attach_to_block(unet, site_map, path, block, config, ref)
    return added


def _attach_to_block(
    unet: nn.Module, site_map: SiteMap, path: str, block: nn.Module, config: AdapterConfig, ref: torch.Tensor
) -> nn.ModuleDict:
    dim = site_map.width(block)
    hidden = max(1, int(dim * config.hidden_ratio))
    adapters = nn.ModuleDict({s: Adapter(dim, hidden, config.condition_dim) for s in config.sites})
    adapters.to(device=ref.device, dtype=torch.float32)  # trainables in fp32, also on a half-precision base
    for site, adapter in adapters.items():
        wrapper = wrap_sublayer(block, site, site_map.sublayers[site], path)
        wrapper.conditions = _conditions(unet)
        wrapper.add_adapter(config.name, adapter, config.placement)
    return adapters


def adapter_names(unet: nn.Module) -> list[str]:
    names: list[str] = []
    for wrapper in adapted_sublayers(unet):
        names += [n for n in wrapper.adapters if n not in names]
    return names


def _wrapped_sites(unet: nn.Module) -> list[tuple[nn.Module, str, str, AdaptedSublayer]]:
    """``(block, site, norm attribute, wrapper)`` of every adapted sub-layer of the site map's blocks."""
    site_map = site_map_for(unet)
    return [
        (block, site, norm, block._modules[site])
        for target in site_map.containers
        for _, block in site_map.blocks(unet, target)
        for site, norm in site_map.sublayers.items()
        if isinstance(block._modules.get(site), AdaptedSublayer)
    ]


def detach_adapter(unet: nn.Module, name: str) -> None:
    """Remove adapter ``name``; sub-layers left with no adapter get their original module objects back."""
    if name not in adapter_names(unet):
        raise KeyError(f"no adapter named {name!r} is attached")
    for block, site, norm, wrapper in _wrapped_sites(unet):
        if name in wrapper.adapters:
            wrapper.remove_adapter(name)
            if not wrapper.adapters:
                unwrap_sublayer(block, site, norm)
    _conditions(unet).pop(name, None)


def set_adapter_scale(unet: nn.Module, name: str, scale: float) -> None:
    """Multiply adapter ``name``'s term by ``scale`` (0: exactly the base model)."""
    for adapter in _adapters(unet, name).values():
        adapter.scale = float(scale)


def enable_adapter(unet: nn.Module, name: str, enabled: bool = True) -> None:
    """Turn adapter ``name`` on or off without detaching it (off: exactly the base model)."""
    _adapters(unet, name)  # raises if missing
    for wrapper in adapted_sublayers(unet):
        if name in wrapper.adapters:
            (wrapper.disabled.discard if enabled else wrapper.disabled.add)(name)


def set_adapter_condition(
    unet: nn.Module, name: str, embeds: torch.Tensor | None, strength: torch.Tensor | float = 1.0
) -> None:
    """Give adapter ``name`` its appearance embedding ``e`` (batch, dim) and strength ``lam`` (scalar or (batch,)).

    The condition stays until cleared: callers set it inside ``try`` and clear or restore it in ``finally``.
    """
    _conditions(unet)[name] = AdapterCondition(embeds, strength)


def clear_adapter_condition(unet: nn.Module, name: str) -> None:
    _conditions(unet).pop(name, None)


def get_adapter_condition(unet: nn.Module, name: str) -> AdapterCondition | None:
    """The condition set for adapter ``name`` (``None``: no condition term), e.g. to restore it later."""
    return _conditions(unet).get(name)


def restore_adapter_condition(unet: nn.Module, name: str, condition: AdapterCondition | None) -> None:
    """Put back a condition returned by :func:`get_adapter_condition` (``None`` clears it)."""
    if condition is None:
        clear_adapter_condition(unet, name)
    else:
        _conditions(unet)[name] = condition


def _adapters(unet: nn.Module, name: str) -> dict[str, Adapter]:
    """Adapter ``name``'s layers keyed ``"{block_path}.{site}"``, in module order."""
    found = {f"{w.path}.{w.site}": w.adapters[name] for w in adapted_sublayers(unet) if name in w.adapters}
    if not found:
        raise KeyError(f"no adapter named {name!r} is attached")
    return found


def adapter_parameters(unet: nn.Module, name: str) -> list[nn.Parameter]:
    return [p for adapter in _adapters(unet, name).values() for p in adapter.parameters()]


def _named_adapter_parameters(unet: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """The saved-file names: ``"{block_path}.{site}.{down|up|cond}.{weight|bias}"``."""
    return {
        f"{key}.{pname}": p
        for key, adapter in _adapters(unet, name).items()
        for pname, p in adapter.named_parameters()
    }


def adapter_state_dict(unet: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Tensors of adapter ``name`` keyed ``"{block_path}.{site}.{down|up|cond}.{weight|bias}"``."""
    return {key: p.detach().clone() for key, p in _named_adapter_parameters(unet, name).items()}


def load_adapter_state_dict(unet: nn.Module, name: str, state_dict: dict[str, torch.Tensor]) -> None:
    """Load tensors saved by :func:`adapter_state_dict`; every key and shape must match exactly."""
    copy_exactly(
        _named_adapter_parameters(unet, name),
        state_dict,
        lambda missing, unexpected: ValueError(
            f"adapter {name!r} does not fit this UNet: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:2]})"
        ),
        lambda key, shape, expected: ValueError(
            f"adapter {name!r}: {key} has shape {shape}, expected {expected}"
        ),
    )


def count_adapter_parameters(unet: nn.Module, name: str) -> int:
    return sum(p.numel() for p in adapter_parameters(unet, name))


def expected_adapter_parameters(unet: nn.Module, config: AdapterConfig) -> int:
    """Section 3's formula: per site ``d^2 + 1.5 d`` (with ``hidden = d/2``) plus ``cond_dim * d + d`` if conditioned."""
    site_map = site_map_for(unet)
    total = 0
    for _, block in _selected_blocks(site_map, unet, config):
        d = site_map.width(block)
        hidden = max(1, int(d * config.hidden_ratio))
        per_site = 2 * d * hidden + hidden + d  # W_down + W_up, with biases
        if config.condition_dim:
            per_site += config.condition_dim * d + d  # W_cond
        total += per_site * len(config.sites)
    return total
