"""Training memory and compute of each method on the ModelScope-1.7B UNet, from the meta device (no GPU).

Method: build the UNet on the meta device, add the method's trainables (DreamVideo adapters, peft LoRA on the
baselines' sites, or unfrozen spatial / temporal weights), run one forward pass at 256x256 (32x32 latents),
batch 1, and add up the distinct tensors autograd saves for backward (``bench_lib.count_saved``; frozen
weights excluded). With gradient checkpointing (every resnet, temporal conv and transformer wrapped, as
``--gradient-checkpointing`` does) the saved set is: what is saved outside the wrapped modules, plus the
wrapped modules' inputs, plus the largest one module saves (recomputed during backward). Peak = weights +
trainable-parameter gradients + AdamW moments (2 x fp32) + saved activations. ``bf16`` means frozen weights
stored in bf16 and bf16 activations (fp32 trainables): activations are counted in fp32 and halved, a lower
bound under autocast, which keeps norms and softmax in fp32. Not counted: kernel workspaces, activation
gradients alive during backward, allocator fragmentation and the CUDA context (about 0.5 GiB).
"""

from __future__ import annotations

from typing import Any

import bench_lib as lib
import torch

from dreamvideo import adapters as ad
from dreamvideo.base import MODELSCOPE_IMAGE_EMBED_DIM, modelscope_unet_on_meta
from dreamvideo.methods.lora import inject, lora_parameters, lora_targets
from dreamvideo.methods.weights import spatial_parameters, temporal_parameters

METHODS = [
    ("DreamVideo identity adapter", "identity"),
    ("DreamVideo motion adapter", "motion"),
    ("LoRA r4, subject sites (cross-attn k/v)", "lora-subject-4"),
    ("LoRA r16, subject sites", "lora-subject-16"),
    ("LoRA r4, motion sites (self-attn k/v)", "lora-motion-4"),
    ("LoRA r16, motion sites", "lora-motion-16"),
    ("spatial fine-tune", "spatial"),
    ("temporal fine-tune", "temporal"),
]
# A colleague's measurement (H100, full ModelScope UNet, random weights, frozen base + motion adapter, bf16
# autocast, 256x256, batch 1), quoted next to the estimate: frames -> (peak GiB off, on), (step s off, on).
H100_MEASURED = {16: ((17.8, 7.3), (0.31, 0.59)), 32: ((26.9, 8.2), (0.31, 0.53))}


def _trainables(unet: torch.nn.Module, method: str) -> tuple[list[torch.nn.Parameter], bool]:
    """The method's trainables (set to require grad) and whether they are extra (not base weights)."""
    if method in ("identity", "motion"):
        config = (
            ad.identity_adapter_config()
            if method == "identity"
            else ad.motion_adapter_config(MODELSCOPE_IMAGE_EMBED_DIM)
        )
        ad.attach_adapter(unet, config)
        params, extra = ad.adapter_parameters(unet, method), True
    elif method.startswith("lora"):
        _, kind, rank = method.split("-")
        inject(
            unet, kind, {"r": int(rank), "lora_alpha": int(rank), "target_modules": lora_targets(unet, kind)}
        )
        params, extra = list(lora_parameters(unet, kind).values()), True
    else:
        params = list((spatial_parameters if method == "spatial" else temporal_parameters)(unet).values())
        extra = False
    for p in params:
        p.requires_grad_(True)
    return params, extra


def estimate_method(method: str, frames: int, side: int = 32) -> dict[str, Any]:
    unet = modelscope_unet_on_meta().requires_grad_(False)
    base_params = sum(p.numel() for p in unet.parameters())
    params, extra = _trainables(unet, method)
    trainable = sum(p.numel() for p in params)
    with torch.device("meta"):
        x = torch.randn(1, 4, frames, side, side)
        text = torch.randn(1, 77, 1024)
        if method == "motion":
            ad.set_adapter_condition(unet, "motion", torch.randn(1, MODELSCOPE_IMAGE_EMBED_DIM), 1.0)
        with lib.count_saved(unet) as saved:
            unet(x, torch.tensor([500]), encoder_hidden_states=text)
    row: dict[str, Any] = {
        "method": method,
        "frames": frames,
        "pixels": side * 8,
        "trainable_params": trainable,
        "optimizer_gib": 8 * trainable / lib.GiB,
        "gradients_gib": 4 * trainable / lib.GiB,
    }
    for precision, weight_bytes, act_scale in (("fp32", 4, 1.0), ("bf16", 2, 0.5)):
        frozen = base_params - (0 if extra else trainable)
        weights = frozen * weight_bytes + trainable * 4  # trainables stay fp32
        fixed = weights + 12 * trainable  # + gradients + AdamW moments
        for ckpt, key in (("off", "total"), ("on", "checkpointed")):
            row[f"{precision}_ckpt_{ckpt}_activations_gib"] = saved[key] * act_scale / lib.GiB
            row[f"{precision}_ckpt_{ckpt}_peak_gib"] = (fixed + saved[key] * act_scale) / lib.GiB
    return row


def _meta_unet(method: str | None) -> torch.nn.Module:
    unet = modelscope_unet_on_meta().requires_grad_(False)
    if method == "adapters":
        ad.attach_adapter(unet, ad.identity_adapter_config())
        ad.attach_adapter(unet, ad.motion_adapter_config(MODELSCOPE_IMAGE_EMBED_DIM))
    elif method is not None:
        _trainables(unet, method)
    return unet


def _flops(method: str | None, batch: int, frames: int, train: bool) -> int:
    """FLOPs of one UNet call at 256x256 (forward, plus backward when ``train``) on the meta device."""
    unet = _meta_unet(method)
    with torch.device("meta"):
        x, text = torch.randn(batch, 4, frames, 32, 32), torch.randn(batch, 77, 1024)
        if method in ("adapters", "motion"):
            ad.set_adapter_condition(unet, "motion", torch.randn(batch, MODELSCOPE_IMAGE_EMBED_DIM), 1.0)

        def call() -> None:
            with torch.set_grad_enabled(train):
                out = unet(x, torch.tensor([500]), encoder_hidden_states=text).sample
            if train:
                out.pow(2).mean().backward()

        return lib.count_flops(call)


def flop_ratios() -> list[dict[str, Any]]:
    """FLOP ratios on ModelScope that the CPU cannot time: adapters vs base, adapters vs fine-tunes."""
    rows = []
    for what, a, b, batch, frames, train in (
        ("inference, one CFG step, 16 frames", "adapters", None, 2, 16, False),
        ("training step, 4 images", "identity", "spatial", 4, 1, True),
        ("training step, 16 frames", "motion", "temporal", 1, 16, True),
    ):
        fa, fb = _flops(a, batch, frames, train), _flops(b, batch, frames, train)
        rows.append(
            {
                "what": what,
                "a": a,
                "b": b or "base",
                "a_tflops": fa / 1e12,
                "b_tflops": fb / 1e12,
                "ratio": fa / fb,
            }
        )
    return rows


def run() -> dict[str, Any]:
    rows = [estimate_method(method, 32) | {"label": label} for label, method in METHODS]
    calibration = [
        estimate_method("motion", f) | {"label": "DreamVideo motion adapter", "h100": H100_MEASURED[f]}
        for f in (16, 32)
    ]
    return {
        "base_params": sum(p.numel() for p in modelscope_unet_on_meta().parameters()),
        "rows": rows,
        "calibration": calibration,
        "flops": flop_ratios(),
        "method": __doc__.split("\n\n", 1)[1].strip(),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"### ModelScope-1.7B UNet ({result['base_params'] / 1e9:.2f} B parameters), estimated on the meta "
        "device: 256x256, 32 frames, batch 1",
        "",
        "| method | trainable params | AdamW moments | peak fp32 ckpt off / on | peak bf16 ckpt off / on |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['label']} | {r['trainable_params'] / 1e6:.2f} M | {r['optimizer_gib']:.2f} GiB | "
            f"{r['fp32_ckpt_off_peak_gib']:.1f} / {r['fp32_ckpt_on_peak_gib']:.1f} GiB | "
            f"{r['bf16_ckpt_off_peak_gib']:.1f} / {r['bf16_ckpt_on_peak_gib']:.1f} GiB |"
        )
    lines += [
        "",
        "Estimate vs measurement (motion adapter, bf16; the measurement was taken on an H100 in a separate "
        "run with fp32 weights under bf16 autocast):",
        "",
        "| frames | estimated bf16 activations off / on | estimated peak bf16 (bf16 weights) off / on | "
        "estimated peak, fp32 weights + bf16 activations, off / on | measured on H100 off / on | "
        "H100 step time off / on |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["calibration"]:
        (m_off, m_on), (t_off, t_on) = r["h100"]
        fp32_weights = r["fp32_ckpt_off_peak_gib"] - r["fp32_ckpt_off_activations_gib"]
        lines.append(
            f"| {r['frames']} | {r['bf16_ckpt_off_activations_gib']:.1f} / "
            f"{r['bf16_ckpt_on_activations_gib']:.1f} GiB | {r['bf16_ckpt_off_peak_gib']:.1f} / "
            f"{r['bf16_ckpt_on_peak_gib']:.1f} GiB | "
            f"{fp32_weights + r['bf16_ckpt_off_activations_gib']:.1f} / "
            f"{fp32_weights + r['bf16_ckpt_on_activations_gib']:.1f} GiB | {m_off} / {m_on} GiB | "
            f"{t_off} / {t_on} s |"
        )
    lines += [
        "",
        "Compute of the same UNet (FLOPs counted on the meta device, 256x256; the time ratio on a GPU "
        "approaches this where the step is compute-bound):",
        "",
        "| measure | A | B | A TFLOPs | B TFLOPs | A / B |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['what']} | {r['a']} | {r['b']} | {r['a_tflops']:.2f} | {r['b_tflops']:.2f} | "
        f"{r['ratio']:.3f}x |"
        for r in result["flops"]
    ]
    lines += ["", " ".join(result["method"].split())]
    return "\n".join(lines)
