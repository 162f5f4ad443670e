"""DreamVideo adapters (peft-style: config, layer, model)."""

from dreamvideo.adapters.config import SITES, AdapterConfig, identity_adapter_config, motion_adapter_config
from dreamvideo.adapters.layer import AdaptedTransformerBlock, Adapter, AdapterCondition
from dreamvideo.adapters.model import (
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


def attach_identity_adapter(unet, **overrides):
    """Attach the paper's identity adapter (spatial cross-attention, parallel) and return its modules."""
    return attach_adapter(unet, identity_adapter_config(**overrides))


def attach_motion_adapter(unet, condition_dim: int | None, **overrides):
    """Attach the paper's motion adapter (temporal attn1/attn2/ff, appearance-conditioned) and return its modules."""
    return attach_adapter(unet, motion_adapter_config(condition_dim, **overrides))


__all__ = [
    "SITES",
    "Adapter",
    "AdaptedTransformerBlock",
    "AdapterCondition",
    "AdapterConfig",
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
]
