"""Which training recipe makes the toy base coherent? Short warm-started runs, each measured the same way.

Every arm continues the shipped toy UNet (CLIP and VAE kept) with its own pretraining flags for ``--steps``
steps of a ``--schedule-steps`` cosine schedule, then measures the EMA weights with the quality bar
(``dreamvideo.toy.quality``: held-out prompts, oracle-judged, with the two coherence checks) and the temporal
probe (``toy_temporal_probe.py``). The shipped weights are measured first as the control. Re-running with a
larger ``--steps`` resumes every arm from its checkpoint (``--arms`` picks some).

    OMP_NUM_THREADS=2 python benchmarks/toy_base_recipe.py --out /work/recipe --steps 80 --n 32

Writes ``OUT/recipe.json`` after every measurement (a run cut short keeps what it measured) and
``OUT/<arm>/held_out_samples.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from toy_base_scaling import ema_model
from toy_temporal_probe import probe, probe_inputs, word_use

from dreamvideo.fileio import read_json, write_json
from dreamvideo.pipeline import DreamVideoPipeline
from dreamvideo.toy import pretrain as toy_pretrain
from dreamvideo.toy import quality
from dreamvideo.toy.model import TOY_MODEL_DIR, toy_scheduler
from dreamvideo.training import latest_checkpoint

ZERO_SNR = ["--prediction-type", "v_prediction", "--zero-snr", "--timestep-spacing", "trailing"]
ARMS: dict[str, list[str]] = {
    "eps": [],  # today's recipe, continued: the control for the step budget
    "vzero": ZERO_SNR,  # Lin et al.: v-prediction, zero terminal SNR, trailing steps
    "vzero_shift": [*ZERO_SNR, "--snr-shift", "-1.0"],  # + a noisier schedule for 16x16 latents
    "vzero_shared": [*ZERO_SNR, "--shared-noise", "0.5"],  # + VideoFusion's frame-shared noise
}


def probe_summary(model: Path, clips: int = 16) -> dict:
    """Frame-alone loss gap and cross-frame sensitivity of a base-model folder (mean over the probe's timesteps)."""
    pipe = DreamVideoPipeline.from_pretrained(model)
    rows = probe(pipe.unet, *probe_inputs(pipe, clips), pipe.scheduler)
    gap = {t: r["loss_frames_alone"] / r["loss_whole_clip"] - 1 for t, r in rows.items()}
    return {
        "rows": rows,
        "frames_alone_gap": gap,
        "cross_frame_sensitivity": {t: r["other_frames_change_vs_frame0"] for t, r in rows.items()},
        "word_use": word_use(pipe, 2 * clips),
    }


def measure(name: str, model: Path, args: argparse.Namespace, shared: float | None, sheet: Path) -> dict:
    start = time.perf_counter()
    q = quality.measure(args.n, args.sample_steps, base=str(model), sheet=sheet, shared_noise=shared)
    p = probe_summary(model)
    print(
        f"{name}: "
        + ", ".join(f"{k} {v:.0%}" for k, v in q["accuracy"].items())
        + " | gap "
        + " ".join(f"{v:+.2f}" for v in p["frames_alone_gap"].values())
        + " | cross "
        + " ".join(f"{v:.3f}" for v in p["cross_frame_sensitivity"].values())
        + " | motion-word use "
        + " ".join(f"{r['motion']:+.1%}" for r in p["word_use"].values()),
        flush=True,
    )
    return {
        "accuracy": q["accuracy"],
        "stderr": q["stderr"],
        "probe": p,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--steps", type=int, default=80, help="train every arm up to this step")
    p.add_argument("--schedule-steps", type=int, default=800, help="length of the cosine schedule")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--n", type=int, default=32, help="held-out prompts per measurement")
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "recipe.json"
    results = read_json(path) if path.is_file() else {"control": None, "arms": {}}
    if results["control"] is None:
        results["control"] = measure("shipped", TOY_MODEL_DIR, args, None, args.out / "shipped_samples.png")
        write_json(results, path)
    for name in args.arms:
        run = args.out / name / "run"
        flags = [
            "--out",
            str(run),
            "--init-from",
            str(TOY_MODEL_DIR),
            "--device",
            args.device,
            "--workers",
            "0",
            "--unet-steps",
            str(args.schedule_steps),
            "--unet-batch",
            str(args.batch),
            "--unet-lr",
            str(args.lr),
            "--warmup",
            "20",
            "--checkpoint-every",
            "20",
            "--preview-steps",
            "0",
            *ARMS[name],
        ]
        parsed = toy_pretrain.build_parser().parse_args(flags)
        newest = latest_checkpoint(run / "checkpoints" / "unet")
        done = read_json(newest / "trainer.json")["step"] if newest else 0
        if done < args.steps:
            parsed.resume, parsed.max_steps = done > 0, args.steps - done
            toy_pretrain.pretrain(parsed)
        key = f"{name}@{args.steps}"
        if key in results["arms"]:
            continue
        scheduler = toy_scheduler(
            parsed.prediction_type, parsed.zero_snr, parsed.timestep_spacing, parsed.snr_shift
        )
        model = ema_model(run, TOY_MODEL_DIR, args.out / name / "model", scheduler)
        results["arms"][key] = {
            "flags": ARMS[name],
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
        } | measure(
            key,
            model,
            args,
            parsed.shared_noise or None,
            args.out / name / f"held_out_samples_{args.steps}.png",
        )
        write_json(results, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
