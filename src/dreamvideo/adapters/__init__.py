"""DreamVideo adapters, peft-style (method.md, section 3).

- :mod:`~dreamvideo.adapters.config`: where an adapter goes and its shape (:class:`AdapterConfig`).
- :mod:`~dreamvideo.adapters.layer`: the :class:`Adapter` and the wrappers that put it on a sub-layer
  (:class:`AdaptedSublayer` around ``attn1``/``attn2``/``ff``, :class:`DeferredNorm` around its pre-norm).
- :mod:`~dreamvideo.adapters.sites`: one site map per base architecture (which blocks, which sub-layers, their
  norms); supporting another base is one new file there.
- :mod:`~dreamvideo.adapters.model`: attach, scale, enable, condition, save, load and detach on a UNet.
"""

from dreamvideo.adapters.config import SITES, AdapterConfig, identity_adapter_config, motion_adapter_config
from dreamvideo.adapters.layer import (
    AdaptedSublayer,
    Adapter,
    AdapterCondition,
    DeferredNorm,
    unwrap,
    unwrap_sublayer,
    wrap_sublayer,
)
from dreamvideo.adapters.model import (
    adapted_sublayers,
    adapter_names,
    adapter_parameters,
    adapter_state_dict,
    attach_adapter,
    clear_adapter_condition,
    count_adapter_parameters,
    detach_adapter,
    enable_adapter,
    expected_adapter_parameters,
    find_transformer_blocks,
    get_adapter_condition,
    load_adapter_state_dict,
    restore_adapter_condition,
    set_adapter_condition,
    set_adapter_scale,
)
from dreamvideo.adapters.sites import SiteMap, site_map_for


def attach_identity_adapter(unet, **overrides):
    """Attach the paper's identity adapter (spatial cross-attention, parallel) and return its modules."""
    return attach_adapter(unet, identity_adapter_config(**overrides))


def attach_motion_adapter(unet, condition_dim: int | None, **overrides):
    """Attach the paper's motion adapter (temporal attn1/attn2/ff, appearance-conditioned) and return its modules."""
    return attach_adapter(unet, motion_adapter_config(condition_dim, **overrides))


__all__ = [
    "SITES",
    "Adapter",
    "AdaptedSublayer",
    "AdapterCondition",
    "AdapterConfig",
    "DeferredNorm",
    "SiteMap",
    "adapted_sublayers",
    "adapter_names",
    "adapter_parameters",
    "adapter_state_dict",
    "attach_adapter",
    "attach_identity_adapter",
    "attach_motion_adapter",
    "clear_adapter_condition",
    "get_adapter_condition",
    "count_adapter_parameters",
    "detach_adapter",
    "enable_adapter",
    "expected_adapter_parameters",
    "find_transformer_blocks",
    "identity_adapter_config",
    "load_adapter_state_dict",
    "motion_adapter_config",
    "restore_adapter_condition",
    "set_adapter_condition",
    "set_adapter_scale",
    "site_map_for",
    "unwrap",
    "unwrap_sublayer",
    "wrap_sublayer",
]
