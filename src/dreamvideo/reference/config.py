"""Configuration of reference attention and of the appearance encoder (method.md, section 9)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

BLOCK_GROUPS = ("down", "mid", "up")


@dataclass
class ReferenceConfig:
    """Where the appearance encoder's features enter the main UNet.

    Args:
        blocks: UNet levels whose spatial self-attentions (``attn1`` of the ``Transformer2DModel`` blocks) take the
            reference features as extra keys/values. Section 9 (MagicAnimate): ``("mid", "up")``; add ``"down"``
            or drop one for ablations.
        name: the mechanism's name inside the UNet (one reference attention per UNet).
    """

    blocks: tuple[str, ...] = ("mid", "up")
    name: str = "reference"

    def __post_init__(self) -> None:
        self.blocks = tuple(self.blocks)
        unknown = [b for b in self.blocks if b not in BLOCK_GROUPS]
        if unknown or not self.blocks:
            raise ValueError(
                f"reference blocks must be a non-empty subset of {BLOCK_GROUPS}, got {self.blocks}"
            )

    def prefixes(self) -> tuple[str, ...]:
        """Module-path prefixes of the chosen levels (``down_blocks.``, ``mid_block.``, ``up_blocks.``)."""
        names = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."}
        return tuple(names[b] for b in self.blocks)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["blocks"] = list(self.blocks)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReferenceConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
