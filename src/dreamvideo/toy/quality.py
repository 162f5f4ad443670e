"""The toy base model's quality bar: does it follow prompts it never saw? (``python -m dreamvideo.toy.quality``)

Generates one video for each of ``n`` held-out prompts (attribute combinations absent from every training caption)
and asks the oracle whether the prompted colour, motion and background came out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dreamvideo.fileio import write_json
from dreamvideo.toy import oracle, world

TARGETS = {"color": 0.80, "motion": 0.70, "background": 0.80, "steady_background": 0.95, "smooth_track": 0.90}
MIN_JUMP_PX = 2.0  # floor of the allowed jump for motions that barely move (stays still, grows, shrinks)


def steady_background(frames: np.ndarray) -> bool:
    """Coherence: the oracle finds the same background class in every frame."""
    return len({oracle.background_class(frame[None]) for frame in frames}) == 1


def smooth_track(frames: np.ndarray, masks: np.ndarray, spec: world.ClipSpec) -> bool:
    """Coherence: no frame-to-frame jump of the sprite's centre larger than twice the largest true one.

    The true displacements come from the prompted motion's trajectory (the spec's amplitude and phase); the
    allowed jump is ``2 * max(largest true step, MIN_JUMP_PX)`` pixels.
    """
    offsets, _ = world.trajectory(spec.motion, len(frames), spec.amplitude, spec.phase)
    true_step = np.linalg.norm(np.diff(offsets, axis=0), axis=1).max()
    centers = oracle.track(masks)[0]
    return bool(np.linalg.norm(np.diff(centers, axis=0), axis=1).max() <= 2 * max(true_step, MIN_JUMP_PX))


def by_motion(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per prompted motion: how many videos, and the rate of each check (where a bar fails, which motions fail it)."""
    result = {}
    for motion in sorted({r["prompted_motion"] for r in rows}):
        sel = [r for r in rows if r["prompted_motion"] == motion]
        result[motion] = {"n": len(sel)} | {k: round(sum(r[k] for r in sel) / len(sel), 3) for k in TARGETS}
    return result


def measure(
    n: int = 64,
    steps: int = 25,
    guidance: float | None = None,
    seed: int = 0,
    base: str = "toy",
    sheet: Path | None = None,
    device: str = "cpu",
    shared_noise: float | None = None,
) -> dict:
    """Accuracy of prompted colour / motion / background and two coherence rates over ``n`` held-out prompts.

    One video per prompt (seed ``seed + i``); the coherence checks are :func:`steady_background` and
    :func:`smooth_track`.

    Args:
        n: number of held-out prompts (one video each, seeds ``seed + i``).
        steps, guidance: DDIM steps and classifier-free guidance scale (``None``: the base's default).
        seed: seed of the prompt draw and of the noise.
        base: the base model ('toy' or a folder).
        sheet: where to save a contact sheet of the first 16 videos (optional).
        device: where to run the pipeline (the noise is drawn on the CPU, so devices agree up to rounding).
        shared_noise: if given, the starting noise is drawn here as ``sqrt(a) * shared + sqrt(1 - a) * per-frame``
            with ``a = shared_noise`` (one shared draw for all frames, as in VideoFusion's decomposed noise);
            ``None`` (default) lets the pipeline draw independent noise per frame. ``0.0`` is also independent
            noise, but a different draw from ``None``.
    """
    if shared_noise is not None and not 0.0 <= shared_noise < 1.0:
        raise ValueError(f"shared_noise must be in [0, 1), got {shared_noise}")
    from dreamvideo.pipeline import DreamVideoPipeline
    from dreamvideo.video_io import contact_sheet

    pipe = DreamVideoPipeline.from_pretrained(base)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    rows, videos = [], []
    start = time.perf_counter()
    for i, spec in enumerate(tqdm(world.held_out_specs(n=n, seed=seed), desc="held-out prompts")):
        assert world.is_held_out(spec)
        prompt = world.caption(spec)
        generator = torch.Generator().manual_seed(seed + i)
        latents = None
        if shared_noise is not None:
            size = pipe.unet.config.sample_size
            shared = torch.randn(1, pipe.unet.config.in_channels, 1, size, size, generator=generator)
            own = torch.randn(
                1, pipe.unet.config.in_channels, world.NUM_FRAMES, size, size, generator=generator
            )
            latents = shared_noise**0.5 * shared + (1 - shared_noise) ** 0.5 * own
        frames = pipe(
            prompt,
            num_frames=world.NUM_FRAMES,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            latents=latents,
            progress=False,
        ).frames[0]
        masks = oracle.segment_foreground(frames)
        rows.append(
            {
                "prompt": prompt,
                "prompted_motion": spec.motion,
                "color": oracle.dominant_color(frames, masks) == spec.sprite.color,
                "motion": oracle.motion_class(frames, masks) == spec.motion,
                "background": oracle.background_class(frames) == spec.background,
                "steady_background": steady_background(frames),
                "smooth_track": smooth_track(frames, masks, spec),
            }
        )
        videos.append((prompt, frames))
    accuracy = {k: sum(r[k] for r in rows) / len(rows) for k in TARGETS}
    if sheet is not None:
        contact_sheet(videos[:16], sheet, scale=1)
    stderr = {k: (a * (1 - a) / n) ** 0.5 for k, a in accuracy.items()}  # binomial standard error
    return {
        "n": n,
        "steps": steps,
        "guidance_scale": pipe.resolve_guidance_scale(guidance),
        "shared_noise": shared_noise,
        "accuracy": accuracy,
        "stderr": stderr,
        "targets": TARGETS,
        "met": {k: accuracy[k] >= t for k, t in TARGETS.items()},
        "by_motion": by_motion(rows),
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument(
        "--guidance-scale", type=float, help="classifier-free guidance scale (default: the base's)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt draw and of the noise")
    p.add_argument("--base", default="toy")
    p.add_argument("--out", type=Path, default=Path("docs/toy_model"))
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--shared-noise", type=float, help="share of the starting noise common to all frames (0-1)"
    )
    args = p.parse_args(argv)
    if args.shared_noise is not None and not 0.0 <= args.shared_noise < 1.0:
        p.error(f"--shared-noise must be in [0, 1), got {args.shared_noise}")
    result = measure(
        args.n,
        args.steps,
        guidance=args.guidance_scale,
        seed=args.seed,
        base=args.base,
        sheet=args.out / "held_out_samples.png",
        device=args.device,
        shared_noise=args.shared_noise,
    )
    write_json(result, args.out / "quality.json")
    for k, acc in result["accuracy"].items():
        met = "met" if result["met"][k] else "NOT met"
        print(f"{k}: {acc:.0%} ± {result['stderr'][k]:.0%} correct (target {TARGETS[k]:.0%}) {met}")
        if not result["met"][k]:
            rates = sorted((m[k], name) for name, m in result["by_motion"].items())
            print("  by prompted motion: " + ", ".join(f"{name} {rate:.0%}" for rate, name in rates))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
