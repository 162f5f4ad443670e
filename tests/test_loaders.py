"""Loading learned subjects and motions (``DreamVideoLoaderMixin``): words through diffusers' textual-inversion
loader, adapters from the final files or a checkpoint, baselines' folders through their method."""

from __future__ import annotations

import shutil

import pytest
import torch

from dreamvideo import adapters as ad
from dreamvideo.fileio import read_json, write_json
from dreamvideo.loaders import EMBEDS_FILE, SUBJECT_FILE
from dreamvideo.pipeline import DreamVideoPipeline
from dreamvideo.textual_inversion import TokenError, load_learned_embeds, save_learned_embeds


@pytest.fixture()
def pipe(tiny_base):
    return DreamVideoPipeline.from_pretrained(str(tiny_base))


def _row(pipe: DreamVideoPipeline, token: str) -> torch.Tensor:
    return pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids(token)]


def test_subject_word_is_added_by_diffusers_load_textual_inversion(pipe, tiny_learned, monkeypatch):
    calls = []
    real = DreamVideoPipeline.load_textual_inversion
    monkeypatch.setattr(
        DreamVideoPipeline, "load_textual_inversion", lambda s, *a, **k: calls.append(a) or real(s, *a, **k)
    )
    token = pipe.load_subject(tiny_learned["subject"])
    _, vector = load_learned_embeds(tiny_learned["subject"] / EMBEDS_FILE)
    assert token == "<sks>" and len(calls) == 1 and torch.equal(_row(pipe, token), vector)
    assert ad.adapter_names(pipe.unet) == ["identity"] and pipe.subject["path"] == str(
        tiny_learned["subject"]
    )


def test_loading_a_subject_again_replaces_its_word(pipe, tiny_learned, tmp_path):
    pipe.load_subject(tiny_learned["subject"])
    size = len(pipe.tokenizer)
    other = tmp_path / "dog"
    shutil.copytree(tiny_learned["subject"], other)
    token, vector = load_learned_embeds(other / EMBEDS_FILE)
    save_learned_embeds(other / EMBEDS_FILE, token, vector + 1)
    assert pipe.load_subject(other) == token
    assert len(pipe.tokenizer) == size and torch.equal(_row(pipe, token), vector + 1)


def test_loading_a_word_keeps_the_global_random_state(pipe, tmp_path):
    save_learned_embeds(tmp_path / EMBEDS_FILE, "<new>", torch.randn(32))
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    pipe.load_learned_token(tmp_path / EMBEDS_FILE)
    assert torch.equal(torch.rand(4), expected)


def test_words_that_exist_or_do_not_fit_are_refused(pipe, tmp_path):
    save_learned_embeds(tmp_path / "dog.safetensors", "dog", torch.randn(32))
    with pytest.raises(TokenError, match="existing word"):
        pipe.load_learned_token(tmp_path / "dog.safetensors")
    save_learned_embeds(tmp_path / "wide.safetensors", "<wide>", torch.randn(48))
    with pytest.raises(TokenError, match="width 48, the text encoder 32"):
        pipe.load_learned_token(tmp_path / "wide.safetensors")
    assert "<wide>" not in pipe.tokenizer.get_added_vocab()


def test_motion_loads_and_unloads(pipe, tiny_learned):
    pipe.load_motion(tiny_learned["motion"])
    assert ad.adapter_names(pipe.unet) == ["motion"] and pipe.motion["path"] == str(tiny_learned["motion"])
    pipe.load_motion(tiny_learned["motion"], step=1, scale=0.5)  # replaces the adapter
    assert ad.adapter_names(pipe.unet) == ["motion"]
    pipe.unload("motion")
    assert ad.adapter_names(pipe.unet) == [] and pipe.motion is None


@pytest.mark.parametrize("kind", ["subject", "motion"])
def test_a_baselines_folder_is_loaded_by_its_method(pipe, tiny_learned, tmp_path, monkeypatch, kind):
    from dreamvideo import methods

    folder = tmp_path / kind
    shutil.copytree(tiny_learned[kind], folder)
    marker = folder / (SUBJECT_FILE if kind == "subject" else "motion.json")
    write_json(read_json(marker) | {"method": "lora"}, marker)
    calls = []
    learner = methods.get("lora", kind)
    monkeypatch.setattr(learner, "load", classmethod(lambda cls, *a: calls.append(a) or "word"))
    result = (pipe.load_subject if kind == "subject" else pipe.load_motion)(folder, step=1, scale=0.5)
    assert [c[:2] + c[3:] for c in calls] == [(pipe, folder, 1, 0.5)] and calls[0][2]["method"] == "lora"
    assert result == ("word" if kind == "subject" else None) and ad.adapter_names(pipe.unet) == []
