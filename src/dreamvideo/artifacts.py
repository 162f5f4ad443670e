"""Result folders of training runs: what a subject or motion folder holds, one owner at a time, staging and publishing.

A folder is *finished* when its marker JSON (``subject.json`` or ``motion.json``) exists: it names the method that
wrote it (``"method"``; none means ``dreamvideo``), the base it was trained on (``"base"``, checked when loading) and
the files beside it. Checkpoints live in ``checkpoints/<stage>/step-NNNNNN/`` with the same file names as the final
result, plus the optimiser state and ``trainer.json``.

A training command owns its ``--out`` folder through ``OUT/.dreamvideo.lock`` (the owner's pid and host; a lock
whose process is gone is stale and taken over). Every run has a run id, written to each checkpoint's
``trainer.json`` and to the marker JSON: a checkpoint belongs to the final files it sits beside only when the ids
agree. Final files are assembled in a per-process staging folder (:func:`staging_dir`) and moved into place marker
last (:func:`publish`); ``--overwrite`` trains into ``OUT/.overwrite/`` and replaces the old result only when the
new one is complete (:func:`promote`).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamvideo import distributed
from dreamvideo.fileio import DreamVideoError, read_json, write_json

# ----------------------------------------------------------------------------- what a result folder holds

SUBJECT_FILE = "subject.json"
MOTION_FILE = "motion.json"
MARKERS = (SUBJECT_FILE, MOTION_FILE)
KINDS = {"subject": SUBJECT_FILE, "motion": MOTION_FILE}
EMBEDS_FILE = "learned_embeds.safetensors"  # a learned token, diffusers' textual-inversion format
IDENTITY_FILE = "identity_adapter.safetensors"
MOTION_ADAPTER_FILE = "motion_adapter.safetensors"
WEIGHTS_FILE = "unet_weights.safetensors"  # the UNet tensors a weight-tuning baseline trained
LORA_FILE = "lora_weights.safetensors"
CHECKPOINTS_DIR = "checkpoints"
FORMAT_VERSION = 1

LOCK_FILE = ".dreamvideo.lock"
RUN_FILE = ".run.json"
OVERWRITE_DIR = ".overwrite"
STAGING_DIR = ".final"
OURS = (*MARKERS, CHECKPOINTS_DIR, RUN_FILE, LOCK_FILE, OVERWRITE_DIR, STAGING_DIR)


class OutputFolderError(DreamVideoError):
    """``--out`` cannot be used: not ours, held by another run, or holding something else."""


class OutputExistsError(OutputFolderError):
    """``--out`` holds a finished or an unfinished result and neither ``--overwrite`` nor ``--resume`` was given."""


class RunMismatchError(DreamVideoError):
    """A checkpoint and the final files beside it come from different runs."""


# ----------------------------------------------------------------------------- reading a result


def marker_of(kind: str) -> str:
    """``subject.json`` or ``motion.json``.

    Args:
        kind: ``"subject"`` or ``"motion"``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be 'subject' or 'motion', not {kind!r}")
    return KINDS[kind]


def read_info(folder: Path, kind: str) -> dict[str, Any]:
    """The marker JSON of a subject or motion folder.

    Args:
        folder: the folder.
        kind: ``"subject"`` or ``"motion"``.
    """
    return read_json(Path(folder) / marker_of(kind))


def check_base(info: dict[str, Any], base: dict[str, Any], what: str) -> None:
    """Refuse a result trained on another architecture than ``base`` (the fingerprints of :mod:`dreamvideo.base`).

    Args:
        info: the result's marker JSON (its ``"base"`` entry).
        base: ``pipe.base_description()`` of the pipeline it is loaded into.
        what: names the result in the message, e.g. ``"subject out/dog"``.
    """
    from dreamvideo.base import check_same_architecture

    check_same_architecture(info["base"], base, what)


def checkpoint_dir(work: Path, stage: str) -> Path:
    """Where the checkpoints of ``stage`` go: ``work/checkpoints/<stage>/``."""
    return Path(work) / CHECKPOINTS_DIR / stage


def checkpoint_file(folder: Path, stage: str, step: int | None, name: str) -> Path:
    """File ``name`` of a result: the final one (``step`` ``None``) or the one of the checkpoint of ``step``.

    Args:
        folder: a subject or motion folder.
        stage: the stage whose checkpoint is meant (``"identity_adapter"``, ``"motion_adapter"``, ``"training"``).
        step: a training step, or ``None`` for the final file.
        name: the file name, e.g. ``identity_adapter.safetensors``.

    Raises:
        DreamVideoError: there is no checkpoint of ``stage`` at ``step`` (the message lists those there are).
    """
    folder = Path(folder)
    if step is None:
        return folder / name
    file = checkpoint_dir(folder, stage) / f"step-{step:06d}" / name
    if not file.is_file():
        available = sorted(p.name for p in checkpoint_dir(folder, stage).glob("step-*"))
        raise DreamVideoError(
            f"{folder}: no {stage} checkpoint at step {step} (available: {', '.join(available) or 'none'})"
        )
    return file


# ----------------------------------------------------------------------------- ownership of a folder


def is_ours(folder: Path) -> bool:
    """Whether ``folder`` is empty or looks like a dreamvideo output folder (a marker, checkpoints, our files).

    Args:
        folder: an existing folder.
    """
    names = {p.name for p in folder.iterdir()}
    return not names or bool(names & set(OURS))


def check_output_folder(out: Path, marker: str) -> None:
    """Refuse a file, a non-empty folder that is not a dreamvideo output, or one holding the other kind of result.

    Args:
        out: the ``--out`` folder (need not exist).
        marker: ``subject.json`` or ``motion.json``, the result this run writes.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputFolderError(f"{out}: --out exists and is not a folder")
    if not is_ours(out):
        raise OutputFolderError(
            f"{out}: --out is a non-empty folder that is not a dreamvideo output (no {marker} or checkpoints/); "
            "choose a new or empty folder"
        )
    for other in MARKERS:
        if other != marker and (out / other).is_file():
            raise OutputFolderError(f"{out}: --out holds a different result ({other}), not a {marker[:-5]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_lock(lock: Path) -> dict | None:
    """The lock's owner, or ``None`` if the file vanished; a half-written file reads as a fresh lock."""
    try:
        text = lock.read_text()
    except FileNotFoundError:
        return None
    pid, _, host = text.strip().partition(" ")
    try:
        return {"pid": int(pid), "host": host}
    except ValueError:
        return {"pid": -1, "host": "", "unreadable": True}


def lock_is_stale(owner: dict, lock: Path) -> bool:
    """A lock is stale when its process on this host is gone (or it is ours, left by an earlier failed call).

    Args:
        owner: as read from the lock file.
        lock: the lock file (for the age of an unreadable one).
    """
    if owner.get("unreadable"):
        try:
            return time.time() - lock.stat().st_mtime > 30
        except FileNotFoundError:
            return True
    if owner["host"] != socket.gethostname():
        return False  # another machine's process: cannot tell, keep it
    return owner["pid"] == os.getpid() or not _pid_alive(owner["pid"])


def acquire_lock(out: Path) -> Path:
    """Take ``OUT/.dreamvideo.lock`` (creating ``out``); refuse with the owner's pid if another run holds it.

    Args:
        out: the output folder.

    Returns:
        The lock file; pass it to :func:`release_lock`.
    """
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_FILE
    mine = out / f".lock.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    mine.write_text(f"{os.getpid()} {socket.gethostname()}\n")
    try:
        for _ in range(5):
            try:
                os.link(mine, lock)  # atomic: fails if the lock exists
                return lock
            except FileExistsError:
                pass
            owner = _read_lock(lock)
            if owner is None:
                continue
            if not lock_is_stale(owner, lock):
                raise OutputFolderError(
                    f"{out}: --out is in use by another run (process {owner['pid']} on {owner['host'] or '?'}, lock "
                    f"file {lock}); wait for it to finish, or delete the lock file if that process is gone"
                )
            _remove_stale(lock, owner)
        raise OutputFolderError(f"{out}: could not take the lock file {lock}; another run is starting there")
    finally:
        mine.unlink(missing_ok=True)


def _remove_stale(lock: Path, owner: dict) -> None:
    """Move a stale lock away; put it back if someone else's fresh lock was moved instead."""
    grave = lock.with_name(f".lock.stale.{uuid.uuid4().hex[:8]}")
    try:
        os.rename(lock, grave)
    except FileNotFoundError:
        return
    moved = _read_lock(grave)
    if moved is not None and moved != owner:
        try:
            os.link(grave, lock)
        except FileExistsError:
            pass
    grave.unlink(missing_ok=True)


def release_lock(lock: Path | None) -> None:
    """Remove the lock file if this process still owns it.

    Args:
        lock: as returned by :func:`acquire_lock` (``None``: nothing to do).
    """
    if lock is None:
        return
    owner = _read_lock(lock)
    if owner is not None and owner["pid"] == os.getpid() and owner["host"] == socket.gethostname():
        lock.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- runs and the work folder


def new_run_id() -> str:
    """A fresh run id: UTC time and random hex."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def run_id_of(work: Path, resume: bool) -> str:
    """The run id of ``work``: kept when resuming a run that recorded one, else a new one (recorded).

    Args:
        work: the folder the run writes its checkpoints to.
        resume: continue the recorded run.
    """
    record = work / RUN_FILE
    if resume and record.is_file():
        data = read_json(record)
        if isinstance(data, dict) and isinstance(data.get("run_id"), str):
            return data["run_id"]
    run_id = new_run_id()
    write_json({"run_id": run_id, "pid": os.getpid()}, record)
    return run_id


@dataclass
class Workspace:
    """Where a run works and what it will replace.

    Args:
        out: the ``--out`` folder users see.
        work: where checkpoints, previews and staging go (``out``, or ``out/.overwrite`` under ``--overwrite``).
        run_id: this run's id.
        lock: the lock file held on ``out`` (``None`` on other processes than the main one).
    """

    out: Path
    work: Path
    run_id: str
    lock: Path | None = None

    @property
    def aside(self) -> bool:
        """Whether the result is built aside and replaces an older one at the end."""
        return self.work != self.out


def open_workspace(out: Path, marker: str, overwrite: bool, resume: bool) -> Workspace:
    """Lock ``out`` and choose the work folder; never deletes a finished result (see :func:`promote`).

    Args:
        out: the output folder.
        marker: the result's JSON file name.
        overwrite: build a new result aside that replaces the existing one when complete.
        resume: continue the unfinished run (with ``overwrite``: the unfinished replacement).
    """
    check_output_folder(out, marker)
    lock = acquire_lock(out)
    try:
        check_output_folder(out, marker)  # again, now that the folder is ours
        has_result = (out / marker).is_file() or (out / "checkpoints").is_dir()
        work = out / OVERWRITE_DIR if overwrite and has_result else out
        if work != out and not resume and work.exists():
            shutil.rmtree(work)  # an earlier, unfinished replacement
        work.mkdir(parents=True, exist_ok=True)
        for old in out.glob(".old-*"):
            shutil.rmtree(old, ignore_errors=True)
        return Workspace(out, work, run_id_of(work, resume), lock)
    except BaseException:
        release_lock(lock)
        raise


def promote(work: Path, out: Path, marker: str) -> None:
    """Replace the result in ``out`` by the complete one in ``work`` (a sub-folder of ``out``).

    The old marker goes first and the new marker last, so an interruption leaves a folder that reads as
    unfinished, never one that mixes an old result with new checkpoints.

    Args:
        work: the folder holding the new result (its marker included).
        out: the output folder.
        marker: the result's JSON file name.
    """
    old = out / f".old-{uuid.uuid4().hex[:8]}"
    old.mkdir()
    keep = {LOCK_FILE, work.name, old.name}
    if (out / marker).exists():
        os.replace(out / marker, old / marker)
    for entry in list(out.iterdir()):
        if entry.name not in keep:
            os.replace(entry, old / entry.name)
    for entry in list(work.iterdir()):
        if entry.name != marker:
            os.replace(entry, out / entry.name)
    os.replace(work / marker, out / marker)
    work.rmdir()
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- one training run's folder


def check_can_train(out: Path, marker: str, overwrite: bool, resume: bool) -> None:
    """Refuse ``out`` when this run may not use it: not ours (:func:`check_output_folder`), or holding a result
    that ``--overwrite`` or ``--resume`` must be asked for. Creates nothing (the CLI calls it before loading a model).

    Args:
        out: the output folder (need not exist).
        marker: the result's JSON file name.
        overwrite, resume: the run's flags.
    """
    check_output_folder(out, marker)
    finished = (out / marker).is_file()
    if finished and not (overwrite or resume):
        raise OutputExistsError(
            f"{out}: already holds a finished result ({marker}); pass --overwrite to replace it"
        )
    if (out / CHECKPOINTS_DIR).is_dir() and not finished and not (overwrite or resume):
        raise OutputExistsError(
            f"{out}: holds an unfinished run; pass --resume to continue it or --overwrite to restart"
        )


def prepare_output(out: Path, marker: str, overwrite: bool, resume: bool) -> Workspace:
    """Take ``out`` for this run (lock) and choose where it works; never clobber or delete a finished result.

    Args:
        out: the output folder.
        marker: ``subject.json``, ``motion.json`` (or another result's JSON file name).
        overwrite: build a new result aside (``out/.overwrite``) that replaces the old one when complete.
        resume: continue an unfinished run.

    Returns:
        The :class:`Workspace` (its ``work`` folder takes checkpoints, previews, staging); pass it to
        :func:`release` when the run ends, however it ends.
    """
    check_can_train(out, marker, overwrite, resume)
    ws = open_workspace(out, marker, overwrite, resume) if distributed.is_main_process() else None
    distributed.wait_for_everyone()
    if ws is None:  # another process of the run: the main one has chosen the work folder
        aside = overwrite and (out / OVERWRITE_DIR).is_dir()
        work = out / OVERWRITE_DIR if aside else out
        ws = Workspace(out, work, run_id_of(work, resume=True))
    return ws


def release(ws: Workspace) -> None:
    """Give up ``ws``'s lock (after publishing, or when a run fails)."""
    release_lock(ws.lock)


def staging_dir(work: Path) -> Path:
    """Where this process assembles the final files before :func:`publish`: one folder per process, so the
    processes of a multi-process run never write into each other's files.

    Args:
        work: the run's work folder (``Workspace.work``).
    """
    rank = distributed.process_index()
    return Path(work) / (STAGING_DIR if rank == 0 else f"{STAGING_DIR}-rank{rank}")


def publish(ws: Workspace, files: dict[str, Path], marker: str) -> None:
    """Move finished files into place; the marker JSON goes last, so a folder without it reads as unfinished.

    Built aside (``--overwrite``), the complete new result then replaces the old one (:func:`promote`).
    With several processes only the main one publishes (all trained the same weights); the others wait for it.

    Args:
        ws: the run's workspace.
        files: final file name -> where it was staged; must include ``marker``.
        marker: the result's JSON file name.
    """
    if distributed.is_main_process():
        work = ws.work
        (work / marker).unlink(missing_ok=True)
        for name, src in files.items():
            if name != marker:
                os.replace(src, work / name)
        os.replace(files[marker], work / marker)
        if ws.aside:
            promote(work, ws.out, marker)
        release(ws)
    distributed.wait_for_everyone()


def publish_result(ws: Workspace, staging: Path, names: list[str], info: dict[str, Any], marker: str) -> Path:
    """Write ``info`` (with the run id) as the marker JSON beside the staged files, publish them, clean up.

    Args:
        ws: the run's workspace.
        staging: this process's :func:`staging_dir`, holding the files ``names``.
        names: the final files (not the marker).
        info: the marker JSON.
        marker: its file name.

    Returns:
        The published folder (``ws.out``).
    """
    write_json(info | {"run_id": ws.run_id}, staging / marker)
    publish(ws, {**{name: staging / name for name in names}, marker: staging / marker}, marker)
    shutil.rmtree(staging, ignore_errors=True)
    return ws.out


def check_checkpoint_run(folder: Path, marker: str, step: int) -> None:
    """Refuse to combine the final files of ``folder`` with a checkpoint of ``step`` from another run.

    Args:
        folder: a subject or motion folder.
        marker: its JSON file name.
        step: the checkpoint step asked for.
    """
    info = read_json(folder / marker)
    final = info.get("run_id") if isinstance(info, dict) else None
    for trainer_json in sorted((folder / "checkpoints").glob(f"*/step-{step:06d}/trainer.json")):
        saved = read_json(trainer_json)
        ckpt = saved.get("run_id") if isinstance(saved, dict) else None
        if final and ckpt and final != ckpt:
            raise RunMismatchError(
                f"{trainer_json.parent}: checkpoint of run {ckpt}, but {folder / marker} is from run {final}; "
                "they cannot be combined (the checkpoint is left over from another run)"
            )


# The checkpoints the authors generate with (VGen configs/dreamvideo: identity adapter 500, motion adapter 1500).
AUTHORS_STEPS = {"identity_adapter": 500, "motion_adapter": 1500}


def checkpoint_steps(folder: Path, stage: str) -> list[int]:
    """The steps of the checkpoints of ``stage`` in a subject or motion folder, ascending."""
    found = (folder / "checkpoints" / stage).glob("step-*")
    return sorted(int(p.name[5:]) for p in found if p.name[5:].isdigit() and p.is_dir())


def resolve_step(folder: Path, stage: str, step: int | str | None) -> int | None:
    """The checkpoint step to load: an int as given, ``"final"``/``None`` for the final weights, or ``"auto"``.

    ``"auto"`` is the authors' choice (:data:`AUTHORS_STEPS`): that step's checkpoint; the final weights when
    training stopped before it; else the last checkpoint before it.
    """
    if step is None or step == "final":
        return None
    if step != "auto":
        return int(step)
    wanted, steps = AUTHORS_STEPS[stage], checkpoint_steps(Path(folder), stage)
    if not steps or steps[-1] <= wanted:  # trained no further than the authors' step: the final weights
        return None
    return max((s for s in steps if s <= wanted), default=None)
