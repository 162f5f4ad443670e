"""The one-stage baselines on the tiny model: what each trains, stores and loads back, resume, the CLI path."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import generate_args, learn_motion_args, learn_subject_args
from learning_helpers import baseline_motion_settings as motion_settings
from learning_helpers import baseline_subject_settings as subject_settings
from learning_helpers import fresh, snapshot, stage, stored_files

from dreamvideo import methods
from dreamvideo.fileio import load_safetensors, read_json
from dreamvideo.methods import weights
from dreamvideo.methods.tune_a_video import TEMPORAL_ATTENTION


@pytest.mark.parametrize("method", ["dreamix", "finetune"])  # animatediff's subject step is dreamix's code
def test_spatial_subject_methods_train_exactly_the_spatial_weights(method, tiny_base, tiny_data, tmp_path):
    pipe = fresh(tiny_base)
    before = snapshot(pipe)
    out = methods.learn_subject(
        pipe, tiny_data["subject"], tmp_path / method, subject_settings(), method, stage(), progress=False
    )
    info = read_json(out / "subject.json")
    stored = load_safetensors(out / "unet_weights.safetensors")[0]
    spatial = {n for n in before if not weights.is_temporal(n)}
    assert set(stored) == spatial and info["trainable_parameters"] == sum(before[n].numel() for n in spatial)
    assert info["method"] == method and info["training_seconds"] > 0 and info["training"]["steps_done"] == 2
    after = snapshot(pipe)
    assert all(torch.equal(after[n], before[n]) for n in before if weights.is_temporal(n))
    assert any(not torch.equal(after[n], before[n]) for n in spatial)
    assert stored_files(out) <= {".json", ".safetensors"}  # never pickle

    # DreamBooth style: a fixed identifier (the tiny tokenizer has no "sks": "<sks>" added with the class word's
    # embedding); plain fine-tuning: the class word only
    gen = fresh(tiny_base)
    words = gen.load_subject(out)
    assert words == ("dog" if method == "finetune" else "<sks>")
    assert info["caption"] == ("a dog" if method == "finetune" else "a <sks> dog")
    assert all(torch.equal(v, after[n]) for n, v in snapshot(gen).items())
    if method == "finetune":
        return
    table = gen.text_encoder.get_input_embeddings().weight
    ids = gen.tokenizer.convert_tokens_to_ids(["<sks>", "dog</w>"])
    assert torch.equal(table[ids[0]], table[ids[1]])  # never trained

    # scale interpolates the weights; a checkpoint step loads the weights of that step
    half, early = fresh(tiny_base), fresh(tiny_base)
    half.load_subject(out, scale=0.5)
    early.load_subject(out, step=1)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert torch.allclose(snapshot(half)[name], before[name] + 0.5 * (after[name] - before[name]), atol=1e-6)
    assert not torch.equal(snapshot(early)[name], after[name]) and not torch.equal(
        snapshot(early)[name], before[name]
    )


@pytest.mark.parametrize("method", ["finetune", "tune-a-video", "animatediff"])
def test_motion_weight_methods_store_only_what_they_train(method, tiny_base, tiny_data, tmp_path):
    pipe = fresh(tiny_base)
    before = snapshot(pipe)
    out = methods.learn_motion(
        pipe, tiny_data["motion"], tmp_path / method, motion_settings(), method, progress=False
    )
    info = read_json(out / "motion.json")
    stored = set(load_safetensors(out / "unet_weights.safetensors")[0])
    if method == "finetune":
        expected = {n for n in before if weights.is_temporal(n)}
    elif method == "tune-a-video":
        expected = {n for n in before if n.endswith(".to_q.weight") or re.search(TEMPORAL_ATTENTION, n)}
        assert len(info["videos"]) == 1  # one-shot: the first video only
        assert any(
            ".attentions.0.transformer_blocks.0.attn2.to_q" in n for n in stored
        )  # spatial queries too
        assert not any(".ff." in n or "temp_convs" in n for n in stored)
    else:
        expected = {n for n in before if "temp_attentions" in n or n.startswith("transformer_in.")}
        assert info["reinitialised"][0] == "transformer_in"
    assert stored == expected and info["trainable_parameters"] == sum(before[n].numel() for n in expected)
    after = snapshot(pipe)
    assert all(torch.equal(after[n], before[n]) for n in before if n not in expected)
    gen = fresh(tiny_base)
    gen.load_motion(out)
    assert all(torch.equal(v, after[n]) for n, v in snapshot(gen).items())
    frames = gen("a dog", num_frames=2, num_inference_steps=2, progress=False).frames[0]
    assert frames.shape == (2, 16, 16, 3)


def test_resumed_baseline_matches_an_uninterrupted_run(tiny_base, tiny_data, tmp_path, monkeypatch):
    settings = motion_settings(stage=stage(steps=4, checkpoint_every=2))
    full = methods.learn_motion(
        fresh(tiny_base), tiny_data["motion"], tmp_path / "full", settings, "finetune", progress=False
    )
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        methods.learn_motion(
            fresh(tiny_base), tiny_data["motion"], tmp_path / "cut", settings, "finetune", progress=False
        )
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    methods.learn_motion(
        fresh(tiny_base),
        tiny_data["motion"],
        tmp_path / "cut",
        settings,
        "finetune",
        resume=True,
        progress=False,
    )
    a = load_safetensors(full / "unet_weights.safetensors")[0]
    b = load_safetensors(tmp_path / "cut" / "unet_weights.safetensors")[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_method_flag_learns_and_generate_loads_baselines(tiny_base, tiny_data, tmp_path):
    from dreamvideo.cli import main

    quiet_cpu = ["--quiet", "--device", "cpu"]
    subject = ["--method", "dreamix", "--adapter-steps", "2", "--adapter-batch-size", "1", *quiet_cpu]
    assert main(learn_subject_args(tiny_base, tiny_data["subject"], tmp_path / "s", *subject)) == 0
    motion = ["--method", "tune-a-video", "--num-frames", "2", "--steps", "2", *quiet_cpu]
    assert main(learn_motion_args(tiny_base, tiny_data["motion"], tmp_path / "m", *motion)) == 0
    assert read_json(tmp_path / "s" / "subject.json")["training"]["steps_done"] == 2
    assert read_json(tmp_path / "m" / "motion.json")["method"] == "tune-a-video"
    learned = ["--subject", str(tmp_path / "s"), "--motion", str(tmp_path / "m"), "--device", "cpu"]
    assert main(generate_args(tiny_base, tmp_path / "v.gif", *learned, steps=2)) == 0
    assert (tmp_path / "v.gif").is_file()
    with pytest.raises(SystemExit):  # argparse: dreamix is not a motion method
        main(
            learn_motion_args(
                tiny_base, tiny_data["motion"], tmp_path / "x", "--method", "dreamix", *quiet_cpu
            )
        )


@pytest.mark.parametrize(("kind", "method"), [("subject", "dreamix"), ("motion", "finetune")])
def test_baselines_stage_in_the_per_process_folder_not_a_shared_final(
    kind, method, tiny_base, tiny_data, tmp_path, monkeypatch
):
    from dreamvideo import artifacts, distributed

    monkeypatch.setattr(distributed, "process_index", lambda: 3)  # as process 3 of a run would stage
    monkeypatch.setattr(distributed, "is_main_process", lambda: True)
    published, real_publish = [], artifacts.publish

    def spy(ws, files, marker):
        published.extend(files.values())
        assert all(src.is_file() for src in files.values())
        real_publish(ws, files, marker)

    monkeypatch.setattr(artifacts, "publish", spy)
    out = tmp_path / method
    if kind == "subject":  # dreamix adds its identifier's embedding too (the tiny tokenizer has no "sks")
        methods.learn_subject(
            fresh(tiny_base), tiny_data["subject"], out, subject_settings(), method, stage(), progress=False
        )
    else:
        methods.learn_motion(
            fresh(tiny_base), tiny_data["motion"], out, motion_settings(), method, progress=False
        )
    assert {p.parent for p in published} == {out / ".final-rank3"}
    assert len(published) == (3 if kind == "subject" else 2)
    assert not (out / ".final").exists() and not (out / ".final-rank3").exists()
    assert (out / f"{kind}.json").is_file()
