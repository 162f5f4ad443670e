"""The hostile-input probe list of issue 20, one case per row: every row must end in a clear refusal (exit 2, a
one-line message naming the file or flag, no traceback, nothing half-written), or, for inputs that are fine, in
success.

Each row is ``(id, build, expect)``: ``build(ctx)`` prepares files under ``ctx.tmp`` and returns the command line;
``expect`` is the substring the error must contain (``None``: the command must succeed).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import generate_args, learn_motion_args, learn_subject_args, subject_steps
from PIL import Image

from dreamvideo.cli import main
from dreamvideo.fileio import load_safetensors, save_safetensors

SRC = str(Path(__file__).resolve().parents[1] / "src")
TRAIN = [*subject_steps(1), "--checkpoint-every", "1", "--quiet"]


@dataclass
class Ctx:
    base: Path
    data: dict
    learned: dict
    tmp: Path


# ----------------------------------------------------------------------------- command lines


def subject(ctx, *extra, images=None, out=None):
    return learn_subject_args(ctx.base, images or ctx.data["subject"], out or ctx.tmp / "s", *TRAIN, *extra)


def motion(ctx, *extra, videos=None, out=None):
    fast = ["--steps", "1", "--num-frames", "2", "--checkpoint-every", "1", "--quiet"]
    return learn_motion_args(ctx.base, videos or ctx.data["motion"], out or ctx.tmp / "m", *fast, *extra)


def generate(ctx, *extra, out=None):
    return generate_args(ctx.base, out or ctx.tmp / "v.gif", *extra)


def evaluate(ctx, entry, *extra):
    """``evaluate`` of a one-video manifest (``entry`` added to its row) with a CLIP that does not exist."""
    return ["evaluate", "--manifest", str(manifest(ctx, entry)), "--clip", str(ctx.tmp / "no-clip"), *extra]


# ----------------------------------------------------------------------------- input builders


def copy_of(ctx, key, name):
    """A copy of the learned ``subject`` or ``motion`` folder."""
    dst = ctx.tmp / name
    shutil.copytree(ctx.learned[key], dst)
    return dst


def subject_images(ctx, edit):
    root = ctx.tmp / "subj"
    shutil.copytree(ctx.data["subject"], root)
    edit(root)
    return root


def poisoned_motion(ctx, how):
    folder = copy_of(ctx, "motion", "move")
    file = folder / "motion_adapter.safetensors"
    tensors, meta = load_safetensors(file)
    name = next(iter(tensors))
    t = tensors[name]
    tensors[name] = {
        "nan": torch.full_like(t, float("nan")),
        "inf": torch.full_like(t, float("inf")),
        "int": t.to(torch.int32),
        "bool": t.bool(),
    }[how]
    save_safetensors(tensors, file, meta)
    return folder


def edited_subject(ctx, edit):
    folder = copy_of(ctx, "subject", "dog")
    info = json.loads((folder / "subject.json").read_text())
    (folder / "subject.json").write_text(
        edit(info) if isinstance(edit(info), str) else json.dumps(edit(info))
    )
    return folder


def black_masks(root):
    for mask in (root / "masks").iterdir():
        Image.fromarray(np.zeros((24, 24), np.uint8)).save(mask)


def corrupt_first_image(root):
    next((root / "images").iterdir()).write_bytes(b"\x89PNG\r\n\x1a\n garbage")


def one_frame_gif(ctx):
    from dreamvideo.video_io import write_video

    write_video(np.zeros((1, 16, 16, 3), np.uint8), ctx.tmp / "one.gif", fps=8)
    return ctx.tmp / "one.gif"


def png_as_mp4(ctx):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(ctx.tmp / "still.png")
    os.rename(ctx.tmp / "still.png", ctx.tmp / "still.mp4")
    return ctx.tmp / "still.mp4"


def truncated_video(ctx):
    src = next(p for p in ctx.data["motion"].iterdir() if p.suffix == ".gif")
    data = src.read_bytes()
    (ctx.tmp / "cut.gif").write_bytes(data[: len(data) // 3])
    return ctx.tmp / "cut.gif"


def held_out(ctx):
    out = ctx.tmp / "held"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from dreamvideo.artifacts import acquire_lock; acquire_lock(Path(sys.argv[1])); "
            "print('held', flush=True); time.sleep(120)",
            str(out),
        ],
        env={**os.environ, "PYTHONPATH": SRC},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    ctx.cleanup = holder
    return out


def stale_lock(ctx):
    out = ctx.tmp / "stale"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".dreamvideo.lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    return out


def foreign_folder(ctx):
    (ctx.tmp / "notes").mkdir()
    (ctx.tmp / "notes" / "todo.txt").write_text("mine")
    return ctx.tmp / "notes"


def mismatched_base(ctx):
    base = ctx.tmp / "base"
    shutil.copytree(ctx.base, base)
    config = json.loads((base / "unet" / "config.json").read_text())
    (base / "unet" / "config.json").write_text(json.dumps(config | {"block_out_channels": [16, 32]}))
    return base


def bomb(ctx):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(ctx.tmp / "bomb.png")
    ctx.max_pixels = 1000
    return ctx.tmp / "bomb.png"


def foreign_run_checkpoint(ctx):
    folder = copy_of(ctx, "subject", "dog")
    trainer_json = folder / "checkpoints" / "identity_adapter" / "step-000001" / "trainer.json"
    trainer_json.write_text(json.dumps(json.loads(trainer_json.read_text()) | {"run_id": "another-run"}))
    return folder


def word_token_subject(ctx):
    from dreamvideo.textual_inversion import save_learned_embeds

    folder = copy_of(ctx, "subject", "dog")
    save_learned_embeds(folder / "learned_embeds.safetensors", "cat", torch.zeros(32))
    return folder


def nan_token_subject(ctx):
    from dreamvideo.textual_inversion import save_learned_embeds

    folder = copy_of(ctx, "subject", "dog")
    save_learned_embeds(folder / "learned_embeds.safetensors", "<sks>", torch.full((32,), float("nan")))
    return folder


def pickle_ckpt(ctx):
    class Payload:
        def __reduce__(self):
            return os.system, ("echo probe > /dev/null",)

    torch.save({"a": Payload()}, ctx.tmp / "evil.pth")
    return ctx.tmp / "evil.pth"


def manifest(ctx, entry):
    folder = ctx.tmp / "eval"
    folder.mkdir()
    from dreamvideo.video_io import write_video

    write_video(np.zeros((2, 16, 16, 3), np.uint8), folder / "v.gif")
    (folder / "m.json").write_text(json.dumps([{"video": "v.gif", "prompt": "a dog", **entry}]))
    return folder / "m.json"


def existing(ctx, name):
    (ctx.tmp / name).write_bytes(b"old")
    return ctx.tmp / name


def file_parent(ctx):
    (ctx.tmp / "file").write_text("x")
    return ctx.tmp / "file"


def path_base(ctx):
    os.chdir(ctx.tmp)
    (ctx.tmp / "o").mkdir()
    return "o/nope"


# ----------------------------------------------------------------------------- the probe list

PROBES = [
    # 1. one run per output folder
    ("1-out-held-by-another-process", lambda c: subject(c, out=held_out(c)), "in use by another run"),
    ("1-stale-lock-taken-over", lambda c: subject(c, out=stale_lock(c)), None),
    # 3. checkpoints belong to their final files
    (
        "3-checkpoint-of-another-run",
        lambda c: generate(c, "--subject", str(foreign_run_checkpoint(c)), "--subject-step", "1"),
        "cannot be combined",
    ),
    # 4. sizes and numeric flags
    (
        "4-frames-10000-over-limit",
        lambda c: generate(c, "--frames", "10000", "--max-memory-gb", "0.05"),
        "GiB",
    ),
    ("4-4096x4096", lambda c: generate(c, "--height", "4096", "--width", "4096"), "free memory"),
    ("4-frames-0", lambda c: generate(c, "--frames", "0"), "--frames"),
    ("4-height-negative", lambda c: generate(c, "--height", "-8"), "--height"),
    ("4-fps-0", lambda c: generate(c, "--fps", "0"), "--fps"),
    ("4-lr-nan", lambda c: motion(c, "--lr", "nan"), "--lr"),
    ("4-lr-negative", lambda c: subject(c, "--ti-lr", "-1"), "--ti-lr"),
    ("4-batch-size-0", lambda c: motion(c, "--batch-size", "0"), "--batch-size"),
    ("4-adapter-batch-size-0", lambda c: subject(c, "--adapter-batch-size", "0"), "--adapter-batch-size"),
    ("4-checkpoint-every-0", lambda c: subject(c, "--checkpoint-every", "0"), "--checkpoint-every"),
    ("4-caption-dropout-1.5", lambda c: motion(c, "--caption-dropout", "1.5"), "--caption-dropout"),
    (
        "4-appearance-strength-inf",
        lambda c: generate(c, "--appearance-strength", "inf"),
        "--appearance-strength",
    ),
    ("4-resolution-0", lambda c: subject(c, "--resolution", "0"), "--resolution"),
    ("4-steps-not-a-number", lambda c: generate(c, "--steps", "ten"), "--steps"),
    # 5. garbage with exit 0
    ("5-negative-steps", lambda c: generate(c, "--steps", "-3"), "--steps"),
    ("5-guidance-nan", lambda c: generate(c, "--guidance-scale", "nan"), "--guidance-scale"),
    ("5-guidance-negative", lambda c: generate(c, "--guidance-scale", "-2"), "--guidance-scale"),
    ("5-nan-adapter", lambda c: generate(c, "--motion", str(poisoned_motion(c, "nan"))), "NaN"),
    ("5-inf-adapter", lambda c: generate(c, "--motion", str(poisoned_motion(c, "inf"))), "NaN or infinite"),
    ("5-int-adapter", lambda c: generate(c, "--motion", str(poisoned_motion(c, "int"))), "int32"),
    ("5-bool-adapter", lambda c: generate(c, "--motion", str(poisoned_motion(c, "bool"))), "bool"),
    ("5-nan-token", lambda c: generate(c, "--subject", str(nan_token_subject(c))), "learned_embeds"),
    # 6. destination first, no silent clobbering
    ("6-out-under-a-file", lambda c: generate(c, out=file_parent(c) / "v.mp4"), "not a folder"),
    (
        "6-sibling-gif-exists",
        lambda c: [*generate(c, out=c.tmp / "v.mp4"), *(existing(c, "v.gif") and [])],
        "v.gif: exists",
    ),
    (
        "6-target-exists",
        lambda c: [*generate(c, out=c.tmp / "v.mp4"), *(existing(c, "v.mp4") and [])],
        "v.mp4: exists",
    ),
    ("6-overwrite-given", lambda c: [*generate(c, "--overwrite"), *(existing(c, "v.gif") and [])], None),
    (
        "6-evaluate-out-under-a-file",
        lambda c: evaluate(c, {}, "--out", str(file_parent(c) / "r")),
        "--out",
    ),
    # 7. training that learns nothing
    ("7-all-black-masks", lambda c: subject(c, images=subject_images(c, black_masks)), "all black"),
    ("7-caption-without-token", lambda c: subject(c, "--caption", "a photo of a {word}"), "has no {token}"),
    (
        "7-token-cut-off",
        lambda c: subject(c, "--caption", "a dog a dog a dog a dog a dog a {token}"),
        "cut off",
    ),
    ("7-one-frame-video", lambda c: motion(c, videos=one_frame_gif(c)), "has 1 frame"),
    ("7-png-renamed-mp4", lambda c: motion(c, videos=png_as_mp4(c)), "still.mp4"),
    # 8. output folders that are not ours
    (
        "8-images-folder-as-out",
        lambda c: subject(c, out=c.data["subject"] / "images"),
        "not a dreamvideo output",
    ),
    ("8-subject-folder-itself", lambda c: subject(c, out=c.data["subject"]), "not a dreamvideo output"),
    ("8-foreign-folder", lambda c: subject(c, out=foreign_folder(c)), "not a dreamvideo output"),
    (
        "8-subject-result-as-motion-out",
        lambda c: motion(c, out=copy_of(c, "subject", "dog")),
        "different result",
    ),
    ("8-out-is-a-file", lambda c: subject(c, out=file_parent(c)), "not a folder"),
    # 9. malformed inputs
    (
        "9-subject-json-list",
        lambda c: generate(c, "--subject", str(edited_subject(c, lambda i: [i]))),
        "must be a JSON object",
    ),
    (
        "9-subject-json-no-base",
        lambda c: generate(
            c, "--subject", str(edited_subject(c, lambda i: {k: v for k, v in i.items() if k != "base"}))
        ),
        "'base'",
    ),
    (
        "9-subject-json-bad-adapter",
        lambda c: generate(
            c,
            "--subject",
            str(
                edited_subject(c, lambda i: i | {"identity_adapter": {"name": "identity", "sites": ["nope"]}})
            ),
        ),
        "bad 'identity_adapter'",
    ),
    (
        "9-subject-json-not-json",
        lambda c: generate(c, "--subject", str(edited_subject(c, lambda i: "{oops"))),
        "not valid JSON",
    ),
    (
        "9-base-config-misfits-weights",
        lambda c: generate(c, out=c.tmp / "v.gif")[:2] + [str(mismatched_base(c))] + generate(c)[3:],
        "cannot load this base model",
    ),
    ("9-caption-tokn", lambda c: subject(c, "--caption", "a {tokn} {word}"), "unknown field {tokn}"),
    ("9-bomb-appearance-image", lambda c: generate(c, "--appearance-image", str(bomb(c))), "too large"),
    (
        "9-token-is-existing-word",
        lambda c: generate(c, "--subject", str(word_token_subject(c))),
        "existing word",
    ),
    ("9-subject-folder-missing", lambda c: generate(c, "--subject", str(c.tmp / "nope")), "folder not found"),
    # 10. wording
    (
        "10-pickle-refused-for-safety",
        lambda c: [
            "convert",
            "vgen-adapter",
            "--ckpt",
            str(pickle_ckpt(c)),
            "--kind",
            "motion",
            "--out",
            str(c.tmp / "conv"),
        ],
        "refused for safety",
    ),
    (
        "10-path-like-base",
        lambda c: [
            "learn-subject",
            "--base",
            path_base(c),
            "--images",
            str(c.data["subject"]),
            "--init-word",
            "dog",
            "--out",
            str(c.tmp / "s"),
        ],
        "no such folder, and not a hub id",
    ),
    (
        "10-dot-path-base",
        lambda c: generate(c)[:2] + ["./missing/base"] + generate(c)[3:],
        "no such folder, and not a hub id",
    ),
    # 11. manifests stay inside their folder
    (
        "11-manifest-dotdot",
        lambda c: evaluate(c, {"subject_refs": ["../../etc/shadow"]}),
        "outside the manifest's folder",
    ),
    (
        "11-manifest-absolute",
        lambda c: evaluate(c, {"motion_refs": ["/etc/passwd"]}),
        "outside the manifest's folder",
    ),
    # 12. checks first, no empty --out, helpful init-word error
    ("12-init-word-lists-words", lambda c: subject(c)[:6] + ["zebra"] + subject(c)[7:], "guitar"),
    ("12-multi-token-init-word", lambda c: subject(c)[:6] + ["doggo"] + subject(c)[7:], "single-token word"),
    ("12-placeholder-is-a-word", lambda c: subject(c, "--token", "dog"), "already in the tokenizer"),
    # 13. threads
    ("13-threads-0", lambda c: ["info", "--threads", "0"], "--threads"),
    ("13-threads-1-accepted", lambda c: ["info", "--threads", "1"], None),
    # inputs the first round already handled well (regression rows)
    (
        "ok-corrupt-image",
        lambda c: subject(c, images=subject_images(c, corrupt_first_image)),
        "not a readable image",
    ),
    ("ok-truncated-video", lambda c: motion(c, videos=truncated_video(c)), "cut.gif"),
    ("ok-missing-images", lambda c: subject(c, images=c.tmp / "none"), "folder not found"),
    ("ok-finished-out-not-clobbered", lambda c: subject(c, out=copy_of(c, "subject", "dog")), "--overwrite"),
]


@pytest.fixture()
def ctx(tiny_base, tiny_data, tiny_learned, tmp_path, monkeypatch):
    c = Ctx(tiny_base, tiny_data, tiny_learned, tmp_path)
    c.cleanup = None
    monkeypatch.chdir(tmp_path)
    yield c
    if c.cleanup is not None:
        c.cleanup.kill()
        c.cleanup.wait()


@pytest.mark.parametrize("build, expect", [(b, e) for _, b, e in PROBES], ids=[name for name, _, _ in PROBES])
def test_probe(ctx, build, expect, capsys, monkeypatch):
    argv = build(ctx)
    if getattr(ctx, "max_pixels", None):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", ctx.max_pixels)
    before = sorted(p.name for p in ctx.tmp.iterdir())
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse refusals
        code = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if expect is None:
        assert code == 0, err
        return
    assert code == 2, err
    assert expect in err, err
    lines = [ln for ln in err.strip().splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    created = sorted(p.name for p in ctx.tmp.iterdir())
    assert set(created) <= set(before), f"a refused command created {set(created) - set(before)}"
