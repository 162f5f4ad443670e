"""Output folders: one owner at a time (two real processes), results built aside under --overwrite, run ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import generate_args, learn_subject_args, subject_steps

from dreamvideo import artifacts
from dreamvideo.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")
FAST = [*subject_steps(2), "--checkpoint-every", "1", "--quiet"]


def _subject(base, data, out, *extra):
    return learn_subject_args(base, data["subject"], out, *FAST, *extra)


def _env():
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}


HOLDER = """
import sys, time
from pathlib import Path
from dreamvideo.artifacts import acquire_lock
acquire_lock(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(120)
"""


def test_second_process_is_refused_while_the_first_holds_out(tiny_base, tiny_data, tmp_path):
    out = tmp_path / "dog"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], env=_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        second = subprocess.run(
            [sys.executable, "-m", "dreamvideo.cli", *_subject(tiny_base, tiny_data, out)],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 2, second.stderr
        assert "in use by another run" in second.stderr and str(holder.pid) in second.stderr
        assert "Traceback" not in second.stderr
        assert not (out / "subject.json").exists() and not (out / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale, and the next run takes the folder over
    assert main(_subject(tiny_base, tiny_data, out)) == 0
    assert (out / "subject.json").is_file() and not (out / artifacts.LOCK_FILE).exists()


def test_lock_is_reentrant_after_a_failed_call_of_the_same_process(tmp_path):
    lock = artifacts.acquire_lock(tmp_path / "o")
    assert artifacts.acquire_lock(tmp_path / "o") == lock  # our own pid: left by an earlier failed call
    artifacts.release_lock(lock)
    assert not lock.exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "o"
    out.mkdir()
    import socket

    (out / artifacts.LOCK_FILE).write_text(f"{dead.pid} {socket.gethostname()}\n")
    lock = artifacts.acquire_lock(out)
    assert lock.read_text().split()[0] == str(os.getpid())


def test_foreign_non_empty_folder_is_refused_as_out(tiny_base, tiny_data, tmp_path, capsys):
    images = tiny_data["subject"] / "images"
    before = sorted(p.name for p in images.iterdir())
    assert main(_subject(tiny_base, tiny_data, images)) == 2
    assert "not a dreamvideo output" in capsys.readouterr().err
    assert sorted(p.name for p in images.iterdir()) == before
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    assert main(_subject(tiny_base, tiny_data, other)) == 2
    assert "not a dreamvideo output" in capsys.readouterr().err


def test_overwrite_builds_aside_and_keeps_the_old_result_until_complete(
    tiny_base, tiny_data, tmp_path, monkeypatch
):
    out = tmp_path / "dog"
    assert main(_subject(tiny_base, tiny_data, out)) == 0
    old = json.loads((out / "subject.json").read_text())
    old_ckpts = sorted(p.relative_to(out) for p in (out / "checkpoints").rglob("trainer.json"))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the new run dies after training, before publishing

    monkeypatch.setattr(artifacts, "publish", killed)
    assert main(_subject(tiny_base, tiny_data, out, "--overwrite", "--token", "<new>")) == 130
    monkeypatch.undo()
    assert json.loads((out / "subject.json").read_text())["run_id"] == old["run_id"]
    assert sorted(p.relative_to(out) for p in (out / "checkpoints").rglob("trainer.json")) == old_ckpts
    for trainer_json in (out / "checkpoints").rglob("trainer.json"):
        assert json.loads(trainer_json.read_text())["run_id"] == old["run_id"]

    assert main(_subject(tiny_base, tiny_data, out, "--overwrite", "--token", "<new>")) == 0
    new = json.loads((out / "subject.json").read_text())
    assert new["token"] == "<new>" and new["run_id"] != old["run_id"]
    assert not (out / artifacts.OVERWRITE_DIR).exists() and not list(out.glob(".old-*"))
    for trainer_json in (out / "checkpoints").rglob("trainer.json"):
        assert json.loads(trainer_json.read_text())["run_id"] == new["run_id"]


def test_checkpoint_of_another_run_is_refused(tiny_base, tiny_data, tmp_path, capsys):
    out = tmp_path / "dog"
    assert main(_subject(tiny_base, tiny_data, out)) == 0
    trainer_json = out / "checkpoints" / "identity_adapter" / "step-000001" / "trainer.json"
    saved = json.loads(trainer_json.read_text())
    trainer_json.write_text(json.dumps(saved | {"run_id": "another-run"}))
    code = main(generate_args(tiny_base, tmp_path / "v.gif", "--subject", str(out), "--subject-step", "1"))
    err = capsys.readouterr().err
    assert code == 2 and "another-run" in err and "cannot be combined" in err
    assert not (tmp_path / "v.gif").exists()


def test_promote_order_leaves_no_mix(tmp_path):
    out = tmp_path / "o"
    (out / "checkpoints").mkdir(parents=True)
    (out / "subject.json").write_text("{}")
    (out / "a.safetensors").write_text("old")
    work = out / artifacts.OVERWRITE_DIR
    (work / "checkpoints").mkdir(parents=True)
    (work / "a.safetensors").write_text("new")
    (work / "subject.json").write_text('{"new": 1}')
    artifacts.promote(work, out, "subject.json")
    assert (out / "a.safetensors").read_text() == "new" and json.loads(
        (out / "subject.json").read_text()
    ) == {"new": 1}
    assert sorted(p.name for p in out.iterdir()) == ["a.safetensors", "checkpoints", "subject.json"]


@pytest.mark.parametrize(
    ("steps", "wanted", "expected"),
    [
        ([100, 200, 300, 400, 500, 600, 1000], "auto", 500),  # the authors' checkpoint
        ([300, 600, 900], "auto", 300),  # none at 500: the last one before it
        ([100, 200], "auto", None),  # stopped before 500: the final weights
        ([100, 500], "auto", None),  # 500 is the last step: the final weights are the same
        ([100, 200], "final", None),
        ([100, 200], 100, 100),
    ],
)
def test_checkpoint_step_follows_the_authors(tmp_path, steps, wanted, expected):
    from dreamvideo.artifacts import resolve_step

    for s in steps:
        (tmp_path / "checkpoints" / "identity_adapter" / f"step-{s:06d}").mkdir(parents=True)
    assert resolve_step(tmp_path, "identity_adapter", wanted) == expected
