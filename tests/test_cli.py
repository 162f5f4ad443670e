"""The three user commands end to end through the CLI, plus info and clear errors."""

from __future__ import annotations

import json

from conftest import learn_motion_args, learn_subject_args, subject_steps

from dreamvideo.cli import main

FAST = ["--checkpoint-every", "2", "--quiet"]


def test_learn_subject_motion_generate(tiny_base, tiny_data, tmp_path, capsys):
    base = str(tiny_base)
    subject = learn_subject_args(base, tiny_data["subject"], tmp_path / "dog", "--token", "<sks>")
    assert main([*subject, *subject_steps(2), *FAST]) == 0
    assert (
        main(
            [
                *learn_motion_args(base, tiny_data["motion"], tmp_path / "move"),
                "--steps",
                "2",
                "--num-frames",
                "3",
                "--preview-every",
                "1",
                "--preview-prompt",
                "a dog jumps",
                "--preview-steps",
                "1",
                "--preview-frames",
                "2",
                *FAST,
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "move" / "previews").glob("*.mp4"))) == 2
    image = next((tiny_data["subject"] / "images").iterdir())
    assert (
        main(
            [
                "generate",
                "--base",
                base,
                "--subject",
                str(tmp_path / "dog"),
                "--motion",
                str(tmp_path / "move"),
                "--prompt",
                "a <sks> dog moves left",
                "--out",
                str(tmp_path / "v.mp4"),
                "--steps",
                "2",
                "--frames",
                "3",
                "--appearance-image",
                str(image),
                "--png-frames",
                "--quiet",
            ]
        )
        == 0
    )
    assert (tmp_path / "v.mp4").stat().st_size > 0 and (tmp_path / "v.gif").stat().st_size > 0
    assert len(list((tmp_path / "v").glob("*.png"))) == 3
    # subject only, motion only (with an earlier checkpoint), plain base
    for extra in (
        ["--subject", str(tmp_path / "dog")],
        ["--motion", str(tmp_path / "move"), "--motion-step", "2"],
        [],
    ):
        assert (
            main(
                [
                    "generate",
                    "--base",
                    base,
                    *extra,
                    "--prompt",
                    "a dog",
                    "--out",
                    str(tmp_path / "w.gif"),
                    "--steps",
                    "2",
                    "--frames",
                    "2",
                    "--quiet",
                    "--overwrite",
                ]
            )
            == 0
        )
    assert json.loads((tmp_path / "dog" / "subject.json").read_text())["identity_adapter"]["sites"] == [
        "attn2"
    ]


def test_errors_name_the_problem(tiny_base, tiny_data, tmp_path, capsys):
    code = main(learn_subject_args(tiny_base, tmp_path / "nope", tmp_path / "s", "--quiet"))
    assert code == 2 and str(tmp_path / "nope") in capsys.readouterr().err
    code = main(learn_motion_args(tmp_path / "missing_base", tiny_data["motion"], tmp_path / "m", "--quiet"))
    assert code == 2 and "missing_base" in capsys.readouterr().err
    code = main(["generate", "--base", str(tiny_base), "--prompt", "x", "--out", str(tmp_path / "x.avi")])
    assert code == 2 and "x.avi" in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()


def test_info_prints_modelscope_counts(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "16 spatial blocks" in out and "17 temporal blocks" in out
    assert "12,409,120" in out and "77,966,496" in out


def test_cli_defaults_are_the_authors():
    from dreamvideo.cli import build_parser

    parser = build_parser()
    motion = parser.parse_args(["learn-motion", "--videos", "v", "--out", "o"])
    assert (motion.num_frames, motion.frame_stride, motion.target_fps, motion.steps) == (32, None, 8.0, 3000)
    assert (motion.warmup_steps, motion.max_grad_norm, motion.mixed_precision) == (10, None, "auto")
    subject = parser.parse_args(["learn-subject", "--images", "i", "--init-word", "dog", "--out", "o"])
    assert subject.caption == "a {token}"
    gen = parser.parse_args(["generate", "--prompt", "p", "--out", "o.mp4"])
    assert (gen.frames, gen.subject_step, gen.motion_step, gen.offset_noise) == (32, "auto", "auto", 0.1)


def test_training_flags_are_named_after_the_settings_and_keep_their_old_names():
    from dreamvideo.cli import build_parser

    parser = build_parser()
    base = ["learn-subject", "--images", "i", "--init-word", "dog", "--out", "o"]
    new = parser.parse_args(
        [
            *base,
            "--identity-steps",
            "7",
            "--textual-inversion-lr",
            "0.5",
            "--identity-sites",
            "ff",
            "--no-train-token",
            "--no-identity-adapter",
            "--no-masks",
        ]
    )
    old = parser.parse_args(
        [
            *base,
            "--adapter-steps",
            "7",
            "--ti-lr",
            "0.5",
            "--adapter-sites",
            "ff",
            "--no-textual-inversion",
            "--no-identity-adapter",
            "--no-masks",
        ]
    )
    assert vars(new) == vars(old)
    assert (new.identity_steps, new.textual_inversion_lr, new.identity_sites) == (7, 0.5, ["ff"])
    assert (new.train_token, new.identity_adapter, new.use_masks) == (False, False, False)
    motion = parser.parse_args(
        ["learn-motion", "--videos", "v", "--out", "o", "--motion-sites", "attn1", "--no-appearance-guidance"]
    )
    assert (motion.motion_sites, motion.appearance_guidance) == (["attn1"], False)
