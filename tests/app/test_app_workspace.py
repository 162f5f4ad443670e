"""The app's workspace and tasks on the tiny base: uploads validated before queueing, library, CLI folder formats."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import generate_args, learn_motion_args

from dreamvideo.app import tasks
from dreamvideo.app.workspace import Workspace, WorkspaceError
from dreamvideo.cli import main
from dreamvideo.data import DataError, load_video


@pytest.fixture()
def ctx(tmp_path, tiny_base):
    ctx = tasks.AppContext(Workspace(tmp_path / "ws"), base=str(tiny_base), device="cpu")
    yield ctx
    ctx.jobs.stop(5)


def _subject_request(folder, name: str, class_word: str, **settings) -> tasks.SubjectRequest:
    """The Subjects form with the photos and masks of a subject folder (``images/``, ``masks/``)."""
    images = sorted((folder / "images").glob("*.png"))
    masks = sorted((folder / "masks").glob("*.png"))
    return tasks.SubjectRequest(
        name=name,
        images=[str(p) for p in images],
        masks=[str(p) for p in masks],
        class_word=class_word,
        ti_steps=2,
        adapter_steps=2,
        **settings,
    )


def _subject(ctx, tiny_data, name="dog", **kw):
    settings = {"ti_lr": 1e-2, "adapter_lr": 1e-2, "batch_size": 1, "checkpoint_every": 1}
    return tasks.submit_subject(ctx, _subject_request(tiny_data["subject"], name, "dog", **settings, **kw))


def _empty(ws: Workspace) -> bool:
    return not any(any((ws.root / d).iterdir()) for d in ("subjects", "motions", "uploads", ".work"))


def test_names_are_checked(tmp_path):
    ws = Workspace(tmp_path)
    for bad in ("", "../up", ".hidden", "a/b", "x" * 65, "with space"):
        with pytest.raises(WorkspaceError, match="name"):
            ws.check_name("subject", bad)
    assert ws.check_name("subject", " my-dog_2 ") == "my-dog_2"


def test_a_subject_learned_in_the_app_is_a_cli_subject(ctx, tiny_data, tmp_path):
    job = ctx.jobs.wait(_subject(ctx, tiny_data, preview_every=1, preview_steps=1).id, 120)
    assert job.state == "done", job.message
    assert ctx.workspace.library("subject") == ["dog"]
    folder = ctx.workspace.folder("subject", "dog")
    assert (folder / "subject.json").is_file() and (folder / "identity_adapter.safetensors").is_file()
    assert [s.name for s in job.stages] == ["textual inversion", "identity adapter"]
    assert tasks.previews(job) and all(p.is_relative_to(folder) for p in tasks.previews(job))
    assert not any(ctx.workspace.work_dir(job.id).parent.iterdir())  # no work folder left behind
    assert ctx.workspace.checkpoint_steps("subject", "dog") == [1, 2]
    out = tmp_path / "cli.mp4"
    subject = ["--subject", str(folder), "--subject-step", "1", "--device", "cpu"]
    assert main(generate_args(ctx.base, out, *subject, steps=2)) == 0
    assert out.is_file()


def test_a_motion_learned_by_the_cli_appears_in_the_library_and_generates_in_the_app(ctx, tiny_data):
    out = ctx.workspace.folder("motion", "slide")
    fast = ["--steps", "2", "--num-frames", "2", "--quiet", "--device", "cpu"]
    assert main(learn_motion_args(ctx.base, tiny_data["motion"], out, *fast)) == 0
    assert ctx.workspace.library("motion") == ["slide"]
    result = tasks.generate(
        ctx, tasks.GenerateRequest(prompt="a red star moves", motion="slide", frames=3, steps=2)
    )
    assert len(load_video(result.video)[0]) == 3 and result.gif.suffix == ".gif" and result.sheet.is_file()
    assert result.video.parent == ctx.workspace.root / "videos"


def test_a_motion_job_with_a_caption(ctx, tiny_data):
    videos = sorted(tiny_data["motion"].glob("*.gif"))
    job = tasks.submit_motion(
        ctx,
        tasks.MotionRequest(
            name="slide",
            videos=[str(v) for v in videos],
            caption="a star",
            num_frames=2,
            steps=2,
            lr=1e-2,
            checkpoint_every=1,
        ),
    )
    assert ctx.jobs.wait(job.id, 120).state == "done", job.message
    info = tasks.describe(ctx, "motion", "slide")
    assert info["captions"] == ["a star", "a star"] and info["training"]["steps_done"] == 2


def test_a_corrupt_photo_is_refused_before_queueing_and_leaves_nothing(ctx, tiny_data, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    images = sorted((tiny_data["subject"] / "images").glob("*.png"))[:2]
    req = tasks.SubjectRequest(name="dog", images=[str(images[0]), str(bad)], class_word="dog")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        tasks.submit_subject(ctx, req)
    assert _empty(ctx.workspace) and ctx.jobs.jobs() == []


def test_a_video_too_short_is_refused_when_asked(ctx, tiny_data):
    videos = [str(v) for v in sorted(tiny_data["motion"].glob("*.gif"))]
    req = tasks.MotionRequest(name="slide", videos=videos, num_frames=16, short_videos="error")
    with pytest.raises(DataError, match="has 6 frames, but a clip of 16 frames"):
        tasks.submit_motion(ctx, req)
    assert _empty(ctx.workspace)


def test_an_existing_name_and_missing_inputs_are_refused(ctx, tiny_data):
    (ctx.workspace.folder("subject", "dog")).mkdir()
    with pytest.raises(WorkspaceError, match="already exists"):
        _subject(ctx, tiny_data)
    with pytest.raises(WorkspaceError, match="upload at least one"):
        tasks.submit_subject(ctx, tasks.SubjectRequest(name="cat", images=[], class_word="dog"))
    with pytest.raises(WorkspaceError, match="prompt"):
        tasks.generate(ctx, tasks.GenerateRequest(prompt=" "))
    with pytest.raises(WorkspaceError, match="no subject named"):
        tasks.generate(ctx, tasks.GenerateRequest(prompt="a dog", subject="nobody"))


def test_a_job_failing_in_the_worker_leaves_the_library_intact(ctx, tiny_data):
    assert ctx.jobs.wait(_subject(ctx, tiny_data, name="first").id, 120).state == "done"
    listing = sorted(
        p.relative_to(ctx.workspace.root) for p in ctx.workspace.root.rglob("*") if p.name != "jobs.json"
    )
    bad_word = tasks.SubjectRequest(
        name="third",
        images=[str(p) for p in (tiny_data["subject"] / "images").glob("*")],
        class_word="two words",
        ti_steps=2,
        adapter_steps=2,
        batch_size=1,
    )
    job = ctx.jobs.wait(
        tasks.submit_subject(ctx, bad_word).id, 120
    )  # the library refuses the word while training
    assert job.state == "failed" and "two words" in job.message
    after = sorted(
        p.relative_to(ctx.workspace.root) for p in ctx.workspace.root.rglob("*") if p.name != "jobs.json"
    )
    assert after == listing  # no "third" folder, no uploads or work folder of the failed job


def test_compare_and_toy_metrics(tmp_path):
    from dreamvideo.toy import world

    ctx = tasks.AppContext(Workspace(tmp_path / "ws"), base="toy", device="cpu")
    folder = world.write_subject_folder("totem", tmp_path / "totem", n=3)
    req = _subject_request(folder, "totem", "square", ti_lr=5e-3, adapter_lr=1e-3, batch_size=2)
    assert ctx.jobs.wait(tasks.submit_subject(ctx, req).id, 120).state == "done"
    base, custom, rows = tasks.compare(
        ctx,
        tasks.GenerateRequest(prompt="a <sks> square moves on blue sky", subject="totem", frames=4, steps=2),
    )
    assert (
        not np.array_equal(base.frames, custom.frames) and base.sheet == custom.sheet and base.sheet.is_file()
    )
    assert [r["video"] for r in rows] == ["base model", "customized"]
    assert {"subject fidelity", "temporal consistency", "CLIP-T"} <= set(
        rows[0]
    ) and "motion fidelity" not in rows[0]
    ctx.jobs.stop(5)


def test_the_app_command_binds_localhost_by_default_and_explains_a_missing_gradio(monkeypatch):
    import sys

    from dreamvideo.app import cmd_app
    from dreamvideo.cli import build_parser
    from dreamvideo.fileio import DreamVideoError

    args = build_parser().parse_args(["app", "--port", "7999"])
    assert (args.host, args.port, args.base, args.func) == ("127.0.0.1", 7999, "toy", cmd_app)
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the [app] extra were not installed
    with pytest.raises(DreamVideoError, match=r'pip install -e "\.\[app\]"'):
        cmd_app(args)
