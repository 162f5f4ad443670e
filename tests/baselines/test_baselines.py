"""Baselines on the tiny model: what each trains, what it stores, how it loads back, composes and resumes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from dreamvideo import baselines
from dreamvideo.baselines import common, temporal
from dreamvideo.fileio import DreamVideoError, load_safetensors, read_json
from dreamvideo.pipeline import DreamVideoPipeline
from dreamvideo.stages import MotionSettings, SubjectSettings
from dreamvideo.training import StageConfig


def stage(steps: int = 2, **kw) -> StageConfig:
    return StageConfig(**({"steps": steps, "lr": 1e-2, "batch_size": 1, "checkpoint_every": 1, "warmup_steps": 0} | kw))


def subject_settings() -> SubjectSettings:
    return SubjectSettings(token="<sks>", init_word="dog", caption="a {token} {word}", textual_inversion=stage(),
                           identity=stage())


def motion_settings(**kw) -> MotionSettings:
    return MotionSettings(**({"num_frames": 2, "stage": stage()} | kw))


def fresh(base: Path) -> DreamVideoPipeline:
    return DreamVideoPipeline.from_pretrained(str(base))


def snapshot(pipe: DreamVideoPipeline) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in common.unet_parameters(pipe.unet).items()}


@torch.no_grad()
def unet_output(pipe: DreamVideoPipeline, token_text: str = "a dog") -> torch.Tensor:
    x = torch.randn((1, 4, 2, 2, 2), generator=torch.Generator().manual_seed(0))
    return pipe.unet(x, 10, encoder_hidden_states=pipe.encode_text([token_text])).sample


def stored_files(folder: Path) -> set[str]:
    return {p.suffix for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("method", ["dreamix", "finetune"])  # animatediff's subject step is dreamix's code
def test_spatial_subject_methods_train_exactly_the_spatial_weights(method, tiny_base, tiny_data, tmp_path):
    pipe = fresh(tiny_base)
    before = snapshot(pipe)
    out = baselines.learn_subject(method, pipe, tiny_data["subject"], tmp_path / method, subject_settings(),
                                  stage(), progress=False)
    info = read_json(out / "subject.json")
    stored = load_safetensors(out / "unet_weights.safetensors")[0]
    spatial = {n for n in before if not common.is_temporal(n)}
    assert set(stored) == spatial and info["trainable_parameters"] == sum(before[n].numel() for n in spatial)
    assert info["method"] == method and info["training_seconds"] > 0 and info["training"]["steps_done"] == 2
    after = snapshot(pipe)
    assert all(torch.equal(after[n], before[n]) for n in before if common.is_temporal(n))
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
    assert not torch.equal(snapshot(early)[name], after[name]) and not torch.equal(snapshot(early)[name], before[name])


@pytest.mark.parametrize("method", ["finetune", "tune-a-video", "animatediff"])
def test_motion_weight_methods_store_only_what_they_train(method, tiny_base, tiny_data, tmp_path):
    pipe = fresh(tiny_base)
    before = snapshot(pipe)
    out = baselines.learn_motion(method, pipe, tiny_data["motion"], tmp_path / method, motion_settings(),
                                 progress=False)
    info = read_json(out / "motion.json")
    stored = set(load_safetensors(out / "unet_weights.safetensors")[0])
    if method == "finetune":
        expected = {n for n in before if common.is_temporal(n)}
    elif method == "tune-a-video":
        expected = {n for n in before if n.endswith(".to_q.weight") or re.search(temporal.TEMPORAL_ATTENTION, n)}
        assert len(info["videos"]) == 1  # one-shot: the first video only
        assert any(".attentions.0.transformer_blocks.0.attn2.to_q" in n for n in stored)  # spatial queries too
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


def test_animatediff_motion_module_starts_as_identity_and_is_seeded(tiny_base):
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    pipe, other = fresh(tiny_base), fresh(tiny_base)
    before = snapshot(pipe)
    paths = temporal.reinit_temporal_transformers(pipe.unet, seed=3)
    temporal.reinit_temporal_transformers(other.unet, seed=3)
    after = snapshot(pipe)
    assert all(torch.equal(after[n], snapshot(other)[n]) for n in after)  # same seed, same weights
    assert not torch.equal(after["transformer_in.proj_in.weight"], before["transformer_in.proj_in.weight"])
    assert all(torch.equal(after[n], before[n]) for n in after if not any(n.startswith(p + ".") for p in paths))
    module = pipe.unet.get_submodule(paths[0])
    assert isinstance(module, TransformerTemporalModel)
    h = torch.randn(2 * 3, module.proj_in.in_features, 2, 2)  # (batch * frames, C, H, W)
    assert torch.equal(module(h, num_frames=3).sample, h)  # zero proj_out: the module is the identity


def test_lora_subject_and_motion_compose_as_two_named_adapters(tiny_base, tiny_data, tmp_path):
    s = baselines.learn_subject("lora", fresh(tiny_base), tiny_data["subject"], tmp_path / "s", subject_settings(),
                                stage(lr=5e-2), progress=False, rank=2)
    m = baselines.learn_motion("lora", fresh(tiny_base), tiny_data["motion"], tmp_path / "m",
                               motion_settings(stage=stage(lr=5e-2)), progress=False, rank=2)
    s_info, m_info = read_json(s / "subject.json"), read_json(m / "motion.json")
    assert all(t.endswith(("attn2.to_k", "attn2.to_v")) and "temp" not in t for t in s_info["lora"]["target_modules"])
    assert any("temp_attentions" in t and "attn2" in t for t in m_info["lora"]["target_modules"])
    assert all(".attn1." in t or "temp_attentions" in t or "transformer_in" in t
               for t in m_info["lora"]["target_modules"])  # fmt: skip
    tensors = load_safetensors(s / "lora_weights.safetensors")[0]
    assert s_info["trainable_parameters"] == sum(v.numel() for v in tensors.values())
    assert all("lora_A" in k or "lora_B" in k for k in tensors)

    base = unet_output(fresh(tiny_base))
    only_s, only_m, both = fresh(tiny_base), fresh(tiny_base), fresh(tiny_base)
    only_s.load_subject(s)
    only_m.load_motion(m)
    both.load_subject(s)
    both.load_motion(m)
    assert set(both.unet.peft_config) == {"subject", "motion"}
    outs = [unet_output(p) for p in (only_s, only_m, both)]
    assert not torch.allclose(outs[0], outs[2]) and not torch.allclose(outs[1], outs[2])
    assert not torch.allclose(outs[0], base) and not torch.allclose(outs[1], base)
    zero = fresh(tiny_base)
    zero.load_subject(s, scale=0.0)
    zero.load_motion(m, scale=0.0)
    assert torch.allclose(unet_output(zero), base, atol=1e-6)
    with pytest.raises(DreamVideoError, match="already loaded"):
        both.load_motion(m)


def test_textual_inversion_baseline_is_the_token_only(tiny_base, tiny_data, tmp_path):
    pipe = fresh(tiny_base)
    before = snapshot(pipe)
    out = baselines.learn_subject("textual-inversion", pipe, tiny_data["subject"], tmp_path / "ti",
                                  subject_settings(), progress=False)
    info = read_json(out / "subject.json")
    assert info["method"] == "textual-inversion" and info["identity_adapter"] is None
    assert info["trainable_parameters"] == pipe.text_encoder.config.hidden_size
    assert all(torch.equal(v, before[n]) for n, v in snapshot(pipe).items())
    gen = fresh(tiny_base)
    assert gen.load_subject(out) == "<sks>" and gen.load_subject(out, step=1) == "<sks>"
    record = baselines.training_record(out)
    assert record["method"] == "textual-inversion" and record["trainable_parameters"] == 32


def test_resumed_baseline_matches_an_uninterrupted_run(tiny_base, tiny_data, tmp_path, monkeypatch):
    settings = motion_settings(stage=stage(steps=4, checkpoint_every=2))
    full = baselines.learn_motion("finetune", fresh(tiny_base), tiny_data["motion"], tmp_path / "full", settings,
                                  progress=False)
    real_step, calls = torch.optim.AdamW.step, {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        baselines.learn_motion("finetune", fresh(tiny_base), tiny_data["motion"], tmp_path / "cut", settings,
                               progress=False)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    baselines.learn_motion("finetune", fresh(tiny_base), tiny_data["motion"], tmp_path / "cut", settings,
                           resume=True, progress=False)
    a = load_safetensors(full / "unet_weights.safetensors")[0]
    b = load_safetensors(tmp_path / "cut" / "unet_weights.safetensors")[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_wrong_method_or_kind_is_a_clear_error(tiny_base, tiny_data, tmp_path):
    with pytest.raises(DreamVideoError, match="learns subjects only"):
        baselines.learn_motion("dreamix", fresh(tiny_base), tiny_data["motion"], tmp_path / "x", motion_settings())
    with pytest.raises(DreamVideoError, match="unknown method 'magic'"):
        baselines.get_method("magic")
    out = baselines.learn_subject("textual-inversion", fresh(tiny_base), tiny_data["subject"], tmp_path / "ti",
                                  subject_settings(), progress=False)
    info = read_json(out / "subject.json")
    (out / "subject.json").write_text(json.dumps(info | {"method": "magic"}))
    with pytest.raises(DreamVideoError, match="unknown method 'magic'"):
        fresh(tiny_base).load_subject(out)
    with pytest.raises(DreamVideoError, match="do not fit"):
        common.load_weights(fresh(tiny_base).unet, {"nope.weight": torch.zeros(1)}, source="f.safetensors")


def test_cli_method_flag_learns_and_generate_loads_baselines(tiny_base, tiny_data, tmp_path):
    from dreamvideo.cli import main

    common_args = ["--base", str(tiny_base), "--quiet", "--device", "cpu"]
    assert main(["learn-subject", "--method", "dreamix", "--images", str(tiny_data["subject"]), "--init-word", "dog",
                 "--out", str(tmp_path / "s"), "--adapter-steps", "2", "--adapter-batch-size", "1",
                 *common_args]) == 0  # fmt: skip
    assert main(["learn-motion", "--method", "tune-a-video", "--videos", str(tiny_data["motion"]), "--num-frames",
                 "2", "--steps", "2", "--out", str(tmp_path / "m"), *common_args]) == 0  # fmt: skip
    assert read_json(tmp_path / "s" / "subject.json")["training"]["steps_done"] == 2
    assert read_json(tmp_path / "m" / "motion.json")["method"] == "tune-a-video"
    assert main(["generate", "--subject", str(tmp_path / "s"), "--motion", str(tmp_path / "m"), "--prompt",
                 "a <sks> dog", "--frames", "2", "--steps", "2", "--out", str(tmp_path / "v.gif"),
                 *common_args]) == 0  # fmt: skip
    assert (tmp_path / "v.gif").is_file()
    with pytest.raises(SystemExit):  # argparse: dreamix is not a motion method
        main(["learn-motion", "--method", "dreamix", "--videos", str(tiny_data["motion"]), "--out",
              str(tmp_path / "x"), *common_args])  # fmt: skip
