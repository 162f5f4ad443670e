"""Memory and speed helpers for diffusers' ``UNet3DConditionModel``: gradient checkpointing, attention
backend, freezing and autocast.

diffusers' UNet3D has no gradient checkpointing (``_supports_gradient_checkpointing = False``), so we wrap its
heavy sub-modules -- every ``ResnetBlock2D``, ``TemporalConvLayer``, ``Transformer2DModel`` and
``TransformerTemporalModel`` (``transformer_in`` included) -- in :class:`CheckpointedModule`. Wrapping at the
transformer level composes with the adapters, which wrap sub-layers of the ``BasicTransformerBlock``s inside
those transformers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from diffusers.models.resnet import ResnetBlock2D, TemporalConvLayer
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from torch import nn
from torch.utils.checkpoint import checkpoint

from dreamvideo.fileio import DreamVideoError

CHECKPOINTED_TYPES = (ResnetBlock2D, TemporalConvLayer, Transformer2DModel, TransformerTemporalModel)
PRECISIONS = ("no", "bf16", "fp16")


class CheckpointedModule(nn.Module):
    """Runs ``module`` under non-reentrant activation checkpointing whenever autograd is recording.

    We checkpoint in eval mode too: adapter training keeps the frozen base in eval mode and still wants the
    memory saving. Non-reentrant checkpointing gives gradients to trainable parameters inside ``module`` even
    when no input requires grad (frozen base + adapters), accepts keyword arguments and restores the RNG state
    for dropout.

    ``state_dict()`` keys are those of the unwrapped model (no ``.module.``), and state dicts of the unwrapped
    model load into the wrapped one; ``named_parameters()`` names do contain ``.module.``.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.register_state_dict_post_hook(_drop_wrapper_prefix)
        self.register_load_state_dict_pre_hook(_add_wrapper_prefix)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return checkpoint(self.module, *args, use_reentrant=False, **kwargs)
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules", {})
            if "module" not in modules:
                raise
            return getattr(modules["module"], name)  # attributes of the wrapped block (e.g. ``in_channels``)


def _drop_wrapper_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    inner = prefix + "module."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def _add_wrapper_prefix(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    inner = prefix + "module."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix) :]] = state_dict.pop(key)


def _children(root: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """``(parent, name, child)`` for every sub-module, not descending into checkpointing wrappers."""
    for name, child in list(root._modules.items()):
        if child is None:
            continue
        yield root, name, child
        if not isinstance(child, CheckpointedModule):
            yield from _children(child)


def enable_gradient_checkpointing(unet: nn.Module) -> int:
    """Wrap the UNet's resnets, temporal convs and transformers in :class:`CheckpointedModule`.

    Args:
        unet: a ``UNet3DConditionModel`` (adapters may already be attached, or be attached later).

    Returns:
        The number of modules newly wrapped (0 if checkpointing was already on).
    """
    wrapped = 0
    for parent, name, child in list(_children(unet)):
        if isinstance(child, CHECKPOINTED_TYPES) and not isinstance(parent, CheckpointedModule):
            parent._modules[name] = CheckpointedModule(child)
            wrapped += 1
    return wrapped


def disable_gradient_checkpointing(unet: nn.Module) -> int:
    """Put the original modules back in place of their wrappers; return how many."""
    unwrapped = 0
    for parent, name, child in list(_children(unet)):
        if isinstance(child, CheckpointedModule):
            parent._modules[name] = child.module
            unwrapped += 1
    return unwrapped


def is_gradient_checkpointing(unet: nn.Module) -> bool:
    return any(isinstance(m, CheckpointedModule) for m in unet.modules())


def set_attention_backend(unet: nn.Module, backend: str = "sdpa") -> int:
    """Choose the attention implementation of every ``Attention`` layer of ``unet``.

    In diffusers 0.42 a freshly built or loaded ``Attention`` already uses ``AttnProcessor2_0`` (PyTorch
    ``scaled_dot_product_attention``, flash / memory-efficient kernels where available), so ``"sdpa"`` only
    matters after something else changed the processors. ``"default"`` (alias ``"classic"``) is diffusers'
    ``set_default_attn_processor`` choice: ``AttnProcessor``, which materialises the attention matrix.

    Args:
        unet: any diffusers model with ``set_attn_processor`` / ``attn_processors``.
        backend: ``"sdpa"`` or ``"default"``.

    Returns:
        The number of attention layers set.
    """
    if backend == "sdpa":
        processor: Any = AttnProcessor2_0()
    elif backend in ("default", "classic"):
        processor = AttnProcessor()
    else:
        raise DreamVideoError(f"unknown attention backend {backend!r}; use 'sdpa' or 'default'")
    count = len(unet.attn_processors)
    unet.set_attn_processor(processor)
    return count


def freeze(module: nn.Module) -> nn.Module:
    """Turn off gradients for every parameter of ``module`` and return it."""
    module.requires_grad_(False)
    return module


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module`` that require grad, each once, in module order."""
    return [p for p in module.parameters() if p.requires_grad]


def autocast_context(device: torch.device | str, precision: str = "no") -> contextlib.AbstractContextManager:
    """A forward-pass context: ``"no"`` (full precision), ``"bf16"`` or ``"fp16"`` autocast on ``device``.

    Args:
        device: the device the model runs on (its type picks the autocast backend).
        precision: ``"no"``, ``"bf16"`` or ``"fp16"``.
    """
    if precision not in PRECISIONS:
        raise DreamVideoError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype)


# ----------------------------------------------------------------------------- sampling memory estimate


def estimate_sampling_bytes(pipe: Any, num_frames: int, height: int, width: int, guided: bool = True) -> int:
    """A rough upper estimate of the peak memory of sampling one video (weights, UNet activations, VAE decode).

    UNet: about 8 live activations of every level's size, batch 2 with guidance; VAE: about 4 live tensors of the
    widest decoder block at full resolution for every frame (all frames are decoded together).

    Args:
        pipe: a loaded :class:`~dreamvideo.pipeline.DreamVideoPipeline`.
        num_frames: frames of the video.
        height: pixel height.
        width: pixel width.
        guided: classifier-free guidance doubles the UNet batch.
    """
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    h, w = max(1, height // factor), max(1, width // factor)
    unet_bytes = next(pipe.unet.parameters()).element_size()
    vae_bytes = next(pipe.vae.parameters()).element_size()
    batch = 2 if guided else 1
    acts = sum(
        batch * num_frames * (h >> i) * (w >> i) * c * 8 * max(unet_bytes, 4)
        for i, c in enumerate(pipe.unet.config.block_out_channels)
    )
    vae = num_frames * height * width * max(pipe.vae.config.block_out_channels) * 4 * max(vae_bytes, 4)
    weights = sum(
        p.numel() * p.element_size() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters()
    )
    return int(weights + max(acts, vae))


def available_memory_bytes(device: torch.device | str) -> int:
    """Free memory where sampling runs: the GPU's free memory, or the host's available memory (Linux).

    Args:
        device: the pipeline's device.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def check_sampling_memory(
    pipe: Any, num_frames: int, height: int, width: int, guided: bool, limit_gb: float | None = None
) -> None:
    """Refuse a video whose sampling would not fit, with the estimate and the limit.

    Args:
        pipe: the loaded pipeline.
        num_frames, height, width: the video size.
        guided: classifier-free guidance is on.
        limit_gb: the limit in GiB (``None``: the free memory of the pipeline's device).
    """
    need = estimate_sampling_bytes(pipe, num_frames, height, width, guided)
    limit = limit_gb * 2**30 if limit_gb is not None else available_memory_bytes(pipe.unet.device)
    if need > limit:
        source = "--max-memory-gb" if limit_gb is not None else f"free memory of {pipe.unet.device}"
        raise DreamVideoError(
            f"--frames {num_frames} at {width}x{height}: sampling needs about {need / 2**30:.1f} GiB, more than the "
            f"limit of {limit / 2**30:.1f} GiB ({source}); lower --frames/--height/--width or raise --max-memory-gb"
        )
