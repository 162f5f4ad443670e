"""DreamVideo's subject learner end to end on a tiny model: what trains, what stays frozen, files, errors."""

from __future__ import annotations

import pytest
import torch
from learning_helpers import dreamvideo_subject_settings as subject_settings

from dreamvideo.fileio import DreamVideoError, load_safetensors, read_json
from dreamvideo.methods import SubjectSettings, learn_subject
from dreamvideo.pipeline import DreamVideoPipeline
from dreamvideo.textual_inversion import TokenError
from dreamvideo.training import StageConfig


@pytest.fixture()
def pipe(tiny_base):
    return DreamVideoPipeline.from_pretrained(str(tiny_base))


def test_subject_trains_only_the_token_row_then_only_the_identity_adapter(
    pipe, tiny_base, tiny_data, tmp_path
):
    table_before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    unet_before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    out = learn_subject(pipe, tiny_data["subject"], tmp_path / "dog", subject_settings(), progress=False)

    info = read_json(out / "subject.json")
    assert info["token"] == "<sks>" and info["masks_used"] is True
    assert info["training"]["textual_inversion"]["steps_done"] == 4
    fresh = DreamVideoPipeline.from_pretrained(str(tiny_base))
    token = fresh.load_subject(out)
    table = fresh.text_encoder.get_input_embeddings().weight
    token_id = fresh.tokenizer.convert_tokens_to_ids(token)
    assert token_id == table_before.shape[0]  # a new row
    assert torch.equal(table[:token_id], table_before)  # every other row bit-identical
    dog = fresh.tokenizer.convert_tokens_to_ids("dog</w>")
    assert not torch.equal(table[token_id], table_before[dog])  # the token moved away from its init word

    # the embedding was frozen in stage 2: final vector == last textual-inversion checkpoint
    final = load_safetensors(out / "learned_embeds.safetensors")[0]["<sks>"]
    ckpt = load_safetensors(out / "checkpoints/textual_inversion/step-000004/learned_embeds.safetensors")[0][
        "<sks>"
    ]
    assert torch.equal(final, ckpt)
    # base UNet weights untouched; the identity adapter is non-zero after training
    for key, value in unet_before.items():
        inner = key.replace("transformer_blocks.0.", "transformer_blocks.0.block.")
        current = pipe.unet.state_dict().get(key, pipe.unet.state_dict().get(inner))
        assert torch.equal(current, value), key
    adapter = load_safetensors(out / "identity_adapter.safetensors")[0]
    assert any(k.endswith("attn2.up.weight") and v.abs().sum() > 0 for k, v in adapter.items())
    assert all(".attn2." in k for k in adapter)


def test_learned_embeds_load_with_diffusers_textual_inversion_loader(pipe, tiny_base, tiny_data, tmp_path):
    out = learn_subject(
        pipe, tiny_data["subject"], tmp_path / "s", subject_settings(identity_adapter=None), progress=False
    )
    fresh = DreamVideoPipeline.from_pretrained(str(tiny_base))
    fresh.load_textual_inversion(str(out / "learned_embeds.safetensors"))
    vector = load_safetensors(out / "learned_embeds.safetensors")[0]["<sks>"][0]
    token_id = fresh.tokenizer.convert_tokens_to_ids("<sks>")
    assert torch.equal(fresh.text_encoder.get_input_embeddings().weight[token_id], vector)


def test_bad_tokens_are_refused_before_training(pipe, tiny_data, tmp_path):
    with pytest.raises(TokenError, match="already in the tokenizer"):
        learn_subject(
            pipe, tiny_data["subject"], tmp_path / "a", subject_settings(token="dog"), progress=False
        )
    with pytest.raises(TokenError, match="single-token"):
        learn_subject(
            pipe, tiny_data["subject"], tmp_path / "b", subject_settings(init_word="red dog"), progress=False
        )


def test_subject_from_another_architecture_is_refused(pipe, tiny_data, tmp_path):
    from conftest import build_tiny_base

    out = learn_subject(pipe, tiny_data["subject"], tmp_path / "s", subject_settings(), progress=False)
    other = DreamVideoPipeline.from_pretrained(str(build_tiny_base(tmp_path / "wide", width=48)))
    with pytest.raises(DreamVideoError, match="does not fit base"):
        other.load_subject(out)


def test_subject_previews_cover_both_stages(pipe, tiny_data, tmp_path):
    from dreamvideo.methods import PreviewSettings

    out = learn_subject(
        pipe,
        tiny_data["subject"],
        tmp_path / "s",
        subject_settings(),
        progress=False,
        preview=PreviewSettings(every=4, num_frames=2, steps=2),
    )
    names = sorted(p.name for p in (out / "previews").glob("*.gif"))
    assert names == ["identity_adapter-step-000004.gif", "textual_inversion-step-000004.gif"]


def test_subject_trains_on_a_bf16_base(tiny_base, tiny_data, tmp_path):
    pipe = DreamVideoPipeline.from_pretrained(str(tiny_base), torch_dtype=torch.bfloat16)
    stage = StageConfig(steps=3, lr=1e-2, batch_size=1, checkpoint_every=3, mixed_precision="bf16")
    out = learn_subject(
        pipe,
        tiny_data["subject"] / "images",
        tmp_path / "s",
        subject_settings(textual_inversion=stage, identity=stage),
        progress=False,
    )
    embeds = load_safetensors(out / "learned_embeds.safetensors")[0]
    assert all(torch.isfinite(t).all() for t in embeds.values())
    fresh = DreamVideoPipeline.from_pretrained(str(tiny_base), torch_dtype=torch.bfloat16)
    token = fresh.load_subject(out)
    assert (
        fresh(f"a {token} dog", num_frames=1, num_inference_steps=1, progress=False).frames[0].shape[0] == 1
    )


def test_identity_adapter_none_skips_stage_two(pipe, tiny_data, tmp_path):
    assert SubjectSettings().identity_adapter is not None  # the paper's adapter by default
    out = learn_subject(
        pipe,
        tiny_data["subject"] / "images",
        tmp_path / "s",
        subject_settings(identity_adapter=None),
        progress=False,
    )
    assert (out / "learned_embeds.safetensors").is_file() and not (
        out / "identity_adapter.safetensors"
    ).exists()
    assert read_json(out / "subject.json")["identity_adapter"] is None
