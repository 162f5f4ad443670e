"""The toy base model shipped in the package: layout, size, loading like a real snapshot, and the demo."""

from __future__ import annotations

import json

import pytest
import torch

from dreamvideo.toy.model import TOY_MODEL_DIR

pytestmark = pytest.mark.skipif(not (TOY_MODEL_DIR / "unet").is_dir(), reason="toy weights not built")


def test_layout_and_size():
    for component in (
        "unet",
        "vae",
        "text_encoder",
        "tokenizer",
        "scheduler",
        "image_encoder",
        "feature_extractor",
        "clip",
    ):
        assert (TOY_MODEL_DIR / component).is_dir(), component
    files = [p for p in TOY_MODEL_DIR.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]  # safetensors only
    assert sum(p.stat().st_size for p in files) <= 60 * 2**20
    index = json.loads((TOY_MODEL_DIR / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet3DConditionModel"]


def test_loads_with_the_real_model_code_and_generates():
    from dreamvideo.pipeline import DreamVideoPipeline

    pipe = DreamVideoPipeline.from_pretrained("toy")
    # the scheduler config says how the UNet was trained, and the base its guidance (docs/toy_model/recipe.md)
    sched = pipe.scheduler.config
    assert (sched.prediction_type, sched.rescale_betas_zero_snr, sched.timestep_spacing) == (
        "v_prediction",
        True,
        "trailing",
    )
    assert pipe.scheduler.alphas_cumprod[-1] == 0 and pipe.config.default_guidance_scale == 3.0
    assert pipe.image_encoder is not None and pipe.condition_dim == pipe.image_encoder.config.projection_dim
    prompt = "a red star moves left on green grass"
    assert len(pipe.tokenizer.tokenize(prompt)) == len(prompt.split())  # every vocabulary word is one token
    frames = pipe(
        "a red star moves left on green grass",
        num_frames=4,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    ).frames[0]
    assert frames.shape == (4, 64, 64, 3)


def test_demo_fast_end_to_end(tmp_path):
    from dreamvideo.cli import main

    assert main(["demo", "--fast", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    result = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert set(result["summary"]["by_case"]) == {
        "base-subject",
        "subject",
        "base-joint",
        "joint",
        "base-motion",
        "motion",
    }
    assert (tmp_path / "demo" / "contact_sheet.png").stat().st_size > 0
    assert len(list((tmp_path / "demo" / "videos").glob("*.mp4"))) == len(result["rows"])
    assert (tmp_path / "demo" / "subject" / "subject.json").is_file()
    assert (tmp_path / "demo" / "motion" / "motion.json").is_file()
    # a second run into the same demo folder is allowed; a foreign folder is refused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    assert main(["demo", "--fast", "--out", str(tmp_path / "other"), "--quiet"]) == 2
    assert (tmp_path / "other" / "keep.txt").read_text() == "x"


def test_quality_bar_measure_with_independent_and_shared_noise():
    from dreamvideo.toy import quality

    for shared in (None, 0.5):
        result = quality.measure(n=2, steps=2, shared_noise=shared)
        assert result["shared_noise"] == shared and len(result["rows"]) == 2
        for key, accuracy in result["accuracy"].items():
            assert accuracy == sum(row[key] for row in result["rows"]) / 2
            assert result["stderr"][key] == pytest.approx((accuracy * (1 - accuracy) / 2) ** 0.5)
    with pytest.raises(ValueError, match="shared_noise"):
        quality.measure(n=1, steps=1, shared_noise=1.0)
