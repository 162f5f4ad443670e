"""The adapter and the peft-style wrappers that place it on a transformer block's sub-layers (method.md, section 3).

A pre-norm transformer block computes, for each sub-layer ``f`` (``attn1``, ``attn2``, ``ff``) with pre-norm ``n``::

    h <- f(n(h)) + h

The block's own forward (diffusers') runs unchanged. :func:`wrap_sublayer` wraps the block's ``f`` in an
:class:`AdaptedSublayer` (``base_layer = f``) and its ``n`` in a :class:`DeferredNorm` (``base_layer = n``). The
deferred norm passes ``h`` through unchanged, so the sub-layer wrapper receives the raw hidden state ``h``, applies
``n`` and ``f`` itself and adds the adapter's term. The block then adds its own skip ``h``:

- parallel (the paper's): the wrapper returns ``f(n(h)) + delta(h)``, the block makes it ``f(n(h)) + A(h)``;
- serial (ablation): with ``s = f(n(h)) + h`` it returns ``f(n(h)) + delta(s)``, the block makes it ``A(s)``;

where ``A(h) = h + delta(h)``. Without an active adapter the wrapper returns ``f(n(h))``: the block computes
exactly what it computes unwrapped. Both wrappers keep the state-dict keys of the modules they wrap (no
``base_layer.`` in ``state_dict()``); adapter tensors appear under ``<site>.adapters.<name>.``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

BASE = "base_layer."
ADAPTERS = "adapters."


class Adapter(nn.Module):
    """``A(h, e) = h + W_up(GELU(W_down(h + lam * W_cond(e))))`` with ``W_up`` zero-initialised (section 3).

    Args:
        dim: width ``d`` of the hidden states it adapts.
        hidden_dim: bottleneck width (paper: ``d // 2``).
        condition_dim: size of the appearance embedding ``e``; ``None`` drops the ``W_cond`` term.
    """

    def __init__(self, dim: int, hidden_dim: int, condition_dim: int | None = None) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden_dim)
        self.up = nn.Linear(hidden_dim, dim)
        nn.init.zeros_(self.up.weight)  # zero init: the adapted model starts exactly as the base model
        nn.init.zeros_(self.up.bias)
        self.cond = nn.Linear(condition_dim, dim) if condition_dim else None
        self.scale = 1.0

    def delta(
        self,
        hidden_states: torch.Tensor,
        condition: torch.Tensor | None = None,
        strength: torch.Tensor | float = 1.0,
    ) -> torch.Tensor:
        """``W_up(GELU(W_down(h + lam * W_cond(e))))`` times the adapter scale; ``A(h, e) = h + delta``."""
        # the adapter's own precision (fp32 trainables on a half-precision base)
        dtype = self.down.weight.dtype
        x = hidden_states.to(dtype)
        if self.cond is not None and condition is not None:
            # no appearance embedding: no condition term (the authors'); appearance dropout passes e = 0 instead
            x = x + strength * self.cond(condition.to(dtype))
        return (self.scale * self.up(F.gelu(self.down(x)))).to(hidden_states.dtype)

    def forward(self, hidden_states: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        return hidden_states + self.delta(hidden_states, condition)


@dataclass
class AdapterCondition:
    """Per-sample appearance embedding ``e`` (batch, dim) and guidance strength ``lam`` (batch,)."""

    embeds: torch.Tensor | None
    strength: torch.Tensor | float = 1.0


def _drop_base_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict post-hook: ``<prefix>base_layer.x`` -> ``<prefix>x`` (the wrapped module's own keys)."""
    for key in [k for k in state_dict if k.startswith(prefix + BASE)]:
        state_dict[prefix + key[len(prefix + BASE) :]] = state_dict.pop(key)


def _add_base_prefix(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook, the inverse of :func:`_drop_base_prefix` (adapter keys stay as they are)."""
    own = (prefix + BASE, prefix + ADAPTERS)
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(own)]:
        state_dict[prefix + BASE + key[len(prefix) :]] = state_dict.pop(key)


class _Wrapper(nn.Module):
    """A module around ``base_layer`` whose state-dict keys are those of ``base_layer`` (plus its own)."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.register_state_dict_post_hook(_drop_base_prefix)
        self.register_load_state_dict_pre_hook(_add_base_prefix)


class DeferredNorm(_Wrapper):
    """Stands in for the pre-norm ``n`` of an adapted sub-layer: returns ``h`` unchanged.

    The :class:`AdaptedSublayer` that follows applies ``n`` (this module's ``base_layer``) itself, because the
    paper's parallel adapter reads the raw, pre-norm ``h``.

    Args:
        base_layer: the block's norm (e.g. ``norm2`` for ``attn2``).
    """

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


class AdaptedSublayer(_Wrapper):
    """A block's sub-layer ``f`` (``base_layer``) with its pre-norm ``n`` and any number of named adapters.

    Called with the raw hidden state ``h`` (its norm is a :class:`DeferredNorm`), it returns ``f(n(h))`` plus
    the adapters' terms; the block adds ``h`` (see the module docstring for the two placements). diffusers'
    forward chunking calls ``ff`` once per chunk: over tokens (``enable_forward_chunking(dim=1)``) that is
    exact; over rows (``dim=0``) per-sample conditions would be given to the wrong rows, so use ``dim=1``.

    Args:
        base_layer: the sub-layer (``attn1``, ``attn2`` or ``ff`` of a ``BasicTransformerBlock``).
        norm: the block's pre-norm of that sub-layer (a plain reference: the block's DeferredNorm owns it).
        path: the transformer block's path in the UNet (``down_blocks.0.attentions.0.transformer_blocks.0``).
        site: the sub-layer's name in the block (``attn1``, ``attn2``, ``ff``).
    """

    def __init__(self, base_layer: nn.Module, norm: nn.Module, path: str, site: str) -> None:
        super().__init__(base_layer)
        object.__setattr__(self, "norm", norm)  # not a sub-module: its weights stay under the block's norm
        self.path = path
        self.site = site
        self.adapters = nn.ModuleDict()  # adapter name -> Adapter
        self.placement: dict[str, str] = {}
        self.disabled: set[str] = set()
        self.conditions: dict[str, AdapterCondition] = {}  # replaced by the UNet's shared dict (see model.py)

    def add_adapter(self, name: str, adapter: Adapter, placement: str = "parallel") -> None:
        """Add ``adapter`` under ``name`` with ``placement`` ``"parallel"`` or ``"serial"``."""
        self.adapters[name] = adapter
        self.placement[name] = placement

    def remove_adapter(self, name: str) -> None:
        del self.adapters[name]
        self.placement.pop(name, None)
        self.disabled.discard(name)

    def _active(self) -> list[tuple[str, Adapter]]:
        return [(n, a) for n, a in self.adapters.items() if n not in self.disabled and a.scale != 0]

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = hidden_states
        out = self.base_layer(self.norm(h), *args, **kwargs)  # f(n(h)); the block adds h
        active = self._active()
        if not active:
            return out
        for name, adapter in active:
            if self.placement[name] == "parallel":  # h <- f(n(h)) + A(h),  A(h) = h + delta(h)  (section 3)
                out = out + adapter.delta(h, *self._condition(name, h))
        for name, adapter in active:
            if self.placement[name] == "serial":  # h <- A(f(n(h)) + h)  (section 3, ablation)
                s = out + h
                out = out + adapter.delta(s, *self._condition(name, s))
        return out

    def _condition(self, name: str, like: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | float]:
        """Adapter ``name``'s ``(e, lam)``, broadcast to the token rows of ``like`` and cast to its dtype."""
        cond = self.conditions.get(name)
        if cond is None:
            return None, 1.0
        expand = partial(_per_row, rows=like.shape[0], dtype=like.dtype, where=f"{self.path}.{self.site}")
        return expand(cond.embeds), expand(cond.strength)


def _per_row(value, rows: int, dtype: torch.dtype, where: str):
    """Broadcast a per-sample tensor to every token row: rows are batch-major (b * frames or b * pixels).

    Args:
        value: a tensor (samples,) or (samples, dim), or anything else (returned as is).
        rows: the number of rows of the sub-layer's input.
        dtype: the dtype of the sub-layer's input.
        where: the site, for the error message.
    """
    if not isinstance(value, torch.Tensor):
        return value
    per_sample = value.reshape(value.shape[0], 1, -1) if value.ndim > 1 else value.reshape(-1, 1, 1)
    if rows % per_sample.shape[0]:
        raise ValueError(f"{where}: condition batch {per_sample.shape[0]} does not divide {rows} token rows")
    return per_sample.repeat_interleave(rows // per_sample.shape[0], dim=0).to(dtype)


def unwrap(module: nn.Module | None) -> nn.Module | None:
    """The module a wrapper of this file stands for (the module itself when it is not wrapped)."""
    return module.base_layer if isinstance(module, _Wrapper) else module


def wrap_sublayer(block: nn.Module, site: str, norm: str, path: str) -> AdaptedSublayer:
    """Wrap ``block.<site>`` in an :class:`AdaptedSublayer` and ``block.<norm>`` in a :class:`DeferredNorm`.

    Idempotent: an already wrapped site is returned as it is.

    Args:
        block: a pre-norm transformer block (diffusers' ``BasicTransformerBlock``).
        site: the sub-layer attribute (``attn1``, ``attn2``, ``ff``).
        norm: the attribute of its pre-norm (``norm1``, ``norm2``, ``norm3``).
        path: the block's path in the UNet (names the adapter's tensors).
    """
    current = block._modules[site]
    if isinstance(current, AdaptedSublayer):
        return current
    deferred = DeferredNorm(block._modules[norm])
    wrapper = AdaptedSublayer(current, deferred.base_layer, path, site)
    block._modules[norm] = deferred
    block._modules[site] = wrapper
    return wrapper


def unwrap_sublayer(block: nn.Module, site: str, norm: str) -> None:
    """Put the original sub-layer and norm objects back (the inverse of :func:`wrap_sublayer`)."""
    block._modules[site] = unwrap(block._modules[site])
    block._modules[norm] = unwrap(block._modules[norm])
