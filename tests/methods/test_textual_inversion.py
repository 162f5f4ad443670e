"""The Textual Inversion baseline: the token only."""

from __future__ import annotations

import torch
from learning_helpers import baseline_subject_settings as subject_settings
from learning_helpers import fresh, snapshot

from dreamvideo import methods
from dreamvideo.fileio import read_json


def test_textual_inversion_baseline_is_the_token_only(tiny_base, tiny_data, tmp_path):
    pipe = fresh(tiny_base)
    before = snapshot(pipe)
    out = methods.learn_subject(
        pipe, tiny_data["subject"], tmp_path / "ti", subject_settings(), "textual-inversion", progress=False
    )
    info = read_json(out / "subject.json")
    assert info["method"] == "textual-inversion" and info["identity_adapter"] is None
    assert info["trainable_parameters"] == pipe.text_encoder.config.hidden_size
    assert all(torch.equal(v, before[n]) for n, v in snapshot(pipe).items())
    gen = fresh(tiny_base)
    assert gen.load_subject(out) == "<sks>" and gen.load_subject(out, step=1) == "<sks>"
    record = methods.training_record(out)
    assert record["method"] == "textual-inversion" and record["trainable_parameters"] == 32
