"""What the app's buttons do, as plain functions over the library (no Gradio here, no training logic of its own).

Learning validates the uploads with the library's loaders before queueing (a corrupt photo is refused at once,
nothing is left in the workspace), then trains in the background job with :func:`dreamvideo.methods.learn_subject`
/ :func:`~dreamvideo.methods.learn_motion` using the same settings builders as the CLI. Generating loads the subject
and motion as ``dreamvideo generate`` does and writes the same files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamvideo import commands
from dreamvideo.app.jobs import Job, JobQueue
from dreamvideo.app.workspace import Workspace, WorkspaceError
from dreamvideo.fileio import DreamVideoError, read_json
from dreamvideo.training import StageConfig

VALIDATION_SIZE = 16  # decoding every upload at the smallest accepted size finds unreadable files quickly


@dataclass
class AppContext:
    """Everything the app's handlers share.

    Args:
        workspace: the :class:`~dreamvideo.app.workspace.Workspace`.
        base: the base model (``"toy"``, a folder or a hub id), as ``--base``.
        device: torch device name (``None``: cuda if available, else cpu).
        jobs: the background :class:`~dreamvideo.app.jobs.JobQueue` (created from the workspace if omitted).
    """

    workspace: Workspace
    base: str = "toy"
    device: str | None = None
    jobs: JobQueue = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.jobs is None:
            self.jobs = JobQueue(self.workspace.root / "jobs.json", on_finish=self._clean_up)

    def _clean_up(self, job: Job) -> None:
        """After a job: a failed, cancelled or interrupted one leaves neither its partial output nor its uploads."""
        if job.state != "done":
            self.workspace.discard(job.id)

    @property
    def is_toy(self) -> bool:
        return str(self.base) in ("toy", "dreamvideo-toy")

    def load_pipe(self):
        """A fresh base pipeline (learning adds a token and adapters to it, so each job gets its own)."""
        from dreamvideo.distributed import local_device
        from dreamvideo.pipeline import DreamVideoPipeline

        pipe = DreamVideoPipeline.from_pretrained(self.base, device=local_device(self.device))
        pipe.set_progress_bar_config(disable=True)
        return pipe


# ----------------------------------------------------------------------------------------------- learning
@dataclass
class SubjectRequest:
    """The Subjects tab's form. Step counts and learning rates are the CLI's flags of the same names."""

    name: str
    images: list[str]
    class_word: str
    token: str = "<sks>"
    masks: list[str] = field(default_factory=list)
    ti_steps: int = 3000
    ti_lr: float = 1e-4
    adapter_steps: int = 1000
    adapter_lr: float = 1e-5
    batch_size: int = 4
    checkpoint_every: int = 100
    preview_every: int = 0
    preview_steps: int = 25
    seed: int = 0


@dataclass
class MotionRequest:
    """The Motions tab's form (``caption``: one caption for every video; empty: from the file names)."""

    name: str
    videos: list[str]
    caption: str = ""
    num_frames: int = 16
    steps: int = 2000
    lr: float = 1e-5
    batch_size: int = 1
    checkpoint_every: int = 100
    short_videos: str = "loop"
    preview_every: int = 0
    preview_steps: int = 25
    seed: int = 0


def _require(files: list[str], what: str) -> list[str]:
    files = [str(f) for f in files or [] if f]
    if not files:
        raise WorkspaceError(f"upload at least one {what}")
    return files


def _stage(steps: int, lr: float, batch_size: int, every: int, seed: int) -> StageConfig:
    return StageConfig(
        steps=int(steps),
        lr=float(lr),
        batch_size=int(batch_size),
        checkpoint_every=max(1, int(every)),
        seed=int(seed),
    )


def _preview(every: int, steps: int, num_frames: int, seed: int):
    from dreamvideo.methods import PreviewSettings

    return PreviewSettings(
        every=max(0, int(every)), steps=int(steps), num_frames=int(num_frames), seed=int(seed)
    )


def _staged_job(
    ctx: AppContext, kind: str, name: str, uploads: dict[str, list[str]], check: Callable[[Path], Path]
) -> tuple[Job, Path]:
    """A new job with its uploads staged and checked; nothing is left behind when the check fails.

    Args:
        ctx: the app context.
        kind: ``"subject"`` or ``"motion"``.
        name: the checked library name.
        uploads: the uploaded files by the sub-folder they are staged in.
        check: reads the staged folder (raising on bad input) and returns the folder the learner reads.

    Returns:
        The job (its output folder set) and the folder the learner reads.
    """
    ws = ctx.workspace
    job = Job(id=ctx.jobs.new_id(), kind=kind, name=name)
    try:
        folder = check(ws.stage_uploads(job.id, uploads))
    except Exception:
        ws.discard(job.id)
        raise
    job.output = str(ws.work_dir(job.id) / name)
    return job, folder


def submit_subject(ctx: AppContext, req: SubjectRequest) -> Job:
    """Validate a subject request and its uploads, then queue its training; raise with the library's message.

    Returns:
        The queued :class:`~dreamvideo.app.jobs.Job`.
    """
    from dreamvideo.data import load_subject_images

    ws = ctx.workspace
    name = ws.check_name("subject", req.name)
    images = _require(req.images, "photo of the subject")
    if not (req.class_word or "").strip():
        raise WorkspaceError("give a class word (one word such as 'dog')")

    def check(folder: Path) -> Path:
        load_subject_images(folder, VALIDATION_SIZE)  # every file decoded and masks matched before queueing
        return folder

    job, folder = _staged_job(ctx, "subject", name, {"images": images, "masks": list(req.masks or [])}, check)

    def task(job: Job) -> Path:
        from dreamvideo.methods import learn_subject

        pipe = ctx.load_pipe()
        settings = commands.subject_settings(
            req.token.strip() or "<sks>",
            req.class_word.strip(),
            _stage(req.ti_steps, req.ti_lr, req.batch_size, req.checkpoint_every, req.seed),
            _stage(req.adapter_steps, req.adapter_lr, req.batch_size, req.checkpoint_every, req.seed),
        )
        learn_subject(
            pipe,
            folder,
            job.output,
            settings,
            progress=False,
            preview=_preview(req.preview_every, req.preview_steps, 8, req.seed),
        )
        return ws.publish("subject", name, job.id)

    return _submit(ctx, job, task)


def submit_motion(ctx: AppContext, req: MotionRequest) -> Job:
    """Validate a motion request and its videos, then queue its training; raise with the library's message."""
    from dreamvideo.methods.motion import MotionSettings, load_motion_data

    ws = ctx.workspace
    name = ws.check_name("motion", req.name)
    videos = _require(req.videos, "video of the motion")
    if req.short_videos not in ("loop", "error"):
        raise WorkspaceError(f"short videos: 'loop' or 'error', not {req.short_videos!r}")
    caption = req.caption.strip() or None

    def check(folder: Path) -> Path:
        folder = folder / "videos"
        settings = MotionSettings(num_frames=int(req.num_frames), short_videos=req.short_videos)
        load_motion_data(folder, VALIDATION_SIZE, settings, caption)  # unreadable or too short: refused now
        return folder

    job, folder = _staged_job(ctx, "motion", name, {"videos": videos}, check)

    def task(job: Job) -> Path:
        from dreamvideo.methods import learn_motion

        pipe = ctx.load_pipe()
        settings = commands.motion_settings(
            pipe,
            _stage(req.steps, req.lr, req.batch_size, req.checkpoint_every, req.seed),
            num_frames=int(req.num_frames),
            appearance_guidance=pipe.image_encoder is not None,
            short_videos=req.short_videos,
        )
        learn_motion(
            pipe,
            folder,
            job.output,
            settings,
            captions=caption,
            progress=False,
            preview=_preview(req.preview_every, req.preview_steps, req.num_frames, req.seed),
        )
        return ws.publish("motion", name, job.id)

    return _submit(ctx, job, task)


def _submit(ctx: AppContext, job: Job, task) -> Job:
    try:
        return ctx.jobs.submit(job, task)
    except Exception:
        ctx.workspace.discard(job.id)
        raise


def previews(job: Job) -> list[Path]:
    """The preview videos a job has written so far (newest last; not the hidden ones still being written)."""
    if not job.output:
        return []
    return sorted(p for p in (Path(job.output) / "previews").glob("*.mp4") if not p.name.startswith("."))


# ----------------------------------------------------------------------------------------------- generating
@dataclass
class GenerateRequest:
    """The Generate tab's form; ``subject`` / ``motion`` are library names (empty: none)."""

    prompt: str
    subject: str = ""
    motion: str = ""
    seed: int = 0
    frames: int = 16
    steps: int = 50
    guidance_scale: float | None = None  # None: the base's default
    appearance_image: str | None = None
    appearance_strength: float = 1.0
    appearance_strength_uncond: float = 1.0
    subject_scale: float = 1.0
    motion_scale: float = 1.0
    subject_step: int | None = None
    motion_step: int | None = None
    fps: int = 8


@dataclass
class Generated:
    """A generated video: its files and frames (F, H, W, 3) uint8."""

    video: Path
    gif: Path
    sheet: Path
    frames: np.ndarray
    label: str


def _library_path(ctx: AppContext, kind: str, name: str) -> Path | None:
    if not name:
        return None
    path = ctx.workspace.folder(kind, name)
    if not path.is_dir():
        raise WorkspaceError(f"no {kind} named '{name}' in the library")
    return path


def _render(ctx: AppContext, req: GenerateRequest, subject: bool, motion: bool) -> np.ndarray:
    if not (req.prompt or "").strip():
        raise WorkspaceError("write a prompt")
    appearance = commands.open_appearance_image(req.appearance_image) if motion else None
    pipe = ctx.load_pipe()
    commands.load_learned(
        pipe,
        _library_path(ctx, "subject", req.subject) if subject else None,
        req.subject_step,
        float(req.subject_scale),
        _library_path(ctx, "motion", req.motion) if motion else None,
        req.motion_step,
        float(req.motion_scale),
    )
    return pipe(
        req.prompt,
        num_frames=int(req.frames),
        num_inference_steps=int(req.steps),
        guidance_scale=req.guidance_scale,
        appearance_image=appearance,
        appearance_strength=float(req.appearance_strength),
        appearance_strength_uncond=float(req.appearance_strength_uncond),
        generator=torch.Generator().manual_seed(int(req.seed)),
        progress=False,
    ).frames[0]


def _label(req: GenerateRequest, subject: bool, motion: bool) -> str:
    parts = [
        f"subject {req.subject}" if subject and req.subject else "",
        f"motion {req.motion}" if motion and req.motion else "",
    ]
    return f"{' + '.join(p for p in parts if p) or 'base model'}, seed {req.seed}: {req.prompt}"


def generate(ctx: AppContext, req: GenerateRequest) -> Generated:
    """Generate one video as ``dreamvideo generate`` does; write the .mp4, .gif and a contact-sheet PNG."""
    from dreamvideo.video_io import contact_sheet

    frames = _render(ctx, req, True, True)
    video = ctx.workspace.new_video(f"{req.subject or 'base'}-{req.motion or 'none'}-seed{req.seed}")
    gif = commands.write_both_formats(frames, video, req.fps)
    sheet = video.with_name(video.stem + "-sheet.png")
    label = _label(req, True, True)
    contact_sheet([(label, frames)], sheet, scale=2)
    return Generated(video, gif, sheet, frames, label)


def compare(ctx: AppContext, req: GenerateRequest) -> tuple[Generated, Generated, list[dict[str, Any]]]:
    """The same prompt and seed without and with the chosen subject/motion, one contact sheet, toy metrics.

    Returns:
        ``(base, customized, metrics rows)``; the rows are empty unless the base is the toy model.
    """
    from dreamvideo.video_io import contact_sheet

    if not (req.subject or req.motion):
        raise WorkspaceError("choose a subject and/or a motion to compare against the base model")
    plain = _render(ctx, req, False, False)
    custom = _render(ctx, req, True, True)
    stem = f"compare-{req.subject or 'none'}-{req.motion or 'none'}-seed{req.seed}"
    out = []
    for tag, frames, on in (("base", plain, False), ("custom", custom, True)):
        video = ctx.workspace.new_video(f"{stem}-{tag}")
        gif = commands.write_both_formats(frames, video, req.fps)
        out.append(Generated(video, gif, video.with_name(f"{stem}-sheet.png"), frames, _label(req, on, on)))
    sheet = ctx.workspace.new_video(f"{stem}-sheet").with_suffix(".png")
    contact_sheet([(g.label, g.frames) for g in out], sheet, scale=2)
    for g in out:
        g.sheet = sheet
    rows = toy_metrics(ctx, req, out[0].frames, out[1].frames) if ctx.is_toy else []
    return out[0], out[1], rows


# ----------------------------------------------------------------------------------------------- metrics
def _reference_subject(path: Path) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """The subject's training photos and masks (masks from the oracle's segmentation where none were given)."""
    from PIL import Image

    from dreamvideo.toy import oracle

    info = read_json(path / "subject.json")
    images, masks = [], []
    for name in info.get("images", []):
        file = Path(name)
        if not file.is_file():
            return None
        with Image.open(file) as img:
            image = np.asarray(img.convert("RGB").resize((64, 64)))
        mask_file = file.parent.parent / "masks" / f"{file.stem}.png"
        if mask_file.is_file():
            with Image.open(mask_file) as m:
                mask = np.asarray(m.convert("L").resize((64, 64), Image.Resampling.NEAREST)) > 127
        else:
            mask = oracle.segment_foreground(image[None])[0]
        if mask.any():
            images.append(image)
            masks.append(mask)
    return (images, masks) if images else None


def _reference_motion(path: Path, num_frames: int) -> list[np.ndarray] | None:
    from dreamvideo.data import load_motion_videos

    files = [Path(v) for v in read_json(path / "motion.json").get("videos", [])]
    if not files or not all(f.exists() for f in files):
        return None
    videos = []
    for f in files:
        data = load_motion_videos(f, 64)
        videos.append(((data.videos[0].permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).byte().numpy())
    return videos


def toy_metrics(
    ctx: AppContext, req: GenerateRequest, plain: np.ndarray, custom: np.ndarray
) -> list[dict[str, Any]]:
    """The toy world's oracle scores (as ``dreamvideo demo`` computes them) of the base and customized videos.

    Subject fidelity against the subject's training photos, motion fidelity against the motion's training videos,
    temporal consistency, and the toy CLIP's text alignment (CLIP-T, the token replaced by its class word).
    """
    from dreamvideo.metrics import ClipScorer
    from dreamvideo.toy import oracle

    subject = _library_path(ctx, "subject", req.subject)
    motion = _library_path(ctx, "motion", req.motion)
    refs = _reference_subject(subject) if subject else None
    ref_videos = _reference_motion(motion, len(custom)) if motion else None
    token = class_word = None
    if subject:
        info = read_json(subject / "subject.json")
        token, class_word = info.get("token"), info.get("class_word")
    clip = ClipScorer.from_pretrained("toy", device="cpu")
    rows = []
    for case, frames in (("base model", plain), ("customized", custom)):
        row: dict[str, Any] = {"video": case}
        if refs:
            row["subject fidelity"] = round(oracle.subject_fidelity(frames, *refs), 4)
        if ref_videos:
            row["motion fidelity"] = round(oracle.motion_fidelity(frames, ref_videos), 4)
        row["temporal consistency"] = round(oracle.temporal_consistency(frames), 4)
        row["CLIP-T"] = round(clip.clip_t(frames, req.prompt, placeholder=token, class_word=class_word), 4)
        rows.append(row)
    return rows


def describe(ctx: AppContext, kind: str, name: str) -> dict[str, Any]:
    """A library entry's JSON (token, class word, steps done, ...) for the page."""
    marker = "subject.json" if kind == "subject" else "motion.json"
    path = ctx.workspace.folder(kind, name) / marker
    if not path.is_file():
        raise DreamVideoError(f"no {kind} named '{name}' in the library")
    return read_json(path)


__all__ = [
    "AppContext",
    "SubjectRequest",
    "MotionRequest",
    "GenerateRequest",
    "Generated",
    "submit_subject",
    "submit_motion",
    "generate",
    "compare",
    "toy_metrics",
    "previews",
    "describe",
]
