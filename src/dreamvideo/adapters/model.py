"""Attach, scale, disable, save, load and remove adapters on any diffusers ``UNet3DConditionModel``."""

from __future__ import annotations

import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from torch import nn

from dreamvideo.adapters.config import AdapterConfig
from dreamvideo.adapters.layer import AdaptedTransformerBlock, Adapter, AdapterCondition

_CONDITIONS_ATTR = "_dreamvideo_adapter_conditions"


def _parent_and_name(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, name = path.rpartition(".")
    return (root.get_submodule(parent_path) if parent_path else root), name


def find_transformer_blocks(unet: nn.Module, target: str) -> list[tuple[str, nn.Module]]:
    """``(path, block)`` for every transformer block of ``target`` kind, in module order.

    Spatial blocks sit in ``Transformer2DModel``s; temporal ones in ``TransformerTemporalModel``s (``temp_attentions``
    and ``transformer_in``). Paths are stable diffusers paths, already-wrapped blocks included.
    """
    kind = Transformer2DModel if target == "spatial" else TransformerTemporalModel
    found = []
    for tpath, transformer in unet.named_modules():
        if not isinstance(transformer, kind):
            continue
        tpath = tpath.replace(".module.", ".").removesuffix(".module")  # tolerate checkpointing wrappers
        for i, block in enumerate(transformer.transformer_blocks):
            if isinstance(block, (BasicTransformerBlock, AdaptedTransformerBlock)):
                found.append((f"{tpath}.transformer_blocks.{i}", block))
    return found


def adapted_blocks(unet: nn.Module) -> list[AdaptedTransformerBlock]:
    return [m for m in unet.modules() if isinstance(m, AdaptedTransformerBlock)]


def _conditions(unet: nn.Module) -> dict[str, AdapterCondition]:
    if not hasattr(unet, _CONDITIONS_ATTR):
        object.__setattr__(unet, _CONDITIONS_ATTR, {})
    return getattr(unet, _CONDITIONS_ATTR)


def attach_adapter(unet: nn.Module, config: AdapterConfig, seed: int = 0) -> nn.ModuleDict:
    """Add adapters described by ``config`` to ``unet`` and return them (``path -> site -> Adapter``).

    The base weights are untouched; each targeted block is wrapped once in an :class:`AdaptedTransformerBlock`.
    ``seed`` makes the (non-zero) initialisation of ``W_down`` and ``W_cond`` reproducible.
    """
    if config.name in adapter_names(unet):
        raise ValueError(f"an adapter named {config.name!r} is already attached")
    blocks = find_transformer_blocks(unet, config.target)
    if config.blocks is not None:
        blocks = [(p, b) for p, b in blocks if any(p.startswith(prefix) for prefix in config.blocks)]
    if not blocks:
        raise ValueError(f"no {config.target} transformer blocks match adapter {config.name!r}")
    added = nn.ModuleDict()
    ref = next(unet.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for path, block in blocks:
            _attach_to_block(unet, path, block, config, added, ref)
    return added


def _attach_to_block(
    unet: nn.Module, path: str, block: nn.Module, config: AdapterConfig, added: nn.ModuleDict, ref: torch.Tensor
) -> None:
    if not isinstance(block, AdaptedTransformerBlock):
        wrapper = AdaptedTransformerBlock(block, path)
        wrapper.conditions = _conditions(unet)
        parent, name = _parent_and_name(unet, _module_path(unet, block))
        parent._modules[name] = wrapper
        block = wrapper
    dim = block.block.norm1.normalized_shape[0]
    hidden = max(1, int(dim * config.hidden_ratio))
    sites = nn.ModuleDict({s: Adapter(dim, hidden, config.condition_dim) for s in config.sites})
    sites.to(device=ref.device, dtype=torch.float32)
    block.adapters[config.name] = sites
    block.placement[config.name] = config.placement
    added[path.replace(".", "/")] = sites


def _module_path(root: nn.Module, module: nn.Module) -> str:
    for path, m in root.named_modules():
        if m is module:
            return path
    raise ValueError("module not found in root")


def adapter_names(unet: nn.Module) -> list[str]:
    names: list[str] = []
    for block in adapted_blocks(unet):
        names += [n for n in block.adapters if n not in names]
    return names


def detach_adapter(unet: nn.Module, name: str) -> None:
    """Remove adapter ``name``; blocks left with no adapter are unwrapped back to the original diffusers block."""
    if name not in adapter_names(unet):
        raise KeyError(f"no adapter named {name!r} is attached")
    for block in adapted_blocks(unet):
        if name in block.adapters:
            del block.adapters[name]
        block.placement.pop(name, None)
        block.disabled.discard(name)
        if not block.adapters:
            parent, child = _parent_and_name(unet, _module_path(unet, block))
            parent._modules[child] = block.block
    _conditions(unet).pop(name, None)


def set_adapter_scale(unet: nn.Module, name: str, scale: float) -> None:
    for adapter in _adapters(unet, name).values():
        adapter.scale = float(scale)


def enable_adapter(unet: nn.Module, name: str, enabled: bool = True) -> None:
    _adapters(unet, name)  # raises if missing
    for block in adapted_blocks(unet):
        if name in block.adapters:
            (block.disabled.discard if enabled else block.disabled.add)(name)


def set_adapter_condition(
    unet: nn.Module, name: str, embeds: torch.Tensor | None, strength: torch.Tensor | float = 1.0
) -> None:
    """Give adapter ``name`` its appearance embedding ``e`` (batch, dim) and strength ``lam`` (scalar or (batch,))."""
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
    found = {
        f"{block.path}.{site}": adapter
        for block in adapted_blocks(unet)
        if name in block.adapters
        for site, adapter in block.adapters[name].items()
    }
    if not found:
        raise KeyError(f"no adapter named {name!r} is attached")
    return found


def adapter_parameters(unet: nn.Module, name: str) -> list[nn.Parameter]:
    return [p for adapter in _adapters(unet, name).values() for p in adapter.parameters()]


def adapter_state_dict(unet: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Tensors of adapter ``name`` keyed ``"{block_path}.{site}.{down|up|cond}.{weight|bias}"``."""
    return {
        f"{key}.{pname}": p.detach().clone()
        for key, adapter in _adapters(unet, name).items()
        for pname, p in adapter.named_parameters()
    }


def load_adapter_state_dict(unet: nn.Module, name: str, state_dict: dict[str, torch.Tensor]) -> None:
    """Load tensors saved by :func:`adapter_state_dict`; every key and shape must match exactly."""
    own = {f"{key}.{pname}": p for key, adapter in _adapters(unet, name).items() for pname, p in adapter.named_parameters()}
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"adapter {name!r} does not fit this UNet: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:2]})"
        )
    with torch.no_grad():
        for key, p in own.items():
            if p.shape != state_dict[key].shape:
                raise ValueError(f"adapter {name!r}: {key} has shape {tuple(state_dict[key].shape)}, expected {tuple(p.shape)}")
            p.copy_(state_dict[key])


def count_adapter_parameters(unet: nn.Module, name: str) -> int:
    return sum(p.numel() for p in adapter_parameters(unet, name))


def expected_adapter_parameters(unet: nn.Module, config: AdapterConfig) -> int:
    """Section 3's formula: per site ``d^2 + 1.5 d`` (with ``hidden = d/2``) plus ``cond_dim * d + d`` if conditioned."""
    total = 0
    for path, block in find_transformer_blocks(unet, config.target):
        if config.blocks is not None and not any(path.startswith(p) for p in config.blocks):
            continue
        inner = block.block if isinstance(block, AdaptedTransformerBlock) else block
        d = inner.norm1.normalized_shape[0]
        hidden = max(1, int(d * config.hidden_ratio))
        per_site = 2 * d * hidden + hidden + d
        if config.condition_dim:
            per_site += config.condition_dim * d + d
        total += per_site * len(config.sites)
    return total
