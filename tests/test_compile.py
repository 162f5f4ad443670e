"""``--compile`` (torch.compile of the UNet) leaves training and generation results unchanged.

Slow: inductor compiles the forward and backward graphs on the CPU, about 10 minutes on 2 shared cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import learn_motion_args
from PIL import Image

from dreamvideo.cli import main
from dreamvideo.fileio import load_safetensors


@pytest.mark.slow
def test_compiled_unet_trains_and_generates_like_the_eager_one(tiny_base, tiny_data, tmp_path):
    results = {}
    try:
        for flag in ([], ["--compile"]):
            name = "compiled" if flag else "eager"
            train = ["--num-frames", "4", "--steps", "2", "--lr", "1e-2", "--device", "cpu", "--quiet"]
            assert (
                main(learn_motion_args(tiny_base, tiny_data["motion"], tmp_path / name, *train, *flag)) == 0
            )
            assert (
                main(
                    [
                        "generate",
                        "--base",
                        str(tiny_base),
                        "--motion",
                        str(tmp_path / name),
                        "--prompt",
                        "a red star",
                        "--frames",
                        "2",
                        "--steps",
                        "2",
                        "--out",
                        str(tmp_path / f"{name}_video.gif"),
                        "--png-frames",
                        "--device",
                        "cpu",
                        "--quiet",
                        *flag,
                    ]
                )
                == 0
            )
            adapter = load_safetensors(tmp_path / name / "motion_adapter.safetensors")[0]
            pngs = sorted((tmp_path / f"{name}_video").glob("*.png"))
            frames = [np.asarray(Image.open(p), dtype=np.int16) for p in pngs]
            results[name] = adapter, frames
    finally:
        torch._dynamo.reset()
    (eager, eager_frames), (compiled, compiled_frames) = results["eager"], results["compiled"]
    assert any(v.abs().sum() > 0 for k, v in eager.items() if k.endswith(".up.weight"))
    for (
        key
    ) in eager:  # Adam moves each weight by up to lr = 1e-2 a step: 1e-3 allows rounding, not a wrong graph
        torch.testing.assert_close(compiled[key], eager[key], atol=1e-3, rtol=0)
    assert len(eager_frames) == len(compiled_frames) == 2
    assert all(np.abs(a - b).max() <= 2 for a, b in zip(eager_frames, compiled_frames, strict=True))
