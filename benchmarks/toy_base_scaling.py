"""How the toy base's quality bar grows with more UNet training (issue 3's "what would reach the bar").

Continues the shipped toy model's UNet (``--init-from toy``: CLIP and VAE kept) for ``--steps`` steps in
``--chunks`` equal parts of one cosine schedule, and after each part measures the quality bar
(``dreamvideo.toy.quality``: held-out prompts, oracle-judged) on the EMA weights of that checkpoint. The shipped
weights are measured first, on the same device, as step 0.

    python benchmarks/toy_base_scaling.py --device cuda --steps 1600 --chunks 4 --out toy_scaling

Writes ``OUT/scaling.json`` (after every point, so a run cut short keeps what it measured), ``OUT/scaling.png``,
and the run's ``loss_curve.png`` / ``train_log.json`` / ``held_out_samples.png`` when it finishes. The trained
model is left in ``OUT/run/`` and is not the shipped one.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from dreamvideo.fileio import write_json
from dreamvideo.toy import pretrain as toy_pretrain
from dreamvideo.toy import quality
from dreamvideo.toy.model import TOY_MODEL_DIR

# The shipped weights saw 800 steps x 64 clips (H100) and then 800 steps x 16 clips (CPU continuation).
SHIPPED_CLIPS = 800 * 64 + 800 * 16


def ema_model(run: Path, base: Path, folder: Path, scheduler=None) -> Path:
    """A base-model folder: ``base`` with its UNet replaced by the EMA weights of the run's checkpoint.

    ``scheduler`` (the run's, when it differs from the base's) replaces ``base``'s ``scheduler/``.
    """
    unet = toy_pretrain.checkpoint_ema_unet(run)
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(base, folder)
    shutil.rmtree(folder / "unet")
    unet.save_pretrained(folder / "unet")
    if scheduler is not None:
        shutil.rmtree(folder / "scheduler")
        scheduler.save_pretrained(folder / "scheduler")
    return folder


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    clips = [p["clips_seen"] / 1000 for p in points]
    for key, colour in zip(quality.TARGETS, ("tab:red", "tab:blue", "tab:green"), strict=True):
        ax.plot(clips, [100 * p["accuracy"][key] for p in points], "o-", color=colour, label=key)
        ax.axhline(100 * quality.TARGETS[key], color=colour, ls=":", lw=1)
    ax.set(
        xlabel="training clips seen by the UNet (thousands)",
        ylabel="held-out prompts correct (%)",
        ylim=(0, 100),
        title="toy base: quality bar vs UNet training",
    )
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), title="dotted: target")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--init-from", default="toy", help="the base model whose UNet is trained on ('toy' or a folder)"
    )
    p.add_argument("--clips-before", type=int, default=SHIPPED_CLIPS, help="training clips the UNet has seen")
    p.add_argument("--skip-initial", action="store_true", help="do not measure the starting model again")
    p.add_argument("--steps", type=int, default=1600, help="UNet steps in all (one cosine schedule)")
    p.add_argument("--chunks", type=int, default=4, help="quality is measured after each of these parts")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--n", type=int, default=32, help="held-out prompts per measurement")
    p.add_argument(
        "--shared-noise",
        type=float,
        default=0.0,
        help="train and sample with this share of frame-shared noise",
    )
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--time-limit", type=float, help="start no new part after this many seconds")
    args = p.parse_args(argv)
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    run = args.out / "run"
    part = -(-args.steps // args.chunks)
    base = TOY_MODEL_DIR if args.init_from == "toy" else Path(args.init_from)
    train_argv = [
        "--out",
        str(run),
        "--init-from",
        str(base),
        "--device",
        args.device,
        "--workers",
        str(args.workers),
        "--unet-steps",
        str(args.steps),
        "--unet-batch",
        str(args.batch),
        "--unet-lr",
        str(args.lr),
        "--warmup",
        "50",
        "--checkpoint-every",
        str(part),
        "--preview-steps",
        "25",
        "--max-steps",
        str(part),
        "--shared-noise",
        str(args.shared_noise),
    ]
    points: list[dict] = []

    def record(step: int, model: str | Path, sheet: Path | None = None) -> None:
        measured = quality.measure(  # every point sampled as the UNet is trained; 0: the pipeline's own noise
            args.n, base=str(model), device=args.device, sheet=sheet, shared_noise=args.shared_noise or None
        )
        points.append(
            {
                "step": step,
                "clips_seen": args.clips_before + step * args.batch,
                "accuracy": measured["accuracy"],
                "met": measured["met"],
                "eval_seconds": measured["seconds"],
                "elapsed_seconds": round(time.perf_counter() - start, 1),
            }
        )
        write_json(
            {"args": {k: str(v) for k, v in vars(args).items()}, "points": points}, args.out / "scaling.json"
        )
        print(
            f"step {step}: " + ", ".join(f"{k} {v:.0%}" for k, v in measured["accuracy"].items()), flush=True
        )

    if not args.skip_initial:
        record(0, base)
    for chunk in range(args.chunks):
        if args.time_limit is not None and time.perf_counter() - start > args.time_limit:
            print(f"time limit reached before part {chunk + 1} of {args.chunks}")
            break
        parsed = toy_pretrain.build_parser().parse_args(train_argv + (["--resume"] if chunk else []))
        finished = toy_pretrain.pretrain(parsed)
        step = min(args.steps, (chunk + 1) * part)
        last = finished is not None
        record(
            step,
            ema_model(run, base, args.out / "model"),
            args.out / "held_out_samples.png" if last else None,
        )
        if last:
            for name in ("loss_curve.png", "train_log.json"):
                shutil.copy(run / name, args.out / name)
            break
    plot(points, args.out / "scaling.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
