"""What a site map is, and the registry that finds the one describing a model."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from dreamvideo.adapters.layer import unwrap

_SITE_MAPS: list[SiteMap] = []


@dataclass(frozen=True)
class SiteMap:
    """Where DreamVideo's adapters go in one base architecture (method.md, section 3: sites and placement).

    Args:
        name: the architecture's name, for messages.
        model_types: the model classes this map describes.
        containers: adapter target (``"spatial"``, ``"temporal"``) -> the transformer classes whose blocks that
            target adapts.
        block_types: the classes of those blocks.
        sublayers: adapter site -> the block attribute of its pre-norm, e.g. ``{"attn2": "norm2"}``.
        norm_types: the blocks' ``norm_type`` values for which every site computes ``h <- f(n(h)) + h``.
        blocks_attr: the attribute of a transformer that lists its blocks.
    """

    name: str
    model_types: tuple[type, ...]
    containers: dict[str, tuple[type, ...]]
    block_types: tuple[type, ...]
    sublayers: dict[str, str]
    norm_types: tuple[str, ...] = ("layer_norm",)
    blocks_attr: str = "transformer_blocks"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, self.model_types)

    def blocks(self, model: nn.Module, target: str) -> list[tuple[str, nn.Module]]:
        """``(path, block)`` of every block that adapters of ``target`` adapt, in module order.

        Paths are the plain diffusers paths (``down_blocks.0.attentions.0.transformer_blocks.0``), also when the
        transformers sit in gradient-checkpointing wrappers.
        """
        found = []
        for path, transformer in model.named_modules():
            if isinstance(transformer, self.containers[target]):
                path = path.replace(".module.", ".").removesuffix(".module")
                blocks = getattr(transformer, self.blocks_attr)
                found += [(f"{path}.{self.blocks_attr}.{i}", b) for i, b in enumerate(blocks)]
        return [(p, b) for p, b in found if isinstance(b, self.block_types)]

    def check(self, block: nn.Module, path: str, sites: tuple[str, ...]) -> None:
        """Refuse a block whose sub-layers do not follow ``h <- f(n(h)) + h`` or that lacks one of ``sites``."""
        norm_type = getattr(block, "norm_type", None)
        if norm_type not in self.norm_types or getattr(block, "pos_embed", None) is not None:
            raise ValueError(
                f"{path}: adapters support pre-norm {self.norm_types} transformer blocks, got {norm_type!r}"
            )
        unknown = [s for s in sites if s not in self.sublayers or block._modules.get(s) is None]
        if unknown:
            raise ValueError(f"{path}: {self.name} blocks have no sub-layer {unknown[0]!r} for an adapter")

    def width(self, block: nn.Module) -> int:
        """The width ``d`` of the block's hidden states."""
        return unwrap(block._modules[next(iter(self.sublayers.values()))]).normalized_shape[0]


def register(site_map: SiteMap) -> SiteMap:
    """Make ``site_map`` known to :func:`site_map_for` (each file of this package registers its map)."""
    _SITE_MAPS.append(site_map)
    return site_map


def site_map_for(model: nn.Module) -> SiteMap:
    """The site map that describes ``model``."""
    for site_map in _SITE_MAPS:
        if site_map.matches(model):
            return site_map
    known = ", ".join(m.name for m in _SITE_MAPS)
    raise ValueError(
        f"no adapter site map describes {type(model).__name__} (known: {known}); "
        "add one file to dreamvideo/adapters/sites/"
    )
