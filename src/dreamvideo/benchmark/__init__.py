"""``dreamvideo benchmark``: DreamVideo, the paper's baselines and its ablations on one grid.

A grid is subjects x motions x prompts x seeds. Every entry (a method, an ablation, or the plain base model) learns
each subject and/or motion once per seed with the same data, seed and step budget, then generates every prompt of
the cases it supports (subject, motion, joint customization) with the same sampling seed. Each video is scored with
the toy CLIP (CLIP-T, CLIP-I, T.Cons) and, on the toy world, the oracle (subject fidelity, motion fidelity,
background accuracy).

Work is cached cell by cell under ``--out``: a trained folder (``train/...``, marker JSON last) or a generated
video with its metrics (``videos/.../cell.json``) is never recomputed, and an interrupted training run resumes from
its last checkpoint. Cells are keyed by a hash of everything that determines them, so changing a setting makes new
cells instead of reusing stale ones.

Outputs: ``results.md`` / ``results.json`` (tables in the paper's layout: mean ± std over seeds, trainable
parameters, training time), ``plots/`` (metric bars, identity-vs-motion trade-off, weight-change analysis) and
``contact_<case>.png`` (every entry on the same prompt and seed).

Under ``accelerate launch`` the processes split the distinct trainings and the generation groups between them (each
works alone on its share, so results match a single-process run); the main process then analyses and reports.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dreamvideo.benchmark.grid import (
    CASES,
    METRICS,
    BenchmarkConfig,
    BenchmarkError,
    Entry,
    Part,
    builtin_ablations,
    builtin_methods,
    full_config,
    quick_config,
)
from dreamvideo.benchmark.report import format_markdown, merge_results, plot_results, summarize, write_report
from dreamvideo.benchmark.runner import Benchmark

__all__ = [
    "CASES",
    "METRICS",
    "Benchmark",
    "BenchmarkConfig",
    "BenchmarkError",
    "Entry",
    "Part",
    "builtin_ablations",
    "builtin_methods",
    "config_from_args",
    "format_markdown",
    "full_config",
    "merge_results",
    "plot_results",
    "quick_config",
    "register_cli",
    "summarize",
    "write_report",
]

# ----------------------------------------------------------------------------- CLI


def config_from_args(args: argparse.Namespace) -> tuple[BenchmarkConfig, Path]:
    """The grid and output folder that ``dreamvideo benchmark`` arguments select."""
    if args.config:
        config, default_out = (
            BenchmarkConfig.from_file(args.config),
            Path(f"benchmark_{Path(args.config).stem}"),
        )
    elif args.quick:
        config, default_out = quick_config(), Path("benchmark_quick")
    else:
        config, default_out = full_config(), Path("benchmark_full")
    if args.seeds is not None:  # a piece of the grid: the same folders and cells as in the whole run
        config.seeds = list(args.seeds)
    return config, Path(args.out or default_out)


def cmd_benchmark(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.merge:
        if not args.out:
            raise BenchmarkError("--merge needs --out, the folder for the merged results")
        results, entries = merge_results(args.merge)
        write_report(results, entries, args.out)
        print((args.out / "results.md").read_text())
        print(f"results.md, results.json and plots/ of {len(args.merge)} runs in {args.out}")
        return 0
    config, out = config_from_args(args)
    results = Benchmark(config, out, device=args.device, progress=not args.quiet).run()
    if results is None:  # not the main process of a multi-process run
        return 0
    print((out / "results.md").read_text())
    print(f"results.md, results.json, plots/ and contact sheets in {out} ({results['seconds']} s)")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dreamvideo benchmark``."""
    p = subparsers.add_parser("benchmark", help="run DreamVideo, the baselines and the ablations on one grid")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", type=Path, help="JSON grid (see dreamvideo.benchmark.BenchmarkConfig)")
    which.add_argument("--quick", action="store_true", help="small toy grid (~20 min on 2 CPU cores)")
    which.add_argument("--full", action="store_true", help="every toy subject and motion, three seeds")
    which.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="RESULTS_JSON",
        help="tables and plots of pieces of one grid run apart (other seeds or entries, other machines)",
    )
    p.add_argument("--out", type=Path, help="output folder, reused to resume (default benchmark_<name>)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="run only these of the grid's seeds (a resumable piece: a later run reuses its cells)",
    )
    p.add_argument(
        "--threads", type=int, help="CPU threads of torch (1 is much faster on a CPU shared with other jobs)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_benchmark)
