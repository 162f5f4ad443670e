"""Tables (the paper's layout, mean ± std over seeds, paired differences to the base) and plots of a run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from dreamvideo.benchmark.grid import (
    CASES,
    ENCODER_ENTRY,
    METRICS,
    BenchmarkConfig,
    BenchmarkError,
    Entry,
    builtin_ablations,
)
from dreamvideo.fileio import atomic_path, read_json, write_json
from dreamvideo.metrics import paired_difference
from dreamvideo.motion_metrics import pearson, spearman

# ----------------------------------------------------------------------------- tables


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def _seed_stats(rows: list[dict[str, Any]], keys: list[str]) -> dict[str, dict[str, float]]:
    """Per metric: the mean over each seed's videos, then mean and (population) std over seeds."""
    out = {}
    for k in keys:
        per_seed: dict[int, list[float]] = {}
        for r in rows:
            if isinstance(r.get(k), (int, float)) and math.isfinite(r[k]):
                per_seed.setdefault(r["seed"], []).append(float(r[k]))
        if per_seed:
            out[k] = _mean_std([float(np.mean(v)) for v in per_seed.values()])
    return out


PAIRED_BY = ("subject", "motion", "template", "seed")  # a video and the base model's video of the same prompt
TRAINED_BY = ("subject", "motion", "seed")  # the videos of one training: their pairs are not independent
STDERR_TEXT = (
    "The standard error is over the trainings (each training's pairs averaged first: the prompts of one learned "
    "subject/motion and seed share its training), so it counts the run-to-run spread of learning; a difference "
    "within about two standard errors of 0 is not evidence either way."
)


def _vs_base(rows: list[dict[str, Any]], base_rows: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Per metric: the paired difference to the base model's videos (mean, standard error over the pairs and,
    ``stderr_by_group``, over the trainings: the pairs' means per subject, motion and seed)."""
    base = {tuple(r.get(k) for k in PAIRED_BY): r for r in base_rows}
    out = {}
    for k in keys:
        pairs = [
            (float(r[k]), float(b[k]), tuple(r.get(x) for x in TRAINED_BY))
            for r in rows
            if (b := base.get(tuple(r.get(x) for x in PAIRED_BY)))
            and all(isinstance(v.get(k), (int, float)) and math.isfinite(v[k]) for v in (r, b))
        ]
        if pairs:
            out[k] = paired_difference(*(list(column) for column in zip(*pairs, strict=True)))
    return out


def summarize(
    rows: list[dict[str, Any]], records: dict[str, dict[str, Any]], entries: list[Entry]
) -> dict[str, Any]:
    """Per entry and case: metrics (mean ± std over seeds), trainable parameters and training seconds; plus the
    DreamVideo checkpoint trade-off.

    Args:
        rows: one per video (``entry``, ``case``, ``seed``, ``group`` and metric fields).
        records: :func:`dreamvideo.methods.training_record` by ``"entry|kind|item|seed"``.
        entries: the benchmark's entries, in table order.
    """
    table = []
    for entry in entries:
        for case in entry.cases:
            sel = [
                r for r in rows if r["entry"] == entry.name and r["case"] == case and r["group"] != "tradeoff"
            ]
            if not sel:
                continue
            kinds = [
                k
                for k, part in (("subject", entry.subject), ("motion", entry.motion))
                if part is not None and (case == "joint" or case == k)
            ]
            params = seconds = 0.0
            for kind in kinds:
                recs = [v for k, v in records.items() if k.startswith(f"{entry.name}|{kind}|")]
                params += float(np.mean([r["trainable_parameters"] for r in recs])) if recs else 0.0
                seconds += float(np.mean([r["training_seconds"] for r in recs])) if recs else 0.0
            keys = [k for k, (_, cases) in METRICS.items() if case in cases]
            base_rows = [
                r for r in rows if r["entry"] == "base" and r["case"] == case and r["group"] != "tradeoff"
            ]
            table.append(
                {
                    "entry": entry.name,
                    "title": entry.title,
                    "group": entry.group,
                    "case": case,
                    "videos": len(sel),
                    "seeds": len({r["seed"] for r in sel}),
                    "metrics": _seed_stats(sel, keys),
                    "trainable_parameters": int(params),
                    "training_seconds": round(seconds, 1),
                    "vs_base": {} if entry.name == "base" else _vs_base(sel, base_rows, keys),
                }
            )
            dv = [
                r for r in rows if r["entry"] == "dreamvideo" and r["case"] == case and r["group"] == "method"
            ]
            if (
                entry.name == ENCODER_ENTRY
            ):  # zero-shot against DreamVideo's learned subjects, same prompts and seeds
                table[-1]["vs_dreamvideo"] = _vs_base(sel, dv, keys)
                table[-1]["per_subject_seconds"] = 0.0
            elif entry.group in ("method", "ablation") and entry.name not in ("base", "dreamvideo"):
                table[-1]["dreamvideo_minus"] = _vs_base(dv, sel, keys)  # DreamVideo's video minus this one's
    trade = [r for r in rows if r["group"] == "tradeoff"]
    points = []
    for i, j in sorted({(r["identity_step"], r["motion_step"]) for r in trade}):
        sel = [r for r in trade if r["identity_step"] == i and r["motion_step"] == j]
        points.append({"identity_step": i, "motion_step": j, "metrics": _seed_stats(sel, list(METRICS))})
    return {"table": table, "tradeoff": points, "track_agreement": track_agreement(rows)}


def track_agreement(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Spearman and Pearson correlation of the track-based motion fidelity with the oracle's, over the videos
    that have both (None when fewer than 3 do)."""
    both = [
        (r["track_motion_fidelity"], r["motion_fidelity"])
        for r in rows
        if all(
            isinstance(r.get(k), float) and math.isfinite(r[k])
            for k in ("track_motion_fidelity", "motion_fidelity")
        )
    ]
    if len(both) < 3:
        return None
    a, b = zip(*both, strict=True)
    return {"videos": len(both), "spearman": spearman(a, b), "pearson": pearson(a, b)}


def _cell_text(stats: dict[str, float] | None) -> str:
    """Mean ± std over seeds; the mean alone from one seed (no spread to show)."""
    if not stats:
        return "-"
    return f"{stats['mean']:.3f}" if stats["n"] == 1 else f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def _case_table(items: list[dict[str, Any]], case: str) -> list[str]:
    keys = [k for k, (_, cases) in METRICS.items() if case in cases]
    head = ["method", *(METRICS[k][0] for k in keys), "trainable params", "train time (s)", "videos", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for it in items:
        cells = [
            it["title"],
            *(_cell_text(it["metrics"].get(k)) for k in keys),
            f"{it['trainable_parameters']:,}",
            f"{it['training_seconds']:.0f}",
            str(it["videos"]),
            str(it["seeds"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _guidance(sampling: dict[str, Any]) -> str:
    scale = sampling["guidance_scale"]
    return "of the base" if scale is None else str(scale)


def format_markdown(results: dict[str, Any], entries: list[Entry]) -> str:
    """The tables of ``results.md``: subject, motion and joint customization, ablations, trade-off, analysis."""
    cfg, summary = results["config"], results["summary"]
    table = summary["table"]
    t = cfg["training"]
    lines = [
        "# DreamVideo benchmark",
        "",
        f"Base `{cfg['base']}`; subjects {[s['name'] for s in cfg['subjects']]}; motions "
        f"{[m['name'] for m in cfg['motions']]}; seeds {cfg['seeds']}; prompts per case "
        f"{ {c: len(p) for c, p in cfg['prompts'].items()} }; {cfg['sampling']['steps']} DDIM steps, guidance "
        f"{_guidance(cfg['sampling'])}, {cfg['sampling']['num_frames']} frames.",
        f"Training: textual inversion {t['ti_steps']} steps, identity adapter {t['identity_steps']}, motion adapter "
        f"{t['motion_steps']}; one-stage subject baselines {t['ti_steps'] + t['identity_steps']} steps, motion "
        f"baselines {t['motion_steps']} (per-method learning rates in results.json).",
        "Metrics: mean ± std over seeds of the per-seed mean over videos (the mean alone where one seed ran). "
        "CLIP-T/CLIP-I/T.Cons with the toy CLIP; subject fidelity, motion fidelity and background accuracy from the toy-world oracle. Train time: "
        "seconds spent in optimisation steps, all stages (subject + motion for joint; shared on a busy CPU, "
        "so compare within one run).",
        *_motion_metric_lines(results),
        *_merge_lines(results),
        "",
    ]
    titles = {
        "subject": "Subject customization",
        "motion": "Motion customization",
        "joint": "Joint customization",
    }
    for case in CASES:
        items = [it for it in table if it["case"] == case and it["group"] in ("base", "method")]
        if items:
            lines += [f"## {titles[case]}", "", *_case_table(items, case), ""]
    for field, title, text, head in (
        (
            "vs_base",
            "Difference to the base model (paired)",
            "Each video minus the base model's video of the same prompt template, subject, motion and seed; "
            "mean ± standard error (positive: higher than the base). " + STDERR_TEXT,
            "method",
        ),
        (
            "dreamvideo_minus",
            "DreamVideo against each baseline (paired)",
            "DreamVideo's video minus the baseline's video of the same prompt template, subject, motion and seed; "
            "mean ± standard error (positive: DreamVideo higher). " + STDERR_TEXT,
            "baseline",
        ),
    ):
        items = [it for it in table if it.get(field) and it["group"] == "method"]
        if items:
            lines += [f"## {title}", "", text, "", *_paired_table(items, field, _title_case, [head, "case"])]
    lines += _encoder_lines(table)
    ablations = [it for it in table if it["group"] == "ablation"]
    if ablations:
        lines += ["## Ablations of DreamVideo", ""]
        for case in CASES:
            items = [it for it in table if it["case"] == case and it["entry"] == "dreamvideo"]
            items += [it for it in ablations if it["case"] == case]
            if len(items) > len([i for i in items if i["entry"] == "dreamvideo"]):
                lines += [f"### {titles[case]}", "", *_case_table(items, case), ""]
        paired = [it for it in ablations if it.get("dreamvideo_minus")]
        if paired:
            lines += [
                "### DreamVideo against each ablation (paired)",
                "",
                "DreamVideo's video minus the ablation's video of the same prompt template, subject, motion and "
                "seed; mean ± standard error (positive: the removed or moved part helps). " + STDERR_TEXT,
                "",
                *_paired_table(paired, "dreamvideo_minus", _title_case, ["ablation", "case"]),
            ]
    if summary["tradeoff"]:
        keys = [
            k
            for k in ("subject_fidelity", "motion_fidelity", "clip_i", "clip_t")
            if any(k in p["metrics"] for p in summary["tradeoff"])
        ]
        lines += [
            "## Identity vs motion: DreamVideo adapter checkpoints (joint, first joint prompt)",
            "",
            "| identity step | motion step | " + " | ".join(METRICS[k][0] for k in keys) + " |",
            "|---|---|" + "---|" * len(keys),
        ]
        for p in summary["tradeoff"]:
            lines.append(
                f"| {p['identity_step']} | {p['motion_step']} | "
                + " | ".join(_cell_text(p["metrics"].get(k)) for k in keys)
                + " |"
            )
        lines.append("")
    if results.get("analysis"):
        a = results["analysis"]
        lines += [
            f"## Model analysis: relative weight change ||W1 - W0|| / ||W0|| after {a['settings']['steps']} "
            f"full fine-tuning steps (lr {a['settings']['lr']})",
            "",
            "| weights | layer type | change |",
            "|---|---|---|",
        ]
        for group, label in (("spatial", "spatial, on the subject"), ("temporal", "temporal, on the motion")):
            for kind, value in a[group].items():
                lines.append(f"| {label} | {kind} | {value:.5f} |")
        lines.append("")
    s = results["stats"]
    lines += [
        f"Cells: {s['trained']} trained, {s['training_skipped']} reused; {s['generated']} videos generated, "
        f"{s['generation_skipped']} reused. Wall time of this run: {results['seconds']} s.",
        "",
    ]
    return "\n".join(lines)


def _motion_metric_lines(results: dict[str, Any]) -> list[str]:
    """Which tracker and flow model gave Track MF and Dyn. deg., what was skipped, and the track score's
    agreement with the oracle on this run's videos."""
    mm = results.get("motion_metrics")
    if not mm:
        return []
    models = mm["models"]
    lines = [
        f"Track MF: DMT's motion fidelity on point tracks ({models['tracker'] or 'not computed'}); Dyn. deg.: "
        f"VBench's dynamic degree ({models['flow'] or 'not computed'}).",
        *mm["notes"],
    ]
    agree = results["summary"].get("track_agreement")
    if agree:
        lines.append(
            f"Track MF against the oracle's motion fidelity on the {agree['videos']} videos that have both: "
            f"Spearman {agree['spearman']:.3f}, Pearson {agree['pearson']:.3f}."
        )
    return lines


def _merge_lines(results: dict[str, Any]) -> list[str]:
    """Which runs a merged report unites, and how closely the videos they share agree."""
    if not results.get("merged_from"):
        return []
    check = results["merge_check"]
    gap = max(check["largest_difference"].values(), default=0.0)
    return [
        f"Merged from {', '.join(results['merged_from'])}; {check['shared_rows']} rows in more than one of them "
        f"(each counted once), their scores at most {gap:.1e} apart."
    ]


def _encoder_lines(table: list[dict[str, Any]]) -> list[str]:
    """The appearance encoder (zero-shot) minus DreamVideo's learned subjects, paired, and its training cost."""
    items = [it for it in table if it["entry"] == ENCODER_ENTRY]
    if not items:
        return []
    subject = next((it for it in items if it["case"] == "subject"), items[0])
    lines = [
        "## Appearance encoder (zero-shot) vs DreamVideo's learned subjects (paired)",
        "",
        f"One encoder trained once ({subject['training_seconds']:.0f} s of optimisation, "
        f"{subject['trainable_parameters']:,} trainable parameters), then 0 s per subject; DreamVideo learns each "
        "subject (its train time above). Each encoder video minus DreamVideo's video of the same prompt template, "
        "subject, motion and seed; mean ± standard error over the (subject, motion, seed) groups (DreamVideo's "
        "trainings).",
        "",
    ]
    if not any(it.get("vs_dreamvideo") for it in items):
        return [*lines, "(no DreamVideo rows to pair with in this run)", ""]
    return [*lines, *_paired_table(items, "vs_dreamvideo", lambda it: [it["case"]], ["case"])]


def _shown_stderr(diff: dict[str, float]) -> float:
    """The standard error the tables show: over the trainings where known (pairs of one training share it)."""
    return diff.get("stderr_by_group", diff["stderr"])


def _title_case(it: dict[str, Any]) -> list[str]:
    return [it["title"], it["case"]]


def _paired_table(items: list[dict[str, Any]], field: str, label, head: list[str]) -> list[str]:
    """A table of paired differences ``it[field]`` (mean ± stderr per metric) with ``label(it)`` columns."""
    keys = [k for k in METRICS if any(k in it.get(field, {}) for it in items)]
    lines = [
        "| " + " | ".join([*head, *(METRICS[k][0] for k in keys), "pairs / trainings"]) + " |",
        "|" + "---|" * (len(head) + len(keys) + 1),
    ]
    for it in items:
        d = it.get(field, {})
        cells = [f"{d[k]['mean']:+.3f} ± {_shown_stderr(d[k]):.3f}" if k in d else "-" for k in keys]
        pairs = max((v["n"] for v in d.values()), default=0)
        trainings = max((v.get("groups", 0) for v in d.values()), default=0)
        lines.append("| " + " | ".join([*label(it), *cells, f"{pairs} / {trainings}"]) + " |")
    return [*lines, ""]


# ----------------------------------------------------------------------------- plots


def plot_results(results: dict[str, Any], entries: list[Entry], folder: str | Path) -> None:
    """Metric bars per case (methods; ablations) and the identity-vs-motion trade-off scatter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = results["summary"]["table"]
    for case in CASES:
        for name, groups in (("metrics", ("base", "method")), ("ablations", ("ablation",))):
            items = [it for it in table if it["case"] == case and it["group"] in groups]
            if name == "ablations" and items:
                items = [it for it in table if it["case"] == case and it["entry"] == "dreamvideo"] + items
            keys = [k for k in METRICS if any(k in it["metrics"] for it in items)]
            if not items or not keys:
                continue
            fig, axes = plt.subplots(
                1, len(keys), figsize=(2.2 * len(keys) + 1, 0.28 * len(items) + 1.6), squeeze=False
            )
            for ax, k in zip(axes[0], keys, strict=True):
                values = [it["metrics"].get(k, {"mean": np.nan, "std": 0}) for it in items]
                ax.barh(
                    range(len(items)),
                    [v["mean"] for v in values],
                    xerr=[v["std"] for v in values],
                    color=["tab:red" if it["entry"] == "dreamvideo" else "tab:gray" for it in items],
                )
                ax.set_title(METRICS[k][0], fontsize=8)
                ax.set_yticks(range(len(items)))
                ax.set_yticklabels([it["title"] for it in items] if ax is axes[0][0] else [], fontsize=7)
                ax.invert_yaxis()
                ax.tick_params(axis="x", labelsize=7)
            fig.suptitle(f"{case} customization ({name})", fontsize=9)
            fig.tight_layout()
            fig.savefig(folder / f"{name}_{case}.png", dpi=110)
            plt.close(fig)
    joint = [it for it in table if it["case"] == "joint" and it["group"] in ("base", "method")]
    trade = results["summary"]["tradeoff"]
    x_key, y_key = (
        ("motion_fidelity", "subject_fidelity")
        if any("motion_fidelity" in it["metrics"] for it in joint)
        else ("clip_t", "clip_i")
    )
    if joint or trade:
        fig, ax = plt.subplots(figsize=(5.5, 4.2))
        for it in joint:
            if x_key in it["metrics"] and y_key in it["metrics"]:
                ax.scatter(it["metrics"][x_key]["mean"], it["metrics"][y_key]["mean"], color="tab:gray", s=18)
                ax.annotate(
                    it["title"], (it["metrics"][x_key]["mean"], it["metrics"][y_key]["mean"]), fontsize=6
                )
        pts = [p for p in trade if x_key in p["metrics"] and y_key in p["metrics"]]
        if pts:
            ax.scatter(
                [p["metrics"][x_key]["mean"] for p in pts],
                [p["metrics"][y_key]["mean"] for p in pts],
                color="tab:red",
                s=24,
                label="DreamVideo checkpoints (identity step / motion step)",
            )
            for p in pts:
                ax.annotate(
                    f"{p['identity_step']}/{p['motion_step']}",
                    (p["metrics"][x_key]["mean"], p["metrics"][y_key]["mean"]),
                    fontsize=7,
                    color="tab:red",
                )
            ax.legend(fontsize=7)
        ax.set_xlabel(METRICS[x_key][0])
        ax.set_ylabel(METRICS[y_key][0])
        ax.set_title("joint customization: identity vs motion", fontsize=9)
        fig.tight_layout()
        fig.savefig(folder / "tradeoff.png", dpi=110)
        plt.close(fig)


# ----------------------------------------------------------------------------- writing and merging runs


def write_report(results: dict[str, Any], entries: list[Entry], out: Path) -> None:
    """``results.json``, ``results.md`` and ``plots/`` of a run (or of merged runs) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(results, out / "results.json")
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(format_markdown(results, entries))
    plot_results(results, entries, out / "plots")


# What two pieces of one grid must share; the pieces may differ in seeds, entries, trade-off and analysis.
SAME_GRID = (
    "base",
    "clip",
    "oracle",
    "subjects",
    "motions",
    "prompts",
    "training",
    "method_settings",
    "sampling",
    "motion_metrics",
    "motion_references",
)
# Scores of a video remade on another machine differ by float noise (measured: 4e-3 in a flow magnitude of about
# 5, at most 2e-4 in the other scores); another video differs by far more.
MERGE_TOLERANCE = {"rel_tol": 1e-2, "abs_tol": 1e-3}
# A row: one video in one place of the grid (a video can stand in several: the base's motion video in every motion's).
ROW_KEY = (
    "cell",
    "entry",
    "case",
    "group",
    "seed",
    "subject",
    "motion",
    "template",
    "identity_step",
    "motion_step",
)


def merge_results(paths: list[Path]) -> tuple[dict[str, Any], list[Entry]]:
    """The ``results.json`` of pieces of one grid (other seeds, other entries; run on other machines) as the
    results of one run over all of them: rows and training records united, tables and paired differences
    computed afresh. A video in several pieces is one row, and must have the same scores in each.

    Raises:
        BenchmarkError: naming the file, when one is not a benchmark's results or comes from another grid.
    """
    if not paths:
        raise BenchmarkError("--merge: give at least one results.json")
    pieces = []
    for path in paths:
        data = read_json(path)
        if not isinstance(data, dict) or not all(k in data for k in ("config", "rows", "training", "stats")):
            raise BenchmarkError(
                f"{path}: not a benchmark's results.json (needs config, rows, training, stats)"
            )
        pieces.append((path, data))
    first_path, first = pieces[0]
    config = dict(first["config"])
    rows: dict[tuple, dict[str, Any]] = {}
    training: dict[str, Any] = {}
    stats = dict.fromkeys(first["stats"], 0)
    shared, gap = 0, {}  # videos in several pieces; their largest score difference per metric
    for path, data in pieces:
        for key in SAME_GRID:
            if data["config"].get(key) != first["config"].get(key):
                raise BenchmarkError(
                    f"{path}: config {key!r} differs from {first_path}'s: not a piece of the same grid"
                )
        config["seeds"] = sorted(set(config["seeds"]) | set(data["config"]["seeds"]))
        ablations = set(config["ablations"]) | set(data["config"]["ablations"])
        config["ablations"] = [name for name in builtin_ablations() if name in ablations]  # the tables' order
        if config["methods"] is not None:  # None: all methods
            methods = data["config"]["methods"]
            config["methods"] = None if methods is None else list(dict.fromkeys(config["methods"] + methods))
        for key in ("tradeoff", "analysis"):
            config[key] = config[key] or data["config"][key]
        for row in data["rows"]:
            key = tuple(row.get(k) for k in ROW_KEY)
            seen = rows.setdefault(key, row)
            if seen is row:
                continue
            shared += 1
            for k, v in row.items():
                if isinstance(v, float) and isinstance(seen.get(k), float):
                    gap[k] = max(gap.get(k, 0.0), abs(v - seen[k]))
                    if not math.isclose(seen[k], v, **MERGE_TOLERANCE):
                        raise BenchmarkError(
                            f"{path}: video {row['cell']} ({row['entry']}) has another {k} than before "
                            f"({v:.6f} against {seen[k]:.6f}): not the same cell"
                        )
        training |= data["training"]
        for key, value in data["stats"].items():
            stats[key] = stats.get(key, 0) + value
    entries = BenchmarkConfig(**config).entries()  # validated when each piece ran
    analysis = next((d["analysis"] for _, d in pieces if d.get("analysis")), None)
    motion = next((d["motion_metrics"] for _, d in pieces if d.get("motion_metrics")), None)
    results = {
        "config": config,
        "stats": stats,
        "rows": list(rows.values()),
        "training": training,
        "analysis": analysis,
        "motion_metrics": motion,
        # a merged piece names its own pieces: the list says which runs the rows come from
        "merged_from": [name for path, d in pieces for name in d.get("merged_from", [str(path)])],
        "merge_check": {"shared_rows": shared, "largest_difference": gap},
    }
    results["summary"] = summarize(results["rows"], training, entries)
    results["seconds"] = round(sum(float(d.get("seconds", 0)) for _, d in pieces), 1)
    return results, entries
