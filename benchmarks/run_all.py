"""Run every benchmark side by side in one process; write ``results/*.json``, ``results/summary.md``, a plot.

    python benchmarks/run_all.py [--quick] [--out benchmarks/results] [--device cpu]

Models: the shipped toy model, a random-weight mid-size ModelScope-shaped pipeline, and (only with CUDA) the
full ModelScope-1.7B UNet with random weights; the ModelScope memory estimate needs no GPU (meta device).
Timings interleave the variants (A B, B A, ...) and report the median of the per-round ratios; memory is
described in ``bench_lib``. These are measurements, not tests: a missed target is reported, not raised.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

import bench_lib as lib  # noqa: E402
import estimate  # noqa: E402

from dreamvideo import adapters as ad  # noqa: E402
from dreamvideo.memory import disable_gradient_checkpointing, enable_gradient_checkpointing  # noqa: E402
from dreamvideo.methods.weights import spatial_parameters, temporal_parameters  # noqa: E402
from dreamvideo.training import diffusion_loss  # noqa: E402


def _row(
    section: str,
    model: str,
    what: str,
    a: str,
    b: str,
    value: float | None,
    target: str = "",
    met: bool | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "section": section,
        "model": model,
        "what": what,
        "a": a,
        "b": b,
        "ratio": value,
        "target": target,
        "met": met,
        **extra,
    }


def _timed(
    section: str,
    model: str,
    what: str,
    a: str,
    b: str,
    times: dict[str, list[float]],
    limit: float | None,
    target: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """A row comparing the first two variants of ``times``: median ratio, its quartiles, median seconds."""
    ka, kb = list(times)[:2]
    r, q1, q3 = lib.ratio(times, ka, kb)
    return _row(
        section,
        model,
        what,
        a,
        b,
        r,
        target,
        None if limit is None else r <= limit,
        q1=q1,
        q3=q3,
        rounds=len(times[ka]),
        a_s=lib.median(times[ka]),
        b_s=lib.median(times[kb]),
        **extra,
    )


def _precision(m: lib.Model):
    return (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if m.device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )


def _adamw(params: list) -> tuple[torch.optim.Optimizer, torch.Generator]:
    """AdamW over ``params`` (made trainable) and the noise generator of the training steps."""
    for p in params:
        p.requires_grad_(True)
    return torch.optim.AdamW(params, lr=1e-5), torch.Generator().manual_seed(0)


def _train_step(m: lib.Model, unet, opt, generator, x, text, e: torch.Tensor | None) -> None:
    """One training step: the loss (the motion adapter conditioned on ``e`` unless None), backward, AdamW."""
    if e is not None:
        ad.set_adapter_condition(unet, "motion", e, 1.0)
    with _precision(m):
        loss = diffusion_loss(unet, m.scheduler, x, text, generator, 0.1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _trainer(m: lib.Model, unet: torch.nn.Module, params: list, batch: tuple, condition: bool):
    """A closure running one training step (loss, backward, AdamW) of ``params`` on a fixed-shape batch."""
    opt, generator = _adamw(params)
    x, text, e = batch

    def step() -> None:
        _train_step(m, unet, opt, generator, x, text, e if condition else None)

    return step, opt


def _nothing() -> None:
    pass


def _free_grads(opt: torch.optim.Optimizer):
    return lambda: opt.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- inference


def bench_inference(m: lib.Model, steps: int, frames: int, repeats: int) -> list[dict[str, Any]]:
    """One DDIM step with classifier-free guidance (UNet on batch 2), identity + motion adapters vs the base.

    Many short rounds; then whole generations through the pipeline where the model has one.
    """
    adapted = lib.with_adapters(m.unet, m.cond_dim)
    ad.set_adapter_condition(adapted, "motion", torch.zeros(2, m.cond_dim, device=m.device), 1.0)
    x = m.latents(1, frames)
    text = m.text(2)
    m.scheduler.set_timesteps(steps, device=m.device)
    t = m.scheduler.timesteps[0]

    def denoise(unet: torch.nn.Module) -> None:
        with torch.no_grad(), _precision(m):
            noise = unet(torch.cat([x] * 2), t, encoder_hidden_states=text).sample.float()
            uncond, cond = noise.chunk(2)
            m.scheduler.step(uncond + 9.0 * (cond - uncond), t, x)

    times = lib.interleaved(
        {"adapters": (_nothing, lambda: denoise(adapted)), "base": (_nothing, lambda: denoise(m.unet))},
        5 * repeats,
        m.device,
    )
    flops = lib.count_flops(lambda: denoise(adapted)) / lib.count_flops(lambda: denoise(m.unet))
    rows = [
        _timed(
            "inference",
            m.name,
            f"one DDIM+CFG step, {frames} frames",
            "identity+motion adapters",
            "base",
            times,
            1.05,
            "<= 1.05x",
            flops=flops,
        )
    ]
    if m.pipe is not None:  # end to end: text encoder, denoising loop, VAE decode
        plain = m.pipe
        full = type(plain)(
            plain.vae,
            plain.text_encoder,
            plain.tokenizer,
            adapted,
            plain.scheduler,
            plain.image_encoder,
            plain.feature_extractor,
        )
        full.set_progress_bar_config(disable=True)

        def generate(pipe) -> None:
            side = m.latent * m.vae_factor
            pipe(
                "a red circle",
                num_frames=frames,
                height=side,
                width=side,
                num_inference_steps=steps,
                generator=torch.Generator().manual_seed(0),
                progress=False,
            )

        times = lib.interleaved(
            {"adapters": (_nothing, lambda: generate(full)), "base": (_nothing, lambda: generate(plain))},
            repeats,
            m.device,
        )
        rows.append(
            _timed(
                "inference",
                m.name,
                f"pipeline end to end, {steps} steps, {frames} frames",
                "identity+motion adapters",
                "base",
                times,
                1.05,
                "<= 1.05x",
            )
        )
    return rows


# ----------------------------------------------------------------------- training: adapters vs fine-tuning


def bench_training(m: lib.Model, frames: int, image_batch: int, repeats: int) -> list[dict[str, Any]]:
    """Identity adapter vs spatial fine-tuning (1-frame images), motion adapter vs temporal fine-tuning."""
    rows = []
    images = (m.latents(image_batch, 1), m.text(image_batch), None)
    clip = (m.latents(1, frames), m.text(1), torch.randn(1, m.cond_dim, device=m.device))
    for kind, batch, shape in (
        ("identity", images, f"{image_batch} images"),
        ("motion", clip, f"{frames} frames"),
    ):
        adapted = lib.with_adapters(m.unet, m.cond_dim, identity=kind == "identity", motion=kind == "motion")
        tuned = lib.with_adapters(m.unet, m.cond_dim, identity=False, motion=False)
        a_params = ad.adapter_parameters(adapted, kind)
        b_params = list((spatial_parameters if kind == "identity" else temporal_parameters)(tuned).values())
        a_step, a_opt = _trainer(m, adapted, a_params, batch, kind == "motion")
        b_step, b_opt = _trainer(m, tuned, b_params, batch, False)
        times = lib.interleaved(
            {"adapter": (_nothing, a_step), "finetune": (_nothing, b_step)}, 2 * repeats, m.device
        )
        flops = lib.count_flops(a_step) / lib.count_flops(b_step)
        label = "spatial" if kind == "identity" else "temporal"
        # step peak (activations, gradients, temporaries) + the resident AdamW moments
        a_mem = lib.peak_memory(_free_grads(a_opt), a_step, m.device) + lib.adam_bytes(a_params)
        b_mem = lib.peak_memory(_free_grads(b_opt), b_step, m.device) + lib.adam_bytes(b_params)
        rows.append(
            _timed(
                "training",
                m.name,
                f"step time, {shape}",
                f"{kind} adapter",
                f"{label} fine-tune",
                times,
                0.75,
                "<= 0.75x",
                flops=flops,
            )
        )
        rows.append(
            _row(
                "training",
                m.name,
                f"training memory, {shape}",
                f"{kind} adapter",
                f"{label} fine-tune",
                a_mem / b_mem,
                "",
                None,
                a_mib=a_mem / lib.MiB,
                b_mib=b_mem / lib.MiB,
                a_params=sum(p.numel() for p in a_params),
                b_params=sum(p.numel() for p in b_params),
            )
        )
        del adapted, tuned
        lib.trim()
    return rows


# ----------------------------------------------------------------------------- caching


def bench_caching(m: lib.Model, frames: int, repeats: int) -> list[dict[str, Any]]:
    """Motion-adapter step on cached VAE latents / text / image embeddings vs encoding them every step."""
    from dreamvideo.methods.latents import LatentCache
    from dreamvideo.methods.motion import frame_embeddings

    pipe = m.pipe
    side = m.latent * m.vae_factor
    video = torch.rand(frames + 8, 3, side, side) * 2 - 1
    caption = "a red circle moves left"
    unet = lib.with_adapters(m.unet, m.cond_dim, identity=False)
    opt, generator = _adamw(ad.adapter_parameters(unet, "motion"))
    cache = LatentCache.encode(pipe, video)
    embeds = frame_embeddings(pipe, video)
    with torch.no_grad():
        text_cached = pipe.encode_text([caption])

    def train(x: torch.Tensor, text: torch.Tensor, e: torch.Tensor) -> None:
        _train_step(m, unet, opt, generator, x, text, e)

    def cached() -> None:
        index = torch.arange(4, 4 + frames)
        x = cache.sample(index, generator).permute(1, 0, 2, 3).unsqueeze(0)
        train(x, text_cached, embeds[index[:1]])

    def uncached() -> None:
        clip = video[4 : 4 + frames]
        with torch.no_grad():
            x = (
                pipe.vae.encode(clip.to(m.device)).latent_dist.sample(generator)
                * pipe.vae.config.scaling_factor
            )
            text = pipe.encode_text([caption])
            frame = ((clip[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
            e = pipe.encode_image([frame]).float()
        train(x.permute(1, 0, 2, 3).unsqueeze(0), text, e)

    times = lib.interleaved(
        {"cached": (_nothing, cached), "uncached": (_nothing, uncached)}, repeats, m.device
    )
    return [
        _timed(
            "caching",
            m.name,
            f"motion step time, {frames} frames",
            "cached latents+embeddings",
            "encode every step",
            times,
            1.0,
            "< 1x",
        )
    ]


# ----------------------------------------------------------------------- gradient checkpointing and scaling


def _motion_step(m: lib.Model, unet: torch.nn.Module, frames: int, side: int | None = None):
    batch = (m.latents(1, frames, side), m.text(1), torch.randn(1, m.cond_dim, device=m.device))
    return _trainer(m, unet, ad.adapter_parameters(unet, "motion"), batch, True)


def bench_checkpointing(m: lib.Model, frames: int, repeats: int) -> list[dict[str, Any]]:
    """Motion-adapter step with vs without gradient checkpointing: peak memory of the step and its time."""
    unet = lib.with_adapters(m.unet, m.cond_dim, identity=False)
    step, opt = _motion_step(m, unet, frames)

    def on() -> None:
        enable_gradient_checkpointing(unet)
        opt.zero_grad(set_to_none=True)

    def off() -> None:
        disable_gradient_checkpointing(unet)
        opt.zero_grad(set_to_none=True)

    times = lib.interleaved({"on": (on, step), "off": (off, step)}, repeats, m.device)
    mem_on = lib.peak_memory(on, step, m.device)
    mem_off = lib.peak_memory(off, step, m.device)
    off()
    est = _estimate_activations(m, unet, frames)
    shape = f"motion adapter, {frames} frames, {m.latent * m.vae_factor}px"
    return [
        _row(
            "checkpointing",
            m.name,
            f"peak step memory, {shape}",
            "checkpointing on",
            "off",
            mem_on / mem_off,
            "<= 0.6x",
            mem_on / mem_off <= 0.6,
            a_mib=mem_on / lib.MiB,
            b_mib=mem_off / lib.MiB,
            estimated_a_mib=est["checkpointed"] / lib.MiB,
            estimated_b_mib=est["total"] / lib.MiB,
        ),
        _timed("checkpointing", m.name, f"step time, {shape}", "checkpointing on", "off", times, None),
    ]


def _estimate_activations(m: lib.Model, unet: torch.nn.Module, frames: int, side: int | None = None) -> dict:
    x, text = m.latents(1, frames, side), m.text(1)
    ad.set_adapter_condition(unet, "motion", torch.randn(1, m.cond_dim, device=m.device), 1.0)
    with lib.count_saved(unet) as counted, _precision(m):
        loss = diffusion_loss(unet, m.scheduler, x, text, torch.Generator().manual_seed(0), 0.1)
    del loss
    return counted


def bench_scaling(
    m: lib.Model, frame_list: list[int], sides: list[int], repeats: int
) -> list[dict[str, Any]]:
    """Motion-adapter step time and peak memory vs frames (native size) and vs resolution (16 frames)."""
    unet = lib.with_adapters(m.unet, m.cond_dim, identity=False)
    points = [(f, m.latent) for f in frame_list] + [(16, s) for s in sides if s != m.latent]
    rows = []
    for frames, side in points:
        step, opt = _motion_step(m, unet, frames, side)
        times = lib.interleaved({"step": (_free_grads(opt), step)}, repeats, m.device)
        mem = lib.peak_memory(_free_grads(opt), step, m.device)
        rows.append(
            {
                "section": "scaling",
                "model": m.name,
                "frames": frames,
                "pixels": side * m.vae_factor,
                "step_s": lib.median(times["step"]),
                "peak_mib": mem / lib.MiB,
            }
        )
        print(
            f"  scaling {m.name}: {frames} frames {side * m.vae_factor}px: {rows[-1]['step_s']:.3f} s, "
            f"{rows[-1]['peak_mib']:.0f} MiB",
            flush=True,
        )
    return rows


def plot_scaling(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for name in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == name]
        native = max(set(r["pixels"] for r in mine), key=[r["pixels"] for r in mine].count)
        by_frames = sorted((r for r in mine if r["pixels"] == native), key=lambda r: r["frames"])
        by_res = sorted((r for r in mine if r["frames"] == 16), key=lambda r: r["pixels"])
        for col, (series, key, label) in enumerate(
            ((by_frames, "frames", "frames"), (by_res, "pixels", "pixels"))
        ):
            axes[0][col].plot([r[key] for r in series], [r["step_s"] for r in series], "o-", label=name)
            axes[1][col].plot([r[key] for r in series], [r["peak_mib"] for r in series], "o-", label=name)
            axes[1][col].set_xlabel(label + (f" (at {native}px)" if key == "frames" else " (16 frames)"))
            for row in (0, 1):
                axes[row][col].set_xscale("log", base=2)
                axes[row][col].set_xticks([r[key] for r in series], [str(r[key]) for r in series])
    axes[0][0].set_ylabel("step time (s)")
    axes[1][0].set_ylabel("peak step memory (MiB)")
    for ax in axes.flat:
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("Motion-adapter training step vs clip length and resolution")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- report


def _fmt(row: dict[str, Any]) -> str:
    if row["ratio"] is None:
        return row.get("note", "not measured")
    value = f"{row['ratio']:.2f}x"
    if "q1" in row:
        value += f" [{row['q1']:.2f}-{row['q3']:.2f}, {row['rounds']} rounds]"
        value += f" ({row['a_s']:.3f} s vs {row['b_s']:.3f} s)"
    if "flops" in row:
        value += f"; FLOPs {row['flops']:.2f}x"
    if "a_mib" in row:
        value += f" ({row['a_mib']:.0f} vs {row['b_mib']:.0f} MiB)"
    return value


def summary_markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}; total {results['seconds']} s.",
        "",
        "Ratios are medians of per-round A/B ratios with their quartiles in brackets; FLOPs are counted by "
        "torch.utils.flop_counter (matmuls, convolutions, attention; not elementwise ops or the optimizer).",
        "",
        "| section | model | measure | A | B | A / B (median) | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(
            f"| {r['section']} | {r['model']} | {r['what']} | {r['a']} | {r['b']} | {_fmt(r)} | "
            f"{r['target']} | {met} |"
        )
    checkpoint_rows = [r for r in results["rows"] if "estimated_a_mib" in r]
    if checkpoint_rows:
        lines += [
            "",
            "Saved-activation count (autograd saved tensors, see bench_lib.count_saved) vs measured step "
            "peak, checkpointing on / off:",
            "",
        ]
        lines += [
            f"- {r['model']}: estimated {r['estimated_a_mib']:.0f} / {r['estimated_b_mib']:.0f} MiB, "
            "measured "
            f"{r['a_mib']:.0f} / {r['b_mib']:.0f} MiB"
            for r in checkpoint_rows
        ]
    if results.get("scaling"):
        lines += [
            "",
            "Motion-adapter step vs frames and resolution (plot: `scaling.png`):",
            "",
            "| model | frames | pixels | step (s) | peak step memory (MiB) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['model']} | {r['frames']} | {r['pixels']} | {r['step_s']:.3f} | {r['peak_mib']:.0f} |"
            for r in results["scaling"]
        ]
    lines += ["", estimate.markdown(results["modelscope_estimate"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller sweeps (a few minutes)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (default 1: on shared, oversubscribed cores 2 threads ran 10x slower)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    repeats = 3 if args.quick else 7
    torch.manual_seed(0)

    models = [("toy", lib.toy_model), ("mid", lib.mid_model)] + (
        [("modelscope", lib.full_model)] if device.type == "cuda" else []
    )
    rows: list[dict[str, Any]] = []
    scaling: list[dict[str, Any]] = []
    for name, build in models:
        m = build(device)
        frames = 8 if args.quick else 16
        if args.quick and name == "mid":
            m.latent = 8  # 64x64 pixels
        print(f"[{name}] inference", flush=True)
        rows += bench_inference(m, steps=3 if args.quick else 25, frames=frames, repeats=repeats)
        print(f"[{name}] training", flush=True)
        rows += bench_training(m, frames=frames, image_batch=2 if args.quick else 4, repeats=repeats)
        if m.pipe is not None:
            print(f"[{name}] caching", flush=True)
            rows += bench_caching(m, frames=frames, repeats=repeats)
        print(f"[{name}] gradient checkpointing", flush=True)
        rows += bench_checkpointing(m, frames=frames, repeats=repeats)
        if name == "toy" or not args.quick:
            print(f"[{name}] scaling", flush=True)
            sides = [m.latent // 2, m.latent, m.latent * 2]
            scaling += bench_scaling(m, [8, 16, 32], sides, repeats=1 if args.quick else 3)
        del m
        lib.trim()
    if device.type != "cuda":
        for section, what in (
            ("inference", "DDIM denoising loop"),
            ("training", "adapter vs fine-tune step"),
            ("checkpointing", "peak memory and time"),
        ):
            rows.append(_row(section, "modelscope", what, "", "", None, note="not measured (no GPU)"))
    print("[modelscope] meta-device estimate", flush=True)
    estimated = estimate.run()

    results = {
        "command": "python benchmarks/run_all.py" + (" --quick" if args.quick else ""),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "rows": rows,
        "scaling": scaling,
        "modelscope_estimate": estimated,
        "seconds": round(time.perf_counter() - started, 1),
    }
    for section in ("inference", "training", "caching", "checkpointing"):
        part = [r for r in rows if r["section"] == section]
        (args.out / f"{section}.json").write_text(json.dumps(part, indent=2))
    (args.out / "scaling.json").write_text(json.dumps(scaling, indent=2))
    (args.out / "modelscope_estimate.json").write_text(json.dumps(estimated, indent=2))
    (args.out / "all.json").write_text(json.dumps(results, indent=2))
    if scaling:
        plot_scaling(scaling, args.out / "scaling.png")
    text = summary_markdown(results)
    (args.out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
