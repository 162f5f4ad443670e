"""Learning-rate search of every benchmark method on the toy world's validation subject and motion (issue 19).

Every method gets the same search: its default learning rate(s) times each of ``--factors`` (DreamVideo's subject
scales its textual-inversion and identity-adapter rates together), the same data (``lantern`` and ``leap``, which
no reported grid uses), the same seed, the same step budgets and the same validation prompts. The chosen factor of
a method is the one with the best mean oracle fidelity on its own case (subject fidelity of its subject videos,
motion fidelity of its motion videos) among the factors whose background accuracy stays within 0.25 of the base
model's (a learning rate that breaks the prompt is not "better"). Writes ``OUT/search.json`` and ``OUT/search.md``
(every factor's means, the choice, the ``method_settings`` to use); the trained folders and videos are cached
under ``OUT`` like any benchmark, so an interrupted search resumes::

    OMP_NUM_THREADS=2 python benchmarks/toy_method_search.py --out runs/search --factors 0.3 1 3

The published search (``docs/benchmark_search/``) multiplies the learning rates of ``reference.json`` there (the
defaults before any search) by 0.1, 0.3, 1, 3 and 10::

    python benchmarks/toy_method_search.py --out runs/search --reference docs/benchmark_search/reference.json \
        --factors 0.1 0.3 1 3 10
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch

from dreamvideo.benchmark import Benchmark, BenchmarkConfig
from dreamvideo.benchmark.grid import DEFAULT_METHOD_SETTINGS, DEFAULT_TRAINING
from dreamvideo.fileio import write_json
from dreamvideo.toy import world

METHODS = ["dreamvideo", "textual-inversion", "dreamix", "finetune", "lora", "tune-a-video", "animatediff"]
PROMPTS = {  # validation prompts: every background, moving and still
    "subject": [
        "a {subject} moves right on blue sky",
        "a {subject} stays still on yellow sand",
        "a {subject} moves up on green grass",
        "a {subject} stays still on dark night",
    ],
    "motion": [
        "a red circle moves on green grass",
        "a white star moves on dark night",
        "a blue square moves on yellow sand",
        "a yellow triangle moves on gray road",
    ],
    "joint": ["a {subject} moves on blue sky", "a {subject} moves on gray road"],
}
PRIMARY = {"subject": "subject_fidelity", "motion": "motion_fidelity"}
BACKGROUND_SLACK = 0.25


def scaled_settings(factor: float, reference: dict | None = None) -> tuple[dict, dict]:
    """``training`` and ``method_settings`` with every learning rate multiplied by ``factor``.

    Args:
        factor: the multiplier.
        reference: ``{"training": {...}, "method_settings": {...}}``, the learning rates the factors multiply
            (default: today's ``DEFAULT_TRAINING`` and ``DEFAULT_METHOD_SETTINGS``).
    """
    training = (reference or {}).get("training", DEFAULT_TRAINING)
    training = {k: training[k] * factor for k in ("ti_lr", "identity_lr", "motion_lr")}
    settings = copy.deepcopy((reference or {}).get("method_settings", DEFAULT_METHOD_SETTINGS))
    for values in settings.values():
        for key in ("subject_lr", "motion_lr", "ti_lr", "identity_lr"):
            if key in values:
                values[key] *= factor
    return training, settings


def learning_rates(method: str, kind: str, training: dict, settings: dict) -> dict[str, float]:
    """The learning rate(s) ``method`` trains ``kind`` with under these settings (as the runner picks them)."""
    ms = settings.get(method, {})
    if kind == "subject" and method in ("dreamvideo", "textual-inversion"):
        keys = ("ti_lr", "identity_lr") if method == "dreamvideo" else ("ti_lr",)
        return {k: ms.get(k, training[k]) for k in keys}
    key = f"{kind}_lr"
    return {key: ms.get(key, training["identity_lr" if kind == "subject" else "motion_lr"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="cache and result folder (reused to resume)")
    p.add_argument("--factors", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    p.add_argument(
        "--reference",
        type=Path,
        help="JSON {training, method_settings}: the learning rates the factors multiply (default: today's "
        "defaults); docs/benchmark_search/reference.json holds those of the published search",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    subject, motion = next(iter(world.VALIDATION_SUBJECTS)), world.VALIDATION_MOTIONS[0]
    reference = json.loads(args.reference.read_text()) if args.reference else None
    runs = {}
    for factor in args.factors:
        training, settings = scaled_settings(factor, reference)
        config = BenchmarkConfig(
            subjects=[{"name": subject}],
            motions=[{"name": motion}],
            prompts=PROMPTS,
            seeds=[args.seed],
            methods=["base", *METHODS],
            training=training,
            method_settings=settings,
            tradeoff=None,
        )
        results = Benchmark(config, args.out, device=args.device, progress=False).run()
        if results is None:  # not the main process
            continue
        write_json(results, args.out / f"results_x{factor:g}.json")
        runs[factor] = (results, training, settings)
    if not runs:
        return 0
    report = search_report(runs, subject, motion, args.seed)
    write_json(report, args.out / "search.json")
    (args.out / "search.md").write_text(format_report(report))
    print(format_report(report))
    return 0


def _means(rows: list[dict], entry: str, case: str) -> dict[str, float]:
    sel = [r for r in rows if r["entry"] == entry and r["case"] == case and r["group"] != "tradeoff"]
    keys = {k for r in sel for k, v in r.items() if isinstance(v, float)}
    return {k: float(np.mean([r[k] for r in sel if k in r])) for k in sorted(keys)} | {"videos": len(sel)}


def search_report(runs: dict, subject: str, motion: str, seed: int) -> dict:
    """Per method and kind: every factor's learning rates and case means, and the chosen factor."""
    any_rows = next(iter(runs.values()))[0]["rows"]
    base = {case: _means(any_rows, "base", case) for case in ("subject", "motion", "joint")}
    methods = {}
    for method in METHODS:
        for kind in ("subject", "motion"):
            if not any(r["entry"] == method and r["case"] == kind for r in any_rows):
                continue
            candidates = []
            for factor, (results, training, settings) in sorted(runs.items()):
                means = _means(results["rows"], method, kind)
                joint = _means(results["rows"], method, "joint")
                ok = (
                    means.get("background_ok", 0.0) >= base[kind].get("background_ok", 0.0) - BACKGROUND_SLACK
                )
                candidates.append(
                    {
                        "factor": factor,
                        "lr": learning_rates(method, kind, training, settings),
                        "means": means,
                        "joint": joint if joint["videos"] else None,
                        "eligible": ok,
                    }
                )
            eligible = [c for c in candidates if c["eligible"]] or candidates
            best = max(eligible, key=lambda c: c["means"][PRIMARY[kind]])
            methods[f"{method}|{kind}"] = {
                "candidates": candidates,
                "chosen": best["factor"],
                "lr": best["lr"],
            }
    return {
        "subject": subject,
        "motion": motion,
        "seed": seed,
        "prompts": PROMPTS,
        "factors": sorted(runs),
        "rule": "best mean oracle subject fidelity (subject) / motion fidelity (motion) on the method's own case, "
        f"among the factors whose background accuracy is at least the base's minus {BACKGROUND_SLACK}",
        "base": base,
        "methods": methods,
    }


def format_report(report: dict) -> str:
    lines = [
        f"# Learning-rate search on the validation subject `{report['subject']}` and motion `{report['motion']}`",
        "",
        f"Seed {report['seed']}; factors {report['factors']} of each method's default learning rate(s); "
        f"rule: {report['rule']}.",
        "",
        "| method | kind | factor | learning rate(s) | own fidelity | background acc. | joint subject / motion "
        "fid. | chosen |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in ("subject", "motion"):
        b = report["base"][case]
        lines.append(
            f"| base | {case} | - | - | {b[PRIMARY[case]]:.3f} | {b.get('background_ok', float('nan')):.2f} | "
            f"- | |"
        )
    for key, m in report["methods"].items():
        method, kind = key.split("|")
        for c in m["candidates"]:
            j = c["joint"]
            joint = f"{j['subject_fidelity']:.3f} / {j['motion_fidelity']:.3f}" if j else "-"
            lrs = ", ".join(f"{k} {v:.2g}" for k, v in c["lr"].items())
            mark = "**yes**" if c["factor"] == m["chosen"] else ("" if c["eligible"] else "excluded")
            lines.append(
                f"| {method} | {kind} | {c['factor']:g} | {lrs} | {c['means'][PRIMARY[kind]]:.3f} | "
                f"{c['means'].get('background_ok', float('nan')):.2f} | {joint} | {mark} |"
            )
    lines += [
        "",
        "Chosen learning rates:",
        "",
        "```json",
        json.dumps(
            {k: {n: float(f"{v:.3g}") for n, v in m["lr"].items()} for k, m in report["methods"].items()},
            indent=1,
        ),
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
