"""The appearance encoder and reference attention (method.md, section 9), adapter-style: config, layer, model.

``attach_reference_attention`` hooks the spatial self-attention of the main UNet's mid and up blocks so that its
keys and values also see features ``y_a`` of a reference image, ``K' = W_K [z, y_a]``, ``V' = W_V [z, y_a]``;
:class:`AppearanceEncoder` (a trainable copy of the base UNet) computes ``y_a``; :class:`ReferenceFeatureCache`
runs it once per denoising step. Training: :mod:`dreamvideo.reference.training`; CLI: ``learn-appearance-encoder``.
"""

from dreamvideo.reference.config import BLOCK_GROUPS, ReferenceConfig
from dreamvideo.reference.encoder import (
    ENCODER_FILE,
    ENCODER_INFO,
    AppearanceEncoder,
    ReferenceFeatureCache,
    clean_unet_copy,
    load_encoder,
    save_encoder,
)
from dreamvideo.reference.layer import (
    ReferenceAttnProcessor,
    ReferenceCaptureProcessor,
    ReferenceState,
    reference_attention,
)
from dreamvideo.reference.model import (
    attach_reference_attention,
    clear_reference_features,
    detach_reference_attention,
    enable_reference_attention,
    find_reference_sites,
    reference_paths,
    reference_state,
    set_reference_features,
    set_reference_scale,
)

__all__ = [
    "BLOCK_GROUPS",
    "ENCODER_FILE",
    "ENCODER_INFO",
    "AppearanceEncoder",
    "ReferenceAttnProcessor",
    "ReferenceCaptureProcessor",
    "ReferenceConfig",
    "ReferenceFeatureCache",
    "ReferenceState",
    "attach_reference_attention",
    "clean_unet_copy",
    "clear_reference_features",
    "detach_reference_attention",
    "enable_reference_attention",
    "find_reference_sites",
    "load_encoder",
    "reference_attention",
    "reference_paths",
    "reference_state",
    "save_encoder",
    "set_reference_features",
    "set_reference_scale",
]
