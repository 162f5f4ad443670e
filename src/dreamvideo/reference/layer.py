"""Reference attention (method.md, section 9): the processors that read and write appearance features.

The main UNet's spatial self-attention ``attn1`` gets a :class:`ReferenceAttnProcessor` that wraps the module's own
processor (peft-style ``base_processor``). With reference features ``y_a`` set, it computes

    Q = W_Q z,   K' = W_K [z, y_a],   V' = W_V [z, y_a],   out = W_O softmax(Q K'^T / sqrt(d)) V'

where ``z`` are the tokens of one frame and ``[., .]`` concatenates along the token axis (section 9). Without
features, disabled, or at scale 0 it calls the wrapped processor unchanged (bit-identical to the plain UNet).

The appearance encoder's ``attn1`` layers get a :class:`ReferenceCaptureProcessor` that records their input (the
normalised hidden states ``y_a``) and, after the last needed site, stops the encoder's forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


class EncoderStop(Exception):
    """Raised by the last capture site so that the encoder does not compute layers nobody reads."""


@dataclass
class ReferenceState:
    """What the reference processors of one UNet share (owned by the UNet, see ``model.py``).

    Args:
        features: block path -> reference features (samples, tokens, dim); rows of the attention input are
            batch-major (``sample * frames + frame``), so each sample's features are repeated for its frames.
        scale: blend ``out = plain + scale * (reference - plain)``; a float or a per-sample tensor (samples,).
        enabled: ``False`` bypasses every processor.
    """

    features: dict[str, torch.Tensor] = field(default_factory=dict)
    scale: torch.Tensor | float = 1.0
    enabled: bool = True


def _per_row(value: torch.Tensor, rows: int, what: str) -> torch.Tensor:
    """Repeat a per-sample tensor (samples, ...) for every row of a (samples * frames, ...) batch."""
    if rows % value.shape[0]:
        raise ValueError(f"{what}: {value.shape[0]} reference samples do not divide {rows} attention rows")
    return value.repeat_interleave(rows // value.shape[0], dim=0)


def reference_attention(attn, hidden_states: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Self-attention of ``hidden_states`` (rows, tokens, dim) whose keys/values also see ``reference``
    (rows, ref_tokens, dim): section 9's ``Q = W_Q z``, ``K' = W_K [z, y_a]``, ``V' = W_V [z, y_a]``.

    Args:
        attn: a diffusers ``Attention`` (self-attention, no group/spatial norm).
        hidden_states: the normalised tokens ``z`` of each frame.
        reference: ``y_a`` for each row (already repeated per frame).
    """
    residual, rows = hidden_states, hidden_states.shape[0]
    context = torch.cat([hidden_states, reference.to(hidden_states.dtype)], dim=1)  # [z, y_a] along tokens
    query = attn.to_q(hidden_states)  # Q = W_Q z
    key = attn.to_k(context)  # K' = W_K [z, y_a]
    value = attn.to_v(context)  # V' = W_V [z, y_a]
    head_dim = key.shape[-1] // attn.heads
    query = query.view(rows, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(rows, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(rows, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False, scale=attn.scale)
    out = out.transpose(1, 2).reshape(rows, -1, attn.heads * head_dim).to(query.dtype)
    out = attn.to_out[1](attn.to_out[0](out))  # W_O, then dropout
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class ReferenceAttnProcessor:
    """Processor of a main-UNet ``attn1`` that concatenates reference features to its keys and values.

    Args:
        base_processor: the processor it replaces (restored on detach, called whenever no reference applies).
        path: the transformer block's path (the key of its features in ``state``).
        state: the UNet's shared :class:`ReferenceState`.
    """

    def __init__(self, base_processor, path: str, state: ReferenceState) -> None:
        self.base_processor = base_processor
        self.path = path
        self.state = state
        self.calls = 0  # forward calls that used the reference (tests count them)

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs
    ):
        state = self.state
        reference = state.features.get(self.path) if state.enabled else None
        scale = state.scale
        if reference is None or (not isinstance(scale, torch.Tensor) and scale == 0):
            return self.base_processor(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs
            )
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise ValueError(
                f"{self.path}: reference attention needs a plain self-attention over (rows, tokens, dim)"
            )
        self.calls += 1
        rows = hidden_states.shape[0]
        out = reference_attention(attn, hidden_states, _per_row(reference, rows, self.path))
        if isinstance(scale, torch.Tensor) or scale != 1:
            plain = self.base_processor(attn, hidden_states, None, None, temb, **kwargs)
            if isinstance(scale, torch.Tensor):
                scale = _per_row(scale.reshape(-1, 1, 1).to(out), rows, self.path)
            out = plain + scale * (out - plain)
        return out


@dataclass
class CaptureStore:
    """Features recorded by an encoder's capture processors during one forward pass."""

    features: dict[str, torch.Tensor] = field(default_factory=dict)
    stop_at: str | None = None  # raise EncoderStop after capturing this site
    stopping: bool = False  # only inside the encoder's own forward (not in a checkpoint's recomputation)


class ReferenceCaptureProcessor:
    """Processor of an appearance-encoder ``attn1`` that records its input ``y_a`` (rows, tokens, dim).

    Args:
        base_processor: the processor it wraps (runs the encoder's own attention).
        path: the transformer block's path, the same in the encoder and the main UNet.
        store: the encoder's :class:`CaptureStore`.
    """

    def __init__(self, base_processor, path: str, store: CaptureStore) -> None:
        self.base_processor = base_processor
        self.path = path
        self.store = store

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs
    ):
        self.store.features[self.path] = hidden_states  # y_a: the normalised input of the self-attention
        if self.store.stopping and self.store.stop_at == self.path:
            raise EncoderStop
        return self.base_processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
