"""The app's job queue: one at a time in order, progress from the training loop, cancel, errors, the job list."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from dreamvideo.app.jobs import CANCELLED, DONE, FAILED, INTERRUPTED, Job, JobQueue
from dreamvideo.fileio import DreamVideoError, read_json
from dreamvideo.training import StageConfig, Trainer, report_progress


def _trainer(tmp_path: Path, steps: int = 5, name: str = "stage") -> Trainer:
    w = torch.nn.Parameter(torch.ones(3))
    return Trainer(
        name,
        [w],
        lambda step, g: (w**2).sum(),
        lambda folder: None,
        lambda folder: None,
        tmp_path / name,
        StageConfig(steps=steps, lr=0.1, checkpoint_every=100),
    )


def test_report_progress_sees_every_step_and_stage_and_only_in_its_block(tmp_path):
    calls = []
    with report_progress(lambda *a: calls.append(a)):
        _trainer(tmp_path, 3, "first").train(progress=False)
        _trainer(tmp_path, 2, "second").train(progress=False)
    assert [(s, i, n) for s, i, n, _ in calls] == [
        ("first", 0, 3),
        ("first", 1, 3),
        ("first", 2, 3),
        ("first", 3, 3),
        ("second", 0, 2),
        ("second", 1, 2),
        ("second", 2, 2),
    ]
    assert calls[0][3] is None and all(isinstance(c[3], float) for c in calls[1:4])
    _trainer(tmp_path, 2, "outside").train(progress=False)
    assert len(calls) == 7  # no callback outside the block


def test_a_raising_callback_stops_training(tmp_path):
    def stop(stage, step, total, loss):
        if step == 2:
            raise KeyboardInterrupt

    trainer = _trainer(tmp_path, 10)
    with report_progress(stop), pytest.raises(KeyboardInterrupt):
        trainer.train(progress=False)
    assert trainer.step == 2


def test_jobs_run_one_at_a_time_in_order_with_progress(tmp_path):
    q = JobQueue(tmp_path / "jobs.json")
    running, order, overlap = [], [], []

    def task(job: Job) -> Path:
        running.append(job.id)
        overlap.append(len(running))
        _trainer(tmp_path, 3, f"stage-{job.name}").train(progress=False)
        order.append(job.name)
        running.remove(job.id)
        return tmp_path / job.name

    jobs = [q.submit(Job(id=q.new_id(), kind="subject", name=f"s{i}"), task) for i in range(3)]
    for job in jobs:
        assert q.wait(job.id, 30).state == DONE
    assert order == ["s0", "s1", "s2"] and max(overlap) == 1
    assert [(s.name, s.step, s.total) for s in jobs[0].stages] == [("stage-s0", 3, 3)]
    assert jobs[0].stages[0].loss is not None
    record = read_json(tmp_path / "jobs.json")["jobs"]
    assert {j["state"] for j in record} == {DONE} and record[0]["stages"][0]["total"] == 3


def test_cancel_a_running_and_a_queued_job(tmp_path):
    finished = []
    q = JobQueue(tmp_path / "jobs.json", on_finish=lambda j: finished.append((j.name, j.state)))
    started = threading.Event()

    def slow(job: Job) -> Path:
        def loss(step, g):
            started.set()
            time.sleep(0.02)
            return (w**2).sum()

        w = torch.nn.Parameter(torch.ones(2))
        Trainer(
            "slow",
            [w],
            loss,
            lambda f: None,
            lambda f: None,
            tmp_path / job.id,
            StageConfig(steps=10_000, lr=0.1, checkpoint_every=10_000),
        ).train(progress=False)
        return tmp_path

    first = q.submit(Job(id=q.new_id(), kind="motion", name="a"), slow)
    second = q.submit(Job(id=q.new_id(), kind="motion", name="b"), slow)
    assert started.wait(10)
    q.cancel(second.id)
    assert second.state == CANCELLED
    q.cancel(first.id)
    assert q.wait(first.id, 10).state == CANCELLED and first.stages[0].step < 10_000
    assert ("a", CANCELLED) in finished and ("b", CANCELLED) in finished


def test_errors_are_reported_and_the_queue_keeps_going(tmp_path):
    q = JobQueue()

    def bad_input(job):
        raise DreamVideoError("photo.png: not a readable image")

    def bug(job):
        raise ZeroDivisionError("division by zero")

    a = q.submit(Job(id=q.new_id(), kind="subject", name="a"), bad_input)
    b = q.submit(Job(id=q.new_id(), kind="subject", name="b"), bug)
    c = q.submit(Job(id=q.new_id(), kind="subject", name="c"), lambda job: tmp_path)
    assert q.wait(a.id).state == FAILED and a.message == "photo.png: not a readable image"
    assert q.wait(b.id).state == FAILED and "ZeroDivisionError" in b.message
    assert q.wait(c.id).state == DONE


def test_a_name_already_queued_is_refused(tmp_path):
    q = JobQueue()
    gate = threading.Event()
    q.submit(Job(id=q.new_id(), kind="subject", name="dog"), lambda job: gate.wait(10) and tmp_path)
    with pytest.raises(DreamVideoError, match="already"):
        q.submit(Job(id=q.new_id(), kind="subject", name="dog"), lambda job: tmp_path)
    q.submit(Job(id=q.new_id(), kind="motion", name="dog"), lambda job: tmp_path)  # another kind: fine
    gate.set()


def test_the_job_list_survives_a_restart_and_unfinished_jobs_read_as_interrupted(tmp_path):
    record = tmp_path / "jobs.json"
    q = JobQueue(record)
    done = q.submit(Job(id=q.new_id(), kind="subject", name="a"), lambda job: tmp_path)
    q.wait(done.id)
    gate = threading.Event()
    stuck = q.submit(Job(id=q.new_id(), kind="subject", name="b"), lambda job: gate.wait(10) and tmp_path)
    time.sleep(0.2)
    cleaned = []
    again = JobQueue(record, on_finish=lambda j: cleaned.append(j.id))  # as if the app had been restarted
    assert again.get(done.id).state == DONE
    assert again.get(stuck.id).state == INTERRUPTED and cleaned == [stuck.id]
    gate.set()
    q.wait(stuck.id)
    damaged = tmp_path / "damaged.json"
    damaged.write_text("{not json")
    assert JobQueue(damaged).jobs() == []  # a damaged list is replaced, not fatal


def test_wait_returns_only_once_the_finished_job_is_recorded(tmp_path, monkeypatch):
    q = JobQueue(tmp_path / "jobs.json")
    save = q._save

    def slow_save():  # a slow disk: the record lags behind the job's state
        time.sleep(0.3)
        save()

    monkeypatch.setattr(q, "_save", slow_save)
    job = q.submit(Job(id=q.new_id(), kind="subject", name="s"), lambda job: tmp_path / "s")
    assert q.wait(job.id, 30).state == DONE
    record = read_json(tmp_path / "jobs.json")["jobs"]
    assert record[0]["state"] == DONE and record[0]["finished"] is not None
    assert not list(tmp_path.glob(".jobs.json*"))  # no temporary file left behind
