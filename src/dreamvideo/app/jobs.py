"""One-at-a-time background jobs for the app: a FIFO queue, one worker thread, progress, cancel, a job list on disk.

A job is a function ``task(job) -> Path`` (e.g. learn a subject into the workspace). The worker runs it inside
:func:`dreamvideo.training.report_progress`, so every training stage updates ``job.stages``; a cancel request makes
the next progress report raise :class:`JobCancelled`. The list lives in memory and in ``ROOT/jobs.json``, so a
reloaded page (or a restarted app) shows it again.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dreamvideo.fileio import DreamVideoError, read_json, write_json
from dreamvideo.training import report_progress

logger = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = (
    "queued",
    "running",
    "done",
    "failed",
    "cancelled",
    "interrupted",
)
FINAL_STATES = (DONE, FAILED, CANCELLED, INTERRUPTED)


class JobCancelled(DreamVideoError):
    """Raised inside a job's training loop when its cancel button was pressed."""


@dataclass
class StageProgress:
    """One training stage of a job: ``step`` of ``total`` done, recent mean ``loss`` (``None`` before step 1)."""

    name: str
    step: int = 0
    total: int = 0
    loss: float | None = None


@dataclass
class Job:
    """A queued, running or finished job.

    Args:
        id: unique id (also the name of its upload and work folders).
        kind: ``"subject"`` or ``"motion"``.
        name: the library name it will publish.
        state: queued, running, done, failed, cancelled or interrupted (the app stopped while it ran).
        stages: progress per training stage, in the order they started.
        message: the result folder when done, the error message when failed.
        output: the folder previews are written to while it runs, then the published folder.
    """

    id: str
    kind: str
    name: str
    state: str = QUEUED
    stages: list[StageProgress] = field(default_factory=list)
    message: str = ""
    output: str = ""
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    task: Callable[[Job], Path] | None = field(default=None, repr=False, compare=False)
    cancel_requested: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able part (no task, no event)."""
        d = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("task", "cancel_requested")
        }
        return d | {"stages": [asdict(s) for s in self.stages]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        stages = [StageProgress(**s) for s in d.get("stages", [])]
        keep = {
            k: d[k]
            for k in ("id", "kind", "name", "state", "message", "output", "created", "started", "finished")
            if k in d
        }
        return cls(**keep, stages=stages)

    def report(self, stage: str, step: int, total: int, loss: float | None) -> None:
        """The training progress callback: update (or add) the stage's progress; raise if cancel was pressed."""
        if self.cancel_requested.is_set():
            raise JobCancelled(f"{self.kind} '{self.name}': cancelled")
        if not self.stages or self.stages[-1].name != stage:
            self.stages.append(StageProgress(stage))
        current = self.stages[-1]
        current.step, current.total, current.loss = step, total, loss


class JobQueue:
    """Run jobs one at a time, in submission order, on a background thread.

    Args:
        record: ``jobs.json`` path keeping the job list across restarts (``None``: memory only).
        on_finish: ``on_finish(job)`` after every job, whatever its end (e.g. clean its work folder).
    """

    def __init__(self, record: Path | None = None, on_finish: Callable[[Job], None] | None = None) -> None:
        self.record, self.on_finish = record, on_finish
        self._jobs: dict[str, Job] = {}
        self._pending: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._finishing = threading.Lock()  # held from a job's `finished` until its record is written
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._load()

    # ------------------------------------------------------------------ public
    def new_id(self) -> str:
        """A fresh job id (time-based, unique in this workspace)."""
        while True:
            job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{next(self._ids):03d}"
            if job_id not in self._jobs:
                return job_id

    def submit(self, job: Job, task: Callable[[Job], Path]) -> Job:
        """Queue ``task`` as ``job``; refuse a library name another unfinished job of the same kind will publish."""
        with self._lock:
            for other in self._jobs.values():
                if other.kind == job.kind and other.name == job.name and other.state in (QUEUED, RUNNING):
                    raise DreamVideoError(
                        f"a {job.kind} named '{job.name}' is already {other.state} (job {other.id})"
                    )
            job.task = task
            self._jobs[job.id] = job
        self._save()
        self._pending.put(job.id)
        self.start()
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once, a running one at its next training step."""
        job = self.get(job_id)
        if job.state == QUEUED:
            job.state, job.message = CANCELLED, "cancelled before it started"
            if self.on_finish:
                self.on_finish(job)
            job.finished = time.time()
            self._save()
        elif job.state == RUNNING:
            job.cancel_requested.set()
        return job

    def get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise DreamVideoError(f"no job {job_id!r}") from None

    def jobs(self) -> list[Job]:
        """All jobs, newest first."""
        return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    def active(self) -> Job | None:
        """The running job, else the oldest queued one, else ``None``."""
        running = [j for j in self._jobs.values() if j.state == RUNNING]
        queued = sorted((j for j in self._jobs.values() if j.state == QUEUED), key=lambda j: j.created)
        return (running or queued or [None])[0]

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="dreamvideo-jobs", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Let the worker finish its current job and stop."""
        if self._thread is not None:
            self._pending.put(None)
            self._thread.join(timeout)

    def wait(self, job_id: str, timeout: float = 60.0) -> Job:
        """Block until a job reaches a final state and its clean-up is done (tests, scripts)."""
        deadline = time.monotonic() + timeout
        job = self.get(job_id)
        while job.state not in FINAL_STATES or job.finished is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout} s")
            time.sleep(0.05)
        with self._finishing:  # the record of a job that just finished is written
            return job

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            job_id = self._pending.get()
            if job_id is None:
                return
            job = self._jobs[job_id]
            if job.state != QUEUED:  # cancelled while queued
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        job.state, job.started = RUNNING, time.time()
        self._save()
        try:
            with report_progress(job.report):
                result = job.task(job)
            job.state, job.message, job.output = DONE, f"finished: {result}", str(result)
        except JobCancelled as err:
            job.state, job.message = CANCELLED, str(err)
        except DreamVideoError as err:
            job.state, job.message = FAILED, str(err)
        except Exception as err:  # a bug, not bad input: keep the traceback in the log, the gist in the page
            logger.error("job %s failed:\n%s", job.id, traceback.format_exc())
            job.state, job.message = FAILED, f"{type(err).__name__}: {err}"
        try:
            if self.on_finish:
                self.on_finish(job)
        finally:
            with self._finishing:  # wait() returns once the clean-up and the record are done too
                job.finished = time.time()
                self._save()

    # ------------------------------------------------------------------ record
    def _save(self) -> None:
        if self.record is None:
            return
        with self._lock:
            data = [j.to_dict() for j in self._jobs.values()]
        write_json({"jobs": data}, self.record)

    def _load(self) -> None:
        """Read an earlier list; jobs that were queued or running when the app stopped are marked interrupted."""
        if self.record is None or not self.record.is_file():
            return
        try:
            entries = read_json(self.record).get("jobs", [])
        except (DreamVideoError, AttributeError):
            logger.warning("%s: unreadable job list, starting a new one", self.record)
            return
        for entry in entries:
            try:
                job = Job.from_dict(entry)
            except TypeError:
                continue
            if job.state not in FINAL_STATES:
                job.state, job.message = INTERRUPTED, "the app stopped while this job was queued or running"
                if self.on_finish:
                    self.on_finish(job)
                job.finished = job.finished or time.time()
            self._jobs[job.id] = job
