"""Configuration of a DreamVideo adapter: where it goes and how big it is (method.md, section 3)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SITES = ("attn1", "attn2", "ff")


@dataclass
class AdapterConfig:
    """Which transformer blocks get an adapter, at which sub-layers, and its shape.

    Args:
        name: adapter name inside the UNet (``"identity"``, ``"motion"``, or any other for research use).
        target: ``"spatial"`` blocks (``Transformer2DModel``) or ``"temporal"`` blocks (``TransformerTemporalModel``,
            including ``transformer_in``).
        sites: sub-layers of each block that get an adapter: ``attn1`` (self-attention), ``attn2`` (cross-attention in
            spatial blocks, a second self-attention in temporal ones), ``ff``.
        hidden_ratio: bottleneck width as a fraction of the block width (paper: d/2).
        condition_dim: size of the appearance embedding ``e``; ``None`` for unconditioned adapters.
        placement: ``"parallel"`` (paper: ``h = f(n(h)) + A(h)``) or ``"serial"`` (``h = A(f(n(h)) + h)``, ablation).
        blocks: optional list of block-path prefixes; only matching blocks get adapters (ablations on subsets).
    """

    name: str
    target: Literal["spatial", "temporal"]
    sites: tuple[str, ...]
    hidden_ratio: float = 0.5
    condition_dim: int | None = None
    placement: Literal["parallel", "serial"] = "parallel"
    blocks: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        self.sites = tuple(self.sites)
        unknown = [s for s in self.sites if s not in SITES]
        if unknown or not self.sites:
            raise ValueError(f"adapter sites must be a non-empty subset of {SITES}, got {self.sites}")
        if self.target not in ("spatial", "temporal"):
            raise ValueError(f"adapter target must be 'spatial' or 'temporal', got {self.target!r}")
        if self.placement not in ("parallel", "serial"):
            raise ValueError(f"adapter placement must be 'parallel' or 'serial', got {self.placement!r}")
        if not 0 < self.hidden_ratio <= 4:
            raise ValueError(f"hidden_ratio must be in (0, 4], got {self.hidden_ratio}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sites"] = list(self.sites)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def identity_adapter_config(**overrides: Any) -> AdapterConfig:
    """The paper's identity adapter: parallel to the cross-attention of every spatial block, no condition."""
    return AdapterConfig(**{"name": "identity", "target": "spatial", "sites": ("attn2",), **overrides})


def motion_adapter_config(condition_dim: int | None, **overrides: Any) -> AdapterConfig:
    """The paper's motion adapter: parallel to attn1, attn2 and ff of every temporal block, with appearance guidance."""
    return AdapterConfig(
        **{
            "name": "motion",
            "target": "temporal",
            "sites": SITES,
            "condition_dim": condition_dim,
            **overrides,
        }
    )
