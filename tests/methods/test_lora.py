"""LoRA: a subject and a motion as two named peft adapters that compose."""

from __future__ import annotations

import pytest
import torch
from learning_helpers import baseline_motion_settings as motion_settings
from learning_helpers import baseline_subject_settings as subject_settings
from learning_helpers import fresh, stage, unet_output

from dreamvideo import methods
from dreamvideo.fileio import DreamVideoError, load_safetensors, read_json


def test_lora_subject_and_motion_compose_as_two_named_adapters(tiny_base, tiny_data, tmp_path):
    s = methods.learn_subject(
        fresh(tiny_base),
        tiny_data["subject"],
        tmp_path / "s",
        subject_settings(),
        "lora",
        stage(lr=5e-2),
        progress=False,
        rank=2,
    )
    m = methods.learn_motion(
        fresh(tiny_base),
        tiny_data["motion"],
        tmp_path / "m",
        motion_settings(stage=stage(lr=5e-2)),
        "lora",
        progress=False,
        rank=2,
    )
    s_info, m_info = read_json(s / "subject.json"), read_json(m / "motion.json")
    assert all(
        t.endswith(("attn2.to_k", "attn2.to_v")) and "temp" not in t for t in s_info["lora"]["target_modules"]
    )
    assert any("temp_attentions" in t and "attn2" in t for t in m_info["lora"]["target_modules"])
    assert all(
        ".attn1." in t or "temp_attentions" in t or "transformer_in" in t
        for t in m_info["lora"]["target_modules"]
    )
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
