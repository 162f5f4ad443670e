"""``dreamvideo demo``: the whole DreamVideo method on the built-in toy model, in minutes on a CPU.

Learns a bundled novel subject from its photos and a bundled novel motion from its videos, generates subject-only,
motion-only and joint videos plus the plain base model for the same prompts and seeds, and scores everything with
the toy world's oracle and the toy CLIP.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamvideo import adapters as ad
from dreamvideo.fileio import DreamVideoError, write_json
from dreamvideo.metrics import paired_difference
from dreamvideo.toy import oracle, world

DEMO_MARKER = "demo.json"


@dataclass
class DemoConfig:
    """What the demo learns and generates. Step counts and learning rates are tuned for the tiny toy model."""

    subject: str = "totem"
    motion: str = "pendulum"
    subject_images: int = 5
    motion_videos: int = 3
    ti_steps: int = 200
    ti_lr: float = 5e-3
    identity_steps: int = 150
    identity_lr: float = 1e-3
    motion_steps: int = 250
    motion_lr: float = 3e-3
    batch_size: int = 4
    motion_batch_size: int = 2
    sample_steps: int = 20
    guidance_scale: float | None = None  # None: the base's default
    seeds: tuple[int, ...] = (0, 1, 2)  # of the subject and joint cases
    backgrounds: tuple[str, ...] = ("blue sky", "yellow sand")  # of the subject and joint cases
    motion_seeds: tuple[int, ...] = (0, 1, 2, 3, 4, 5)  # motion fidelity is noisier: more pairs
    motion_scenes: tuple[tuple[str, str], ...] = (  # (sprite, background) of the motion cases
        ("red circle", "blue sky"),
        ("white star", "yellow sand"),
        ("blue square", "green grass"),
        ("green triangle", "gray road"),
    )
    base: str = "toy"  # or a folder holding a retrained toy-world model (python -m dreamvideo.toy.pretrain)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Case:
    case: str  # base-subject, subject, base-motion, motion, base-joint, joint
    prompt: str
    seed: int
    subject: bool
    motion: bool
    appearance: bool = False


def _cases(cfg: DemoConfig, token: str, class_word: str) -> list[Case]:
    cases = []
    for seed in cfg.seeds:
        for bg in cfg.backgrounds:
            custom = f"a {token} {class_word} moves on {bg}"
            plain = f"a {class_word} moves on {bg}"
            cases += [
                Case("base-subject", plain, seed, False, False),
                Case("subject", custom, seed, True, False),
            ]
            cases += [
                Case("base-joint", plain, seed, False, False),
                Case("joint", custom, seed, True, True, True),
            ]
    for seed in cfg.motion_seeds:
        for sprite, bg in cfg.motion_scenes:
            prompt = f"a {sprite} moves on {bg}"
            cases += [
                Case("base-motion", prompt, seed, False, False),
                Case("motion", prompt, seed, False, True),
            ]
    return cases


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / DEMO_MARKER).is_file() and not overwrite:
            raise DreamVideoError(
                f"{out}: exists and is not a demo folder; choose another --out or pass --overwrite"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _stage(steps: int, lr: float, batch_size: int):
    """A training stage with a checkpoint half-way and at the end."""
    from dreamvideo.training import StageConfig

    return StageConfig(steps=steps, lr=lr, batch_size=batch_size, checkpoint_every=max(1, steps // 2))


def run_demo(
    out: str | Path,
    cfg: DemoConfig | None = None,
    device: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the demo into ``out`` and return its summary (also written to ``out/metrics.json``)."""
    from dreamvideo.methods import MotionSettings, SubjectSettings, learn_motion, learn_subject
    from dreamvideo.pipeline import DreamVideoPipeline
    from dreamvideo.video_io import contact_sheet, write_video

    cfg = cfg or DemoConfig()
    out = Path(out)
    _prepare_out(out, overwrite)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    phases: dict[str, float] = {}
    start = time.perf_counter()

    def phase(name: str, t0: float) -> None:
        phases[name] = round(time.perf_counter() - t0, 1)
        print(f"[demo] {name}: {phases[name]} s")

    t0 = time.perf_counter()
    subject_dir = world.write_subject_folder(cfg.subject, out / "data" / "subject", n=cfg.subject_images)
    motion_dir = world.write_motion_folder(cfg.motion, out / "data" / "motion", n=cfg.motion_videos)
    class_word = world.NOVEL_SUBJECTS[cfg.subject].class_word
    token = "<sks>"
    phase("write bundled data", t0)

    t0 = time.perf_counter()
    pipe = DreamVideoPipeline.from_pretrained(cfg.base, device=device)
    settings = SubjectSettings(
        token=token,
        init_word=class_word,
        caption="a {token} {word} stays still",
        textual_inversion=_stage(cfg.ti_steps, cfg.ti_lr, cfg.batch_size),
        identity=_stage(cfg.identity_steps, cfg.identity_lr, cfg.batch_size),
    )
    learn_subject(pipe, subject_dir, out / "subject", settings, progress=progress)
    phase("learn subject", t0)

    t0 = time.perf_counter()
    pipe = DreamVideoPipeline.from_pretrained(cfg.base, device=device)
    motion_settings = MotionSettings(
        num_frames=world.NUM_FRAMES,
        stage=_stage(cfg.motion_steps, cfg.motion_lr, cfg.motion_batch_size),
    )
    learn_motion(pipe, motion_dir, out / "motion", motion_settings, progress=progress)
    phase("learn motion", t0)

    t0 = time.perf_counter()
    pipe = DreamVideoPipeline.from_pretrained(cfg.base, device=device)
    pipe.load_subject(out / "subject")
    pipe.load_motion(out / "motion")
    pipe.set_progress_bar_config(disable=True)
    refs = world.subject_images(cfg.subject, n=cfg.subject_images)
    ref_images = [img for img, _ in refs]
    ref_masks = [mask for _, mask in refs]
    ref_videos = [frames for frames, _ in world.motion_videos(cfg.motion, n=cfg.motion_videos)]
    cases = _cases(cfg, token, class_word)
    videos: dict[str, np.ndarray] = {}
    rows = []
    from tqdm.auto import tqdm

    generated: dict[tuple, np.ndarray] = {}  # the base model's video for a prompt and seed is made once
    for i, case in enumerate(tqdm(cases, desc="generate", disable=not progress)):
        key = (case.prompt, case.seed, case.subject, case.motion, case.appearance)
        if key not in generated:
            ad.enable_adapter(pipe.unet, "identity", case.subject)
            ad.enable_adapter(pipe.unet, "motion", case.motion)
            generated[key] = pipe(
                case.prompt,
                num_frames=world.NUM_FRAMES,
                num_inference_steps=cfg.sample_steps,
                guidance_scale=cfg.guidance_scale,
                appearance_image=ref_images[0] if case.appearance else None,
                generator=torch.Generator().manual_seed(case.seed),
                progress=False,
            ).frames[0]
        frames = generated[key]
        name = f"{i:02d}_{case.case}_seed{case.seed}"
        write_video(frames, out / "videos" / f"{name}.mp4")
        write_video(frames, out / "videos" / f"{name}.gif")
        videos[name] = frames
        row = asdict(case) | {"video": f"videos/{name}.mp4"}
        bg = next(b for b in world.BACKGROUNDS if b in case.prompt)
        row["background_ok"] = oracle.background_class(frames) == bg
        row["oracle_temporal_consistency"] = oracle.temporal_consistency(frames)
        row["subject_fidelity"] = oracle.subject_fidelity(frames, ref_images, ref_masks)
        row["motion_fidelity"] = oracle.motion_fidelity(frames, ref_videos)
        rows.append(row)
    phase("generate", t0)

    t0 = time.perf_counter()
    _add_clip_metrics(rows, videos, ref_images, token, class_word, cfg.base)
    summary = _summarize(rows)
    sheet_rows = [(f"{r['case']} s{r['seed']}: {r['prompt']}", videos[Path(r["video"]).stem]) for r in rows]
    contact_sheet(sheet_rows, out / "contact_sheet.png", scale=2)
    phase("metrics and contact sheet", t0)
    phases["total"] = round(time.perf_counter() - start, 1)
    result = {"config": asdict(cfg), "device": device, "seconds": phases, "summary": summary, "rows": rows}
    write_json(result, out / "metrics.json")
    (out / "metrics.md").write_text(format_markdown(result))
    write_json({"finished": True, "seconds": phases["total"]}, out / DEMO_MARKER)
    return result


def _add_clip_metrics(
    rows: list[dict],
    videos: dict[str, np.ndarray],
    refs: list[np.ndarray],
    token: str,
    class_word: str,
    base: str = "toy",
) -> None:
    from dreamvideo.metrics import ClipScorer

    if base == "toy":
        clip = ClipScorer.from_pretrained("toy", device="cpu")
    else:  # a toy-layout folder: clip/ next to its tokenizer and feature extractor
        clip = ClipScorer.from_pretrained(
            Path(base) / "clip", Path(base) / "tokenizer", Path(base) / "feature_extractor", device="cpu"
        )
    for row in rows:
        frames = videos[Path(row["video"]).stem]
        row["clip_t"] = clip.clip_t(frames, row["prompt"], placeholder=token, class_word=class_word)
        row["clip_i"] = clip.clip_i(frames, refs)
        row["t_cons"] = clip.temporal_consistency(frames)


METRICS = ("subject_fidelity", "motion_fidelity", "background_ok", "clip_t", "clip_i", "t_cons")


def _summarize(rows: list[dict]) -> dict[str, Any]:
    by_case: dict[str, dict[str, float]] = {}
    for case in dict.fromkeys(r["case"] for r in rows):
        sel = [r for r in rows if r["case"] == case]
        by_case[case] = {m: round(float(np.mean([float(r[m]) for r in sel])), 4) for m in METRICS} | {
            "n": len(sel)
        }
    checks = {
        "subject fidelity, subject vs base": ("subject", "base-subject", "subject_fidelity"),
        "subject fidelity, joint vs base": ("joint", "base-joint", "subject_fidelity"),
        "motion fidelity, motion vs base": ("motion", "base-motion", "motion_fidelity"),
        "motion fidelity, joint vs base": ("joint", "base-joint", "motion_fidelity"),
    }
    result = {}
    for name, (case, base, metric) in checks.items():
        # paired by prompt and seed: the standard error of the mean difference says how much is noise
        diff = paired_difference(
            [float(r[metric]) for r in rows if r["case"] == case],
            [float(r[metric]) for r in rows if r["case"] == base],
        )
        custom, plain = by_case[case][metric], by_case[base][metric]
        result[name] = {
            "customized": custom,
            "base": plain,
            "better": custom > plain,
            "difference": round(diff["mean"], 4),
            "stderr": round(diff["stderr"], 4),
        }
    return {"by_case": by_case, "customized_vs_base": result}


def format_markdown(result: dict[str, Any]) -> str:
    lines = [
        "# dreamvideo demo: oracle and toy-CLIP metrics",
        "",
        "| case | n | subject fid. | motion fid. | background ok | CLIP-T | CLIP-I | T.Cons |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, m in result["summary"]["by_case"].items():
        lines.append(
            f"| {case} | {m['n']} | {m['subject_fidelity']:.3f} | {m['motion_fidelity']:.3f} | "
            f"{m['background_ok']:.2f} | {m['clip_t']:.3f} | {m['clip_i']:.3f} | {m['t_cons']:.3f} |"
        )
    lines += [
        "",
        "| check | customized | base | difference ± s.e. (paired) | better |",
        "|---|---|---|---|---|",
    ]
    for name, c in result["summary"]["customized_vs_base"].items():
        lines.append(
            f"| {name} | {c['customized']:.3f} | {c['base']:.3f} | {c['difference']:+.3f} ± {c['stderr']:.3f} "
            f"| {'yes' if c['better'] else 'NO'} |"
        )
    lines += [
        "",
        "Wall time per phase (s): " + ", ".join(f"{k} {v}" for k, v in result["seconds"].items()),
        f"Device: {result['device']}. DINO-I is omitted on the toy world (no DINO model).",
        "",
    ]
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    from dreamvideo.threads import MAX_DEFAULT_THREADS, apply_threads, available_cores

    if getattr(args, "threads", None) is None and not os.environ.get("OMP_NUM_THREADS"):
        # the demo is meant to run alone: every core (not the shared-machine default of half of them)
        apply_threads(min(MAX_DEFAULT_THREADS, available_cores()))
    cfg = DemoConfig(base=args.base)
    if args.fast:  # smoke-test sizes
        cfg = DemoConfig(
            ti_steps=4,
            identity_steps=4,
            motion_steps=4,
            sample_steps=3,
            seeds=(0,),
            motion_seeds=(0,),
            base=args.base,
        )
    result = run_demo(args.out, cfg, device=args.device, progress=not args.quiet, overwrite=args.overwrite)
    print(format_markdown(result))
    print(f"videos, contact_sheet.png, metrics.json and metrics.md written to {args.out}")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    from dreamvideo.validate import POSITIVE

    p = subparsers.add_parser(
        "demo", help="learn a bundled subject and motion on the toy model and generate videos"
    )
    p.add_argument(
        "--out", type=Path, default=Path("dreamvideo_demo"), help="output folder (default dreamvideo_demo)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a folder that is not an earlier demo")
    p.add_argument("--fast", action="store_true", help="a few steps only (smoke test)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument(
        "--base", default="toy", help="the toy model (default) or a retrained toy-world model folder"
    )
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--threads",
        type=POSITIVE,
        default=None,
        help="CPU threads of torch (default: every core, at most 8: the demo runs alone; OMP_NUM_THREADS wins)",
    )
    p.set_defaults(func=cmd_demo)
