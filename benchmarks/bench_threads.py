"""CPU threads under load: how much slower a training step gets when other CPU-bound processes share the cores,
with torch's default thread count against dreamvideo's default (``--threads``, :mod:`dreamvideo.threads`).

For every setting and every number of competing processes (0, 1, 2 busy loops, started for the measurement and
stopped after it) the script times ``--steps`` motion-adapter training steps on the toy base (forward, backward,
AdamW update of the motion adapter) and prints the median step time and the slowdown ratio against the same
setting with no competitor. Anything else running on the machine loads every row alike: say so when reporting.

    python benchmarks/bench_threads.py                # 6 steps per cell
    python benchmarks/bench_threads.py --steps 3 --note "measured while another training job ran"

Writes ``benchmarks/results/threads.json`` and ``threads.md``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _busy() -> None:
    """A CPU-bound competitor (pure Python, no threads)."""
    x = 0
    while True:
        x = (x * 1103515245 + 12345) % 2**31


def _make_step(frames: int):
    """A motion-adapter training step on the toy base: returns ``step()``."""
    from dreamvideo import adapters as ad
    from dreamvideo.pipeline import DreamVideoPipeline
    from dreamvideo.training import diffusion_loss

    pipe = DreamVideoPipeline.from_pretrained("toy", device="cpu")
    config = ad.motion_adapter_config(None)
    ad.attach_adapter(pipe.unet, config)
    params = ad.adapter_parameters(pipe.unet, config.name)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-5)
    size = pipe.unet.config.sample_size
    latents = torch.randn(1, pipe.unet.config.in_channels, frames, size, size)
    text = pipe.encode_text(["a red star moves left"])
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        loss = diffusion_loss(pipe.unet, pipe.scheduler, latents, text, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _time(step, n: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _with_competitors(k: int, fn):
    procs = [mp.Process(target=_busy, daemon=True) for _ in range(k)]
    for p in procs:
        p.start()
    time.sleep(0.5 if k else 0)
    try:
        return fn()
    finally:
        for p in procs:
            p.terminate()
            p.join()


def measure(steps: int, frames: int, competitors: list[int]) -> list[dict]:
    """Median step time and slowdown for torch's default threads and dreamvideo's default.

    Args:
        steps: timed steps per cell.
        frames: clip length of the step.
        competitors: numbers of competing busy processes.
    """
    from dreamvideo.threads import available_cores, default_threads

    step = _make_step(frames)
    settings = {"torch default": available_cores(), "dreamvideo default": default_threads()}
    rows = []
    for name, threads in settings.items():
        torch.set_num_threads(threads)
        base = None
        for k in competitors:
            t = _with_competitors(k, lambda: _time(step, steps))
            base = t if k == 0 else base
            rows.append(
                {
                    "setting": name,
                    "threads": threads,
                    "competitors": k,
                    "step_s": round(t, 4),
                    "slowdown": round(t / base, 2) if base else None,
                }
            )
            print(
                f"{name:>18} ({threads} threads), {k} competing: {t:.3f} s/step, "
                f"slowdown x{rows[-1]['slowdown']}",
                flush=True,
            )
    return rows


def write(rows: list[dict], note: str, out: Path, steps: int, frames: int) -> None:
    """Write ``threads.json`` and ``threads.md``."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "cores": os.cpu_count(),
        "steps_per_cell": steps,
        "frames": frames,
        "note": note,
        "load_average_at_end": os.getloadavg(),
    }
    (out / "threads.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Step time under CPU load",
        "",
        f"{note}",
        "",
        f"{meta['cores']} cores, toy base, motion-adapter training step ({frames} frames), median of {steps} "
        "steps per cell.",
        "",
        "| setting | threads | competing processes | s / step | slowdown |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['setting']} | {r['threads']} | {r['competitors']} | {r['step_s']} | x{r['slowdown']} |"
        for r in rows
    ]
    (out / "threads.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps per cell")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--competitors", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--note", default="", help="a line describing the conditions (e.g. other jobs running)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    rows = measure(args.steps, args.frames, args.competitors)
    write(rows, args.note, args.out, args.steps, args.frames)
    print(f"wrote {args.out / 'threads.json'} and {args.out / 'threads.md'}")


if __name__ == "__main__":
    main()
