"""learn-subject, learn-motion and generate refuse bad input early, with one-line errors naming the flag or file."""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import pytest
import torch
from conftest import generate_args, learn_motion_args, learn_subject_args, subject_steps
from PIL import Image

from dreamvideo.cli import main
from dreamvideo.fileio import load_safetensors, save_safetensors

TRAIN = [*subject_steps(2), "--checkpoint-every", "1", "--quiet"]


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _no_model(monkeypatch):
    """Make loading a model fail loudly: checks that must come first are proven to come first."""
    from dreamvideo.pipeline import DreamVideoPipeline

    def boom(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(DreamVideoPipeline, "from_pretrained", boom)


# ----------------------------------------------------------------------------- item 4/5: numeric flags


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--steps", "-3"),
        ("--steps", "0"),
        ("--frames", "0"),
        ("--height", "-16"),
        ("--fps", "0"),
        ("--guidance-scale", "nan"),
        ("--guidance-scale", "-1"),
        ("--appearance-strength", "inf"),
        ("--init-strength", "0.9"),
        ("--guidance-rescale", "2"),
        ("--subject-scale", "nan"),
    ],
)
def test_generate_numeric_flags_checked_at_parse_time(tiny_base, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        main(generate_args(tiny_base, tmp_path / "v.gif", flag, value))
    assert info.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "v.gif").exists()


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--checkpoint-every", "0"),
        ("--ti-batch-size", "0"),
        ("--adapter-batch-size", "-1"),
        ("--ti-lr", "0"),
        ("--adapter-lr", "nan"),
        ("--ti-steps", "-1"),
        ("--resolution", "0"),
        ("--threads", "0"),
    ],
)
def test_training_numeric_flags_checked_at_parse_time(tiny_base, tiny_data, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        main(learn_subject_args(tiny_base, tiny_data["subject"], tmp_path / "s", flag, value))
    assert info.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_motion_batch_size_zero(tiny_base, tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(learn_motion_args(tiny_base, tiny_data["motion"], tmp_path / "m", "--batch-size", "0"))
    assert "--batch-size" in capsys.readouterr().err


# ----------------------------------------------------------------------------- item 4: memory estimate


def test_generate_refuses_a_video_too_big_for_memory(tiny_base, tmp_path, capsys):
    code = main(generate_args(tiny_base, tmp_path / "v.gif", "--frames", "10000", "--max-memory-gb", "0.05"))
    err = _err(capsys)
    assert code == 2 and "GiB" in err and "0.1 GiB" in err and "--max-memory-gb" in err
    code = main(generate_args(tiny_base, tmp_path / "v.gif", "--height", "4096", "--width", "4096"))
    err = _err(capsys)
    assert code == 2 and "4096x4096" in err and "free memory" in err
    assert not (tmp_path / "v.gif").exists()


# ----------------------------------------------------------------------------- item 5: garbage weights


@pytest.mark.parametrize("poison", ["nan", "int", "bool"])
def test_generate_refuses_nan_or_non_float_adapter_weights(tiny_base, tiny_learned, tmp_path, capsys, poison):
    motion = tmp_path / "move"
    shutil.copytree(tiny_learned["motion"], motion)
    file = motion / "motion_adapter.safetensors"
    tensors, meta = load_safetensors(file)
    name = next(iter(tensors))
    t = tensors[name]
    tensors[name] = {"nan": torch.full_like(t, float("nan")), "int": t.to(torch.int32), "bool": t.bool()}[
        poison
    ]
    save_safetensors(tensors, file, meta)
    code = main(generate_args(tiny_base, tmp_path / "v.gif", "--motion", str(motion)))
    err = _err(capsys)
    assert code == 2 and "motion_adapter.safetensors" in err and name in err
    assert not (tmp_path / "v.gif").exists()


# ----------------------------------------------------------------------------- item 6: destination first


def test_generate_checks_the_destination_before_loading_the_model(tiny_base, tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    (tmp_path / "file").write_text("x")
    assert main(generate_args(tiny_base, tmp_path / "file" / "v.mp4")) == 2
    assert "not a folder" in _err(capsys)
    (tmp_path / "v.gif").write_bytes(b"old")  # the sibling of v.mp4
    assert main(generate_args(tiny_base, tmp_path / "v.mp4")) == 2
    err = _err(capsys)
    assert "v.gif" in err and "--overwrite" in err
    assert (tmp_path / "v.gif").read_bytes() == b"old"


def test_generate_overwrite_and_file_mode(tiny_base, tmp_path):
    (tmp_path / "v.gif").write_bytes(b"old")
    old = os.umask(0o022)
    try:
        assert main(generate_args(tiny_base, tmp_path / "v.mp4", "--overwrite")) == 0
    finally:
        os.umask(old)
    for name in ("v.mp4", "v.gif"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    assert (tmp_path / "v.gif").read_bytes() != b"old"


def test_evaluate_checks_out_before_loading_models(tmp_path, capsys):
    from dreamvideo.video_io import write_video

    write_video(np.zeros((2, 16, 16, 3), np.uint8), tmp_path / "v.gif")
    (tmp_path / "m.json").write_text(json.dumps([{"video": "v.gif", "prompt": "a dog"}]))
    (tmp_path / "file").write_text("x")
    code = main(
        [
            "evaluate",
            "--manifest",
            str(tmp_path / "m.json"),
            "--clip",
            str(tmp_path / "no-clip"),
            "--out",
            str(tmp_path / "file" / "report"),
        ]
    )
    err = _err(capsys)
    assert code == 2 and "--out" in err and "no-clip" not in err


# ----------------------------------------------------------------------------- item 7: training that learns nothing


def test_all_black_masks_refused(tiny_base, tiny_data, tmp_path, capsys):
    root = tmp_path / "subj"
    shutil.copytree(tiny_data["subject"], root)
    for mask in (root / "masks").iterdir():
        Image.fromarray(np.zeros((24, 24), np.uint8)).save(mask)
    args = learn_subject_args(tiny_base, root, tmp_path / "s", *TRAIN)
    assert main(args) == 2
    assert "all black" in _err(capsys) and not (tmp_path / "s").exists()
    assert main([*args, "--no-masks"]) == 0  # the way out the message names


@pytest.mark.parametrize(
    "caption, words",
    [
        ("a photo of a {word}", "has no {token}"),
        ("a {tokn} {word}", "unknown field {tokn}"),
        ("a dog a dog a dog a dog a dog a {token}", "cut off"),
        ("a {token", "malformed"),
    ],
)
def test_bad_caption_refused_before_loading_the_model(
    tiny_base, tiny_data, tmp_path, capsys, monkeypatch, caption, words
):
    _no_model(monkeypatch)
    code = main(
        learn_subject_args(tiny_base, tiny_data["subject"], tmp_path / "s", "--caption", caption, *TRAIN)
    )
    err = _err(capsys)
    assert code == 2 and "--caption" in err and words in err
    assert not (tmp_path / "s").exists()


def test_still_image_as_motion_refused(tiny_base, tmp_path, capsys):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "still.png")
    os.rename(tmp_path / "still.png", tmp_path / "still.mp4")
    code = main(
        learn_motion_args(tiny_base, tmp_path / "still.mp4", tmp_path / "m", "--steps", "1", "--quiet")
    )
    err = _err(capsys)
    assert code == 2 and "still.mp4" in err and not (tmp_path / "m").exists()


# ----------------------------------------------------------------------------- item 9: malformed inputs


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda info: [info], "must be a JSON object"),
        (lambda info: {k: v for k, v in info.items() if k != "base"}, "'base'"),
        (
            lambda info: (
                info | {"identity_adapter": {"name": "identity", "target": "spatial", "sites": ["nope"]}}
            ),
            "bad 'identity_adapter'",
        ),
        (lambda info: info | {"identity_adapter": "attn2"}, "'identity_adapter' must be an object"),
    ],
)
def test_hand_edited_subject_json(tiny_base, tiny_learned, tmp_path, capsys, monkeypatch, edit, words):
    _no_model(monkeypatch)
    subject = tmp_path / "dog"
    shutil.copytree(tiny_learned["subject"], subject)
    info = json.loads((subject / "subject.json").read_text())
    (subject / "subject.json").write_text(json.dumps(edit(info)))
    assert main(generate_args(tiny_base, tmp_path / "v.gif", "--subject", str(subject))) == 2
    err = _err(capsys)
    assert "subject.json" in err and words in err


def test_base_whose_config_does_not_match_its_weights(tiny_base, tmp_path, capsys):
    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    config = json.loads((base / "unet" / "config.json").read_text())
    (base / "unet" / "config.json").write_text(json.dumps(config | {"block_out_channels": [16, 32]}))
    assert main(generate_args(base, tmp_path / "v.gif")) == 2
    err = _err(capsys)
    assert str(base) in err and "cannot load this base model" in err and len(err.strip().splitlines()) == 1


def test_decompression_bomb_appearance_image(tiny_base, tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert (
        main(generate_args(tiny_base, tmp_path / "v.gif", "--appearance-image", str(tmp_path / "bomb.png")))
        == 2
    )
    assert "bomb.png" in _err(capsys)


def test_subject_token_that_is_an_existing_word_refused(tiny_base, tiny_learned, tmp_path, capsys):
    from dreamvideo.textual_inversion import save_learned_embeds

    subject = tmp_path / "dog"
    shutil.copytree(tiny_learned["subject"], subject)
    save_learned_embeds(subject / "learned_embeds.safetensors", "cat", torch.zeros(32))
    assert main(generate_args(tiny_base, tmp_path / "v.gif", "--subject", str(subject))) == 2
    err = _err(capsys)
    assert "'cat'" in err and "existing word" in err


# ----------------------------------------------------------------------------- item 10/12: wording and order


def test_path_like_base_is_not_tried_as_a_hub_id(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "o").mkdir()
    code = main(learn_subject_args("o/nope", tiny_data["subject"], tmp_path / "s"))
    err = _err(capsys)
    assert code == 2 and "o/nope: no such folder, and not a hub id" in err


def test_init_word_error_comes_first_lists_words_and_leaves_no_out(
    tiny_base, tiny_data, tmp_path, capsys, monkeypatch
):
    _no_model(monkeypatch)
    code = main(learn_subject_args(tiny_base, tiny_data["subject"], tmp_path / "s", init_word="zebra"))
    err = _err(capsys)
    assert code == 2 and "--init-word 'zebra'" in err
    assert "dog" in err and "guitar" in err  # the tiny vocabulary is listed in full
    assert not (tmp_path / "s").exists()


def test_bad_videos_refused_before_loading_the_model(tiny_base, tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    (tmp_path / "v.mp4").write_bytes(b"not a video")
    code = main(learn_motion_args(tiny_base, tmp_path / "v.mp4", tmp_path / "m"))
    assert code == 2 and "v.mp4" in _err(capsys) and not (tmp_path / "m").exists()
