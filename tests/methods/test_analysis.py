"""The paper's model analysis: relative weight change per layer type after full fine-tuning."""

from __future__ import annotations

import torch

from dreamvideo.methods.analysis import analyze_weight_change, layer_type
from dreamvideo.methods.weights import unet_parameters
from dreamvideo.pipeline import DreamVideoPipeline


def test_layer_types_cover_the_paper_groups():
    w = torch.zeros(2, 2)
    assert layer_type("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", w) == (
        "spatial",
        "cross-attn",
    )
    assert layer_type("down_blocks.0.temp_attentions.0.transformer_blocks.0.attn2.to_k.weight", w) == (
        "temporal",
        "attn2",
    )
    assert layer_type("transformer_in.transformer_blocks.0.ff.net.2.weight", w) == ("temporal", "FFN")
    assert layer_type("mid_block.temp_convs.0.conv1.2.weight", torch.zeros(2, 2, 3, 1, 1)) == (
        "temporal",
        "conv",
    )
    assert layer_type("up_blocks.1.resnets.0.conv_shortcut.weight", torch.zeros(2, 2, 1, 1)) == (
        "spatial",
        "conv",
    )
    assert (
        layer_type("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.bias", torch.zeros(2))
        is None
    )
    assert layer_type("down_blocks.0.attentions.0.transformer_blocks.0.norm1.weight", torch.zeros(2)) is None


def test_analysis_measures_each_layer_type_and_restores_the_model(tiny_base, tiny_data, tmp_path):
    pipe = DreamVideoPipeline.from_pretrained(str(tiny_base))
    before = {n: p.detach().clone() for n, p in unet_parameters(pipe.unet).items()}
    result = analyze_weight_change(
        pipe, tiny_data["subject"], tiny_data["motion"], steps=2, lr=1e-2, num_frames=2, out=tmp_path
    )
    assert list(result["spatial"]) == ["self-attn", "cross-attn", "FFN", "conv"]
    assert list(result["temporal"]) == ["attn1", "attn2", "FFN", "conv"]
    # Adam moves every weight by about lr per step: relative changes are small but non-zero everywhere
    assert all(0 < v < 1 for group in ("spatial", "temporal") for v in result[group].values())
    assert all(torch.equal(p, before[n]) for n, p in unet_parameters(pipe.unet).items())
    assert (tmp_path / "weight_change.png").is_file() and (tmp_path / "weight_change.json").is_file()
