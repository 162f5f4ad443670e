"""Speed and peak memory of DreamVideo on the full ModelScope-1.7B UNet (random weights), for the README's GPU rows.

For each of textual inversion, the identity adapter and the motion adapter (method.md sections 4-5: images as
1-frame videos at batch 4, motion clips of 16 and 32 frames at batch 1), with and without gradient checkpointing:
optimiser steps per second and peak memory under bf16 autocast (frozen weights in bf16, trainables in fp32). Then a
50-step DDIM generation with classifier-free guidance (batch 2) with both adapters against the plain base, and from
the step rates the projected wall time of the authors' step counts (3000 textual inversion + 1000 identity adapter,
3000 motion) against their reported ~50 + 10-15 minutes on an A100-80G (method.md section 7).

On a lent GPU (one `device` call, ~5 minutes; carry a diffusers wheel as benchmarks/gpu/toy_base_vzero.sh says):
    python benchmarks/gpu/modelscope_figures.py --out $OUT/modelscope_figures.json
On the CPU, a smoke test of the same code on the toy UNet config:
    python benchmarks/gpu/modelscope_figures.py --tiny --steps 2 --out /tmp/figures.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet3DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from dreamvideo import adapters as ad
from dreamvideo.base import MODELSCOPE_IMAGE_EMBED_DIM, MODELSCOPE_UNET_CONFIG
from dreamvideo.fileio import write_json
from dreamvideo.memory import enable_gradient_checkpointing

# OpenCLIP ViT-H/14's text tower as ModelScope uses it (penultimate layer: 23 of 24 layers).
TEXT_CONFIG = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
}
TINY_UNET = {
    "sample_size": 8,
    "block_out_channels": [32, 64, 64, 64],
    "cross_attention_dim": 64,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "max_position_embeddings": 77,
    "vocab_size": 1000,
}
AUTHORS_STEPS = {"textual_inversion": 3000, "identity_adapter": 1000, "motion_adapter": 3000}


def build(tiny: bool, device: torch.device) -> tuple[UNet3DConditionModel, CLIPTextModel, int]:
    """The UNet and text encoder with random weights, frozen, weights in bf16 on ``device``."""
    unet = UNet3DConditionModel(**(MODELSCOPE_UNET_CONFIG | TINY_UNET if tiny else MODELSCOPE_UNET_CONFIG))
    text = CLIPTextModel(CLIPTextConfig(**(TINY_TEXT if tiny else TEXT_CONFIG)))
    for module in (unet, text):
        module.requires_grad_(False).to(device, torch.bfloat16)
    return unet, text, 64 if tiny else MODELSCOPE_IMAGE_EMBED_DIM


def measure(step: Callable[[], None], steps: int, device: torch.device) -> dict:
    """Seconds per call of ``step`` (after one warm-up call) and the peak memory of all calls."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {
        "seconds_per_step": round(seconds, 4),
        "steps_per_second": round(1 / seconds, 3),
        "peak_gib": peak,
    }


def training_step(unet, text, stage: str, frames: int, batch: int, cond_dim: int, device: torch.device):
    """One optimiser step of ``stage`` ('textual_inversion', 'identity_adapter', 'motion_adapter')."""
    if stage == "textual_inversion":
        embeddings = text.get_input_embeddings().weight
        embeddings.requires_grad_(
            True
        )  # the placeholder row (the whole table gets a gradient, as in diffusers)
        params = [embeddings]
    else:
        name = "identity" if stage == "identity_adapter" else "motion"
        modules = (
            ad.attach_identity_adapter(unet)
            if name == "identity"
            else ad.attach_motion_adapter(unet, cond_dim)
        )
        modules.to(device)
        params = ad.adapter_parameters(unet, name)
        if name == "motion":
            ad.set_adapter_condition(unet, name, torch.randn(batch, cond_dim, device=device), 1.0)
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    size = unet.config.sample_size
    latents = torch.randn(batch, 4, frames, size, size, device=device)
    ids = torch.randint(0, text.config.vocab_size, (batch, 77), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            states = text(ids).last_hidden_state
            t = torch.randint(0, 1000, (batch,), device=device)
            pred = unet(latents + torch.randn_like(latents), t, encoder_hidden_states=states).sample
        loss = F.mse_loss(pred.float(), latents)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, params


def generation(unet, text, frames: int, steps: int, device: torch.device) -> Callable[[], None]:
    """A guided DDIM generation of one video (batch 2: conditional and unconditional)."""
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler.set_timesteps(steps)
    size = unet.config.sample_size
    ids = torch.randint(0, text.config.vocab_size, (2, 77), device=device)

    @torch.no_grad()
    def run() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            states = text(ids).last_hidden_state
            x = torch.randn(1, 4, frames, size, size, device=device)
            for t in scheduler.timesteps:
                cond, uncond = unet(torch.cat([x, x]), t, encoder_hidden_states=states).sample.chunk(2)
                x = scheduler.step(uncond + 9.0 * (cond - uncond), t, x).prev_sample

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tiny", action="store_true", help="the toy-sized config (a CPU smoke test)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per row")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--frames", type=int, nargs="+", default=[16, 32])
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows, results = (
        [("textual_inversion", 1, 4), ("identity_adapter", 1, 4)],
        {"device": str(device), "rows": []},
    )
    rows += [("motion_adapter", f, 1) for f in args.frames]
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    for checkpointing in (False, True):
        for stage, frames, batch in rows:
            unet, text, cond_dim = build(args.tiny, device)
            if checkpointing:
                enable_gradient_checkpointing(unet)
            try:
                step, params = training_step(unet, text, stage, frames, batch, cond_dim, device)
                row = measure(step, args.steps, device)
            except torch.OutOfMemoryError as err:
                row = {"error": f"out of memory: {err}"[:200]}
            row |= {"stage": stage, "frames": frames, "batch": batch, "gradient_checkpointing": checkpointing}
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
            del unet, text
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for adapters in (False, True):
        unet, text, cond_dim = build(args.tiny, device)
        if adapters:
            ad.attach_identity_adapter(unet).to(device)
            ad.attach_motion_adapter(unet, cond_dim).to(device)
            ad.set_adapter_condition(
                unet, "motion", torch.randn(2, cond_dim, device=device), torch.tensor([1.0, 0.0])
            )
        timing = measure(generation(unet, text, args.frames[-1], args.sample_steps, device), 1, device)
        row = {"seconds_per_video": timing["seconds_per_step"], "peak_gib": timing["peak_gib"]}
        row |= {
            "stage": "generation",
            "frames": args.frames[-1],
            "sample_steps": args.sample_steps,
            "adapters": adapters,
        }
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
    rate = {
        (r["stage"], r["frames"]): r
        for r in results["rows"]
        if "seconds_per_step" in r and r.get("gradient_checkpointing") is False
    }
    projected = {}
    for stage, steps in AUTHORS_STEPS.items():
        frames = 1 if stage != "motion_adapter" else max(args.frames)
        if (stage, frames) in rate:
            projected[stage] = round(steps * rate[(stage, frames)]["seconds_per_step"] / 60, 1)
    results["projected_minutes_at_authors_steps"] = projected
    results["authors_report"] = (
        "A100-80G: ~50 min textual inversion, 10-15 min identity adapter (method.md section 7)"
    )
    write_json(results, args.out)
    print("projected minutes:", projected)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
