"""The adapter layer and the transformer-block wrapper that places it (method.md, section 3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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
        dtype = self.down.weight.dtype  # the adapter's own precision (fp32 trainables on a half-precision base)
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


class AdaptedTransformerBlock(nn.Module):
    """Wraps a diffusers ``BasicTransformerBlock`` (pre-norm, ``layer_norm``) and adds adapters at its sub-layers.

    The wrapped block's own forward is re-stated here so that each residual connection is visible:
    parallel placement replaces the skip ``h`` of sub-layer ``f`` by ``A(h)``: ``h <- f(n(h)) + A(h)``;
    serial placement applies ``A`` after it: ``h <- A(f(n(h)) + h)``.
    """

    def __init__(self, block: nn.Module, path: str) -> None:
        super().__init__()
        norm_type = getattr(block, "norm_type", None)
        if norm_type != "layer_norm" or getattr(block, "pos_embed", None) is not None:
            raise ValueError(f"{path}: adapters support pre-norm 'layer_norm' transformer blocks, got {norm_type!r}")
        self.block = block
        self.path = path
        self.adapters = nn.ModuleDict()  # adapter name -> ModuleDict(site -> Adapter)
        self.placement: dict[str, str] = {}
        self.disabled: set[str] = set()
        self.conditions: dict[str, AdapterCondition] = {}  # shared dict, owned by the UNet (see model.py)

    def _active(self, site: str) -> list[tuple[str, Adapter]]:
        return [
            (name, sites[site])
            for name, sites in self.adapters.items()
            if site in sites and name not in self.disabled and sites[site].scale != 0
        ]

    def _expand(self, value: torch.Tensor | float | None, rows: int) -> torch.Tensor | float | None:
        """Broadcast a per-sample tensor to every token row: rows are batch-major (b * frames or b * pixels)."""
        if not isinstance(value, torch.Tensor):
            return value
        per_sample = value.reshape(value.shape[0], 1, -1) if value.ndim > 1 else value.reshape(-1, 1, 1)
        if rows % per_sample.shape[0]:
            raise ValueError(f"{self.path}: condition batch {per_sample.shape[0]} does not divide {rows} token rows")
        return per_sample.repeat_interleave(rows // per_sample.shape[0], dim=0)

    def _residual(self, site: str, hidden_states: torch.Tensor, sublayer_out: torch.Tensor) -> torch.Tensor:
        active = self._active(site)
        if not active:
            return sublayer_out + hidden_states
        rows = hidden_states.shape[0]
        parallel = [(n, a) for n, a in active if self.placement[n] == "parallel"]
        serial = [(n, a) for n, a in active if self.placement[n] == "serial"]
        skip = hidden_states
        for name, adapter in parallel:  # h <- f(n(h)) + A(h),  A(h) = h + delta(h)
            skip = skip + adapter.delta(hidden_states, *self._condition(name, rows, hidden_states))
        out = sublayer_out + skip
        for name, adapter in serial:  # h <- A(f(n(h)) + h)
            out = out + adapter.delta(out, *self._condition(name, rows, out))
        return out

    def _condition(self, name: str, rows: int, like: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | float]:
        cond = self.conditions.get(name)
        if cond is None:
            return None, 1.0
        embeds = self._expand(cond.embeds, rows)
        strength = self._expand(cond.strength, rows)
        if isinstance(embeds, torch.Tensor):
            embeds = embeds.to(like.dtype)
        if isinstance(strength, torch.Tensor):
            strength = strength.to(like.dtype)
        return embeds, strength

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        timestep: torch.LongTensor | None = None,
        cross_attention_kwargs: dict | None = None,
        class_labels: torch.LongTensor | None = None,
        added_cond_kwargs: dict | None = None,
    ) -> torch.Tensor:
        b = self.block
        kwargs = dict(cross_attention_kwargs or {})
        kwargs.pop("gligen", None)
        h = hidden_states
        out = b.attn1(
            b.norm1(h),
            encoder_hidden_states=encoder_hidden_states if b.only_cross_attention else None,
            attention_mask=attention_mask,
            **kwargs,
        )
        h = self._residual("attn1", h, out)
        if h.ndim == 4:
            h = h.squeeze(1)
        if b.attn2 is not None:
            out = b.attn2(
                b.norm2(h), encoder_hidden_states=encoder_hidden_states, attention_mask=encoder_attention_mask, **kwargs
            )
            h = self._residual("attn2", h, out)
        h = self._residual("ff", h, self._feed_forward(b.norm3(h)))
        if h.ndim == 4:
            h = h.squeeze(1)
        return h

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        if getattr(b, "_chunk_size", None) is None:
            return b.ff(x)
        chunks = x.chunk(x.shape[b._chunk_dim] // b._chunk_size, dim=b._chunk_dim)
        return torch.cat([b.ff(c) for c in chunks], dim=b._chunk_dim)
