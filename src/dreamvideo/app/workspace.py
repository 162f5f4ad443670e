"""The app's workspace folder: a library of learned subjects and motions in the CLI's folder formats.

Layout (``ROOT`` is ``--workspace``)::

    ROOT/subjects/NAME/     a finished subject (subject.json, learned_embeds, identity adapter, checkpoints/, previews/)
    ROOT/motions/NAME/      a finished motion (motion.json, motion adapter, checkpoints/, previews/)
    ROOT/uploads/JOB/       the photos / videos a job learned from (kept: subject.json and motion.json name them)
    ROOT/videos/            generated videos, their GIFs and contact sheets
    ROOT/.work/JOB/NAME/    a job's output while it trains; moved into the library only once finished
    ROOT/jobs.json          the job list (what the page shows after a reload or a restart)

A subject learned here loads with ``dreamvideo generate --subject ROOT/subjects/NAME``, and a folder written by
``dreamvideo learn-subject --out ROOT/subjects/NAME`` appears in the app's library.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from dreamvideo.fileio import DreamVideoError
from dreamvideo.pipeline import MOTION_FILE, SUBJECT_FILE

KINDS = {"subject": ("subjects", SUBJECT_FILE), "motion": ("motions", MOTION_FILE)}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class WorkspaceError(DreamVideoError):
    """A request the workspace refuses (bad or taken name, no files); nothing was written."""


def _safe_file_name(name: str, index: int) -> str:
    """A plain file name for an upload: its own base name with odd characters replaced, else a numbered one."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(name).name).lstrip(".")
    return base or f"file-{index:02d}"


class Workspace:
    """The folder holding the app's library, uploads, generated videos and job list.

    Args:
        root: the workspace folder (created if missing).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().resolve()
        for sub in ("subjects", "motions", "uploads", "videos", ".work"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ library
    def folder(self, kind: str, name: str) -> Path:
        """``ROOT/subjects/NAME`` or ``ROOT/motions/NAME``."""
        return self.root / KINDS[kind][0] / name

    def library(self, kind: str) -> list[str]:
        """Names of the finished subjects or motions (folders holding their marker JSON), sorted."""
        sub, marker = KINDS[kind]
        return sorted(p.parent.name for p in (self.root / sub).glob(f"*/{marker}"))

    def check_name(self, kind: str, name: str) -> str:
        """Return ``name`` stripped if it is a valid, unused library name; raise :class:`WorkspaceError` if not."""
        name = (name or "").strip()
        if not NAME_PATTERN.match(name):
            raise WorkspaceError(
                f"{kind} name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
            )
        if self.folder(kind, name).exists():
            raise WorkspaceError(
                f"a {kind} named '{name}' already exists in {self.folder(kind, name).parent}; "
                "choose another name"
            )
        return name

    def checkpoint_steps(self, kind: str, name: str) -> list[int]:
        """Steps with a saved adapter checkpoint (the identity adapter's for a subject), ascending."""
        stage = "identity_adapter" if kind == "subject" else "motion_adapter"
        folder = self.folder(kind, name) / "checkpoints" / stage
        return sorted(
            int(p.name.split("-")[1]) for p in folder.glob("step-*") if p.name.split("-")[1].isdigit()
        )

    # ------------------------------------------------------------------ jobs
    def uploads(self, job_id: str) -> Path:
        return self.root / "uploads" / job_id

    def work_dir(self, job_id: str) -> Path:
        return self.root / ".work" / job_id

    def stage_uploads(self, job_id: str, groups: dict[str, list[str | os.PathLike]]) -> Path:
        """Copy uploaded files into ``ROOT/uploads/JOB/GROUP/`` (e.g. ``images``, ``masks``); return that folder.

        Args:
            job_id: the job the files belong to.
            groups: sub-folder name -> uploaded file paths (empty groups are skipped).
        """
        folder = self.uploads(job_id)
        for group, files in groups.items():
            if not files:
                continue
            target = folder / group
            target.mkdir(parents=True, exist_ok=True)
            for i, src in enumerate(files):
                name = _safe_file_name(str(src), i)
                if (target / name).exists():
                    raise WorkspaceError(f"two uploaded {group} are named '{name}'")
                shutil.copyfile(src, target / name)
        return folder

    def discard(self, job_id: str, uploads: bool = True) -> None:
        """Remove a job's unfinished output (and its uploads): a failed or cancelled job leaves no trace."""
        shutil.rmtree(self.work_dir(job_id), ignore_errors=True)
        if uploads:
            shutil.rmtree(self.uploads(job_id), ignore_errors=True)

    def publish(self, kind: str, name: str, job_id: str) -> Path:
        """Move a job's finished ``.work/JOB/NAME`` into the library (one rename; refuses a name taken meanwhile)."""
        src, dst = self.work_dir(job_id) / name, self.folder(kind, name)
        if dst.exists():
            raise WorkspaceError(
                f"a {kind} named '{name}' appeared in {dst.parent} while this one trained; "
                f"its result is kept in {src}"
            )
        os.replace(src, dst)
        shutil.rmtree(self.work_dir(job_id), ignore_errors=True)
        return dst

    def new_video(self, stem: str) -> Path:
        """A fresh ``ROOT/videos/<time>-<stem>.mp4`` path."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", stem)[:40]
        path = self.root / "videos" / f"{stamp}-{stem}.mp4"
        n = 1
        while path.exists() or path.with_suffix(".gif").exists():
            path = self.root / "videos" / f"{stamp}-{stem}-{n}.mp4"
            n += 1
        return path
