"""Shared pieces of the benchmarks: models, interleaved timing, peak memory, FLOPs and activation counts.

Memory on CPU is the peak resident set size (RSS) above its value just before the measured step, sampled every
0.5 ms from ``/proc/self/statm`` by a thread, with glibc's mmap threshold fixed at 64 KiB and ``malloc_trim``
before each step so that freed tensors go back to the OS (``tracemalloc`` does not see torch's allocations).
On CUDA it is ``torch.cuda.max_memory_allocated`` above the allocation before the step.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dreamvideo import adapters as ad
from dreamvideo.base import MODELSCOPE_UNET_CONFIG
from dreamvideo.memory import CHECKPOINTED_TYPES

GiB = 2**30
MiB = 2**20

try:  # fixed mmap threshold: large tensors are mmap'd and returned to the OS when freed, so RSS tracks them
    _LIBC: Any = ctypes.CDLL("libc.so.6")
    _LIBC.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
except OSError:  # not glibc: RSS deltas are rougher
    _LIBC = None

# A ModelScope-shaped UNet (same block types, 4 levels, 2 layers per block) about 1/25 of its width squared.
MID_UNET: dict[str, Any] = {
    **copy.deepcopy(MODELSCOPE_UNET_CONFIG),
    "sample_size": 16,
    "block_out_channels": [64, 128, 256, 256],
    "cross_attention_dim": 256,
    "attention_head_dim": 8,  # diffusers' UNet3D reads this as the number of heads
}


@dataclass
class Model:
    """A benchmark subject: a pipeline (when it has real encoders) or just a UNet, with its input shapes."""

    name: str
    unet: nn.Module
    scheduler: Any
    latent: int  # latent side at the native resolution
    text_tokens: int
    text_dim: int
    cond_dim: int
    frames: int  # motion-training clip length used by default
    device: torch.device
    pipe: Any = None
    vae_factor: int = 8

    def text(self, batch: int) -> torch.Tensor:
        return torch.randn(batch, self.text_tokens, self.text_dim, device=self.device)

    def latents(self, batch: int, frames: int, side: int | None = None) -> torch.Tensor:
        side = side or self.latent
        return torch.randn(batch, 4, frames, side, side, device=self.device)


def toy_model(device: torch.device) -> Model:
    from dreamvideo.pipeline import DreamVideoPipeline

    pipe = DreamVideoPipeline.from_pretrained("toy", device=device)
    pipe.set_progress_bar_config(disable=True)
    cfg = pipe.unet.config
    return Model(
        "toy",
        pipe.unet,
        pipe.scheduler,
        cfg.sample_size,
        pipe.tokenizer.model_max_length,
        cfg.cross_attention_dim,
        pipe.condition_dim,
        16,
        device,
        pipe,
        2 ** (len(pipe.vae.config.block_out_channels) - 1),
    )


def mid_model(device: torch.device) -> Model:
    """Random-weight mid-size pipeline: the UNet above, a 4-level VAE (x8), small CLIP text/image encoders."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from dreamvideo.pipeline import DreamVideoPipeline
    from dreamvideo.toy.model import TOY_MODEL_DIR

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(TOY_MODEL_DIR, subfolder="tokenizer")
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[32, 64, 128, 128],
        latent_channels=4,
        norm_num_groups=32,
        sample_size=128,
    )
    image = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            image_size=64,
            patch_size=16,
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            projection_dim=256,
        )
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    unet = UNet3DConditionModel(**MID_UNET)
    scheduler = DDIMScheduler.from_pretrained(TOY_MODEL_DIR, subfolder="scheduler")
    pipe = DreamVideoPipeline(vae, text, tokenizer, unet, scheduler, image, processor)
    for m in (unet, vae, text, image):
        m.requires_grad_(False).eval()
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return Model("mid", unet, scheduler, 16, tokenizer.model_max_length, 256, 256, 16, device, pipe, 8)


def full_model(device: torch.device) -> Model:
    """The ModelScope-1.7B UNet with random weights (fp32 weights; training runs under bf16 autocast)."""
    from diffusers import DDIMScheduler, UNet3DConditionModel

    from dreamvideo.base import MODELSCOPE_IMAGE_EMBED_DIM, MODELSCOPE_UNET_CONFIG
    from dreamvideo.toy.model import TOY_MODEL_DIR

    torch.manual_seed(0)
    unet = UNet3DConditionModel(**MODELSCOPE_UNET_CONFIG).to(device).requires_grad_(False).eval()
    scheduler = DDIMScheduler.from_pretrained(TOY_MODEL_DIR, subfolder="scheduler")
    return Model("modelscope", unet, scheduler, 32, 77, 1024, MODELSCOPE_IMAGE_EMBED_DIM, 16, device)


def with_adapters(
    unet: nn.Module, cond_dim: int | None, identity: bool = True, motion: bool = True
) -> nn.Module:
    """A copy of ``unet`` with the paper's identity and/or motion adapters (non-zero up-projections)."""
    unet = copy.deepcopy(unet)
    configs = ([ad.identity_adapter_config()] if identity else []) + (
        [ad.motion_adapter_config(cond_dim)] if motion else []
    )
    for config in configs:
        ad.attach_adapter(unet, config, seed=0)
        with torch.no_grad():  # a trained adapter: the zero-initialised up-projection is not special-cased
            for p in ad.adapter_parameters(unet, config.name):
                p.add_(0.01)
    return unet


# ----------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    variants: dict[str, tuple[Callable[[], None], Callable[[], None]]],
    repeats: int,
    device: torch.device,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Seconds of each variant's ``run`` over ``repeats`` rounds, alternating A B / B A from round to round.

    Args:
        variants: name -> (setup, run); ``setup`` (untimed) puts the model in the variant's state.
        repeats: rounds; the machine is noisy, so compare medians or per-round ratios.
        warmup: untimed rounds first (allocator, oneDNN and optimizer state warm-up).
    """
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            setup, run = variants[name]
            setup()
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def ratio(times: dict[str, list[float]], a: str, b: str) -> tuple[float, float, float]:
    """Median and quartiles of the per-round ratios time(a) / time(b) (cancels slow drifts)."""
    ratios = sorted(x / y for x, y in zip(times[a], times[b], strict=True))
    if len(ratios) < 4:
        return statistics.median(ratios), ratios[0], ratios[-1]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), q1, q3


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of ``fn()`` (matmuls, convolutions, attention; forward and backward).

    Counted by ``torch.utils.flop_counter``, which also works on the meta device.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def median(values: list[float]) -> float:
    return statistics.median(values)


# ----------------------------------------------------------------------------- memory


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def trim() -> None:
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class _RSSPeak:
    def __init__(self, interval: float = 0.0005) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self) -> _RSSPeak:
        trim()
        self.start = self.peak = _rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(self.interval)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def peak_memory(
    setup: Callable[[], None], run: Callable[[], None], device: torch.device, tries: int = 2
) -> int:
    """Bytes allocated at the peak of ``run()`` above what was allocated before it (largest of ``tries``)."""
    best = 0
    for _ in range(tries):
        setup()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            run()
            torch.cuda.synchronize(device)
            best = max(best, torch.cuda.max_memory_allocated(device) - before)
        else:
            with _RSSPeak() as watch:
                run()
            best = max(best, watch.peak - watch.start)
    return best


# ----------------------------------------------------------------------------- activation counting


@contextmanager
def count_saved(model: nn.Module) -> Iterator[dict[str, Any]]:
    """Count the tensors autograd saves for backward inside the block (works on the meta device).

    Yields a dict filled on exit: ``total`` (bytes of distinct saved storages, parameters and buffers
    excluded),
    ``checkpointed`` (bytes of the same graph with every :data:`CHECKPOINTED_TYPES` module under non-reentrant
    checkpointing: what is saved outside those modules, plus their inputs, plus the largest one module saves,
    which is recomputed in the backward pass) and ``largest_module``.
    """
    weights = {t.untyped_storage()._cdata for t in [*model.parameters(), *model.buffers()]}
    owner: dict[int, tuple[int, str]] = {}  # storage -> (bytes, top module path or "" outside)
    inputs: dict[str, dict[int, int]] = {}  # top module -> its tensor inputs (kept by checkpointing)
    stack: list[str] = []
    kept: list[torch.Tensor] = []  # keeps storages alive so that their addresses are not reused

    def key(t: torch.Tensor) -> tuple[int, int]:
        s = t.untyped_storage()
        return s._cdata, s.nbytes()

    def pack(t: torch.Tensor) -> torch.Tensor:
        k, n = key(t)
        if k not in weights and k not in owner:
            owner[k] = (n, stack[-1] if stack else "")
            kept.append(t)
        return t

    def pre(name: str, args: tuple, kwargs: dict) -> None:
        if not stack:
            tensors = [t for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor)]
            inputs[name] = {key(t)[0]: key(t)[1] for t in tensors if key(t)[0] not in weights}
            kept.extend(tensors)
        stack.append(name)

    def post() -> None:  # returns None: a forward hook's return value would replace the output
        stack.pop()

    top = [(n, m) for n, m in model.named_modules() if isinstance(m, CHECKPOINTED_TYPES)]
    top = [(n, m) for n, m in top if not any(n.startswith(o + ".") for o, _ in top)]
    handles = []
    for name, module in top:
        handles.append(
            module.register_forward_pre_hook(lambda m, a, k, name=name: pre(name, a, k), with_kwargs=True)
        )
        handles.append(module.register_forward_hook(lambda m, a, k, out: post(), with_kwargs=True))
    result: dict[str, Any] = {}
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield result
    finally:
        for h in handles:
            h.remove()
    per_module: dict[str, int] = {}
    kept_by_checkpointing: dict[int, int] = {}
    for k, (n, where) in owner.items():
        if where:
            per_module[where] = per_module.get(where, 0) + n
        else:
            kept_by_checkpointing[k] = n
    for name in per_module:  # a module that saved nothing has no graph, so checkpointing keeps nothing of it
        kept_by_checkpointing.update(inputs.get(name, {}))
    result["total"] = sum(n for n, _ in owner.values())
    result["largest_module"] = max(per_module.values(), default=0)
    result["checkpointed"] = sum(kept_by_checkpointing.values()) + result["largest_module"]
    kept.clear()


def adam_bytes(params: list[nn.Parameter]) -> int:
    """AdamW state of ``params``: two fp32 moments (resident between steps, so not in a step's peak)."""
    return 2 * 4 * sum(p.numel() for p in params)
