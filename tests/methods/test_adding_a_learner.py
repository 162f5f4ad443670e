"""Adding a method takes one file, this one: a learner of the UNet's output bias, registered here, trained for two
steps on the toy base through the real CLI, and loaded back with ``pipe.load_subject``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from dreamvideo import artifacts, methods
from dreamvideo.cli import main
from dreamvideo.fileio import load_safetensors, read_json, save_safetensors
from dreamvideo.methods.latents import tokenize
from dreamvideo.pipeline import DreamVideoPipeline

BIAS_FILE = "output_bias.safetensors"


class OutputBias(methods.SubjectLearner):
    """Trains only ``conv_out.bias`` of the UNet on the photos captioned with the class word."""

    name = "output-bias"
    summary = "the bias of the UNet's last convolution (a test method)"

    def stages(self):
        bias = self.pipe.unet.conv_out.bias
        with torch.no_grad():
            text = self.pipe.text_encoder(tokenize(self.pipe, f"a {self.settings.init_word}"))[0]

        def save(folder: Path) -> None:
            save_safetensors({"bias": bias.detach().clone()}, folder / BIAS_FILE)

        def load(folder: Path) -> None:
            with torch.no_grad():
                bias.copy_(load_safetensors(folder / BIAS_FILE)[0]["bias"])

        self.save_bias = save
        yield methods.Stage(
            name="training",
            title="output bias",
            params=[bias],
            loss=self.loss(self.stage, lambda: text),
            save=save,
            load=load,
            config=self.stage,
        )

    def save(self, folder: Path) -> list[str]:
        self.save_bias(folder)
        return [BIAS_FILE]

    def record(self, wall_seconds: float) -> dict[str, Any]:
        trainer = self.trainers["training"]
        return super().record(wall_seconds) | {
            "class_word": self.settings.init_word,
            "trainable_parameters": self.pipe.unet.conv_out.bias.numel(),
            "training_seconds": trainer.seconds,
            "training": {"steps_done": trainer.step},
        }

    @classmethod
    def load(cls, pipe: Any, folder: Path, info: dict[str, Any], step: int | None, scale: float) -> str:
        file = artifacts.checkpoint_file(folder, "training", step, BIAS_FILE)
        with torch.no_grad():
            pipe.unet.conv_out.bias.copy_(load_safetensors(file)[0]["bias"])
        return info["class_word"]


@pytest.fixture()
def output_bias():
    methods.register(OutputBias)
    yield OutputBias
    methods.unregister(OutputBias)
    assert "output-bias" not in methods.names()


def test_a_learner_in_one_file_trains_through_the_cli_and_loads_back(output_bias, tiny_data, tmp_path):
    out = tmp_path / "dog"
    assert (
        main(
            [
                "learn-subject",
                "--method",
                "output-bias",
                "--base",
                "toy",
                "--images",
                str(tiny_data["subject"]),
                "--init-word",
                "dog",
                "--out",
                str(out),
                "--identity-steps",
                "2",
                "--identity-batch-size",
                "1",
                "--identity-lr",
                "1e-2",
                "--warmup-steps",
                "0",
                "--checkpoint-every",
                "1",
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    info = read_json(out / "subject.json")
    assert info["method"] == "output-bias" and info["training"]["steps_done"] == 2
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == {
        BIAS_FILE,
        "checkpoints",
        "subject.json",
    }

    base = DreamVideoPipeline.from_pretrained("toy").unet.conv_out.bias.detach().clone()
    pipe = DreamVideoPipeline.from_pretrained("toy")
    assert pipe.load_subject(out) == "dog"
    trained = pipe.unet.conv_out.bias.detach().clone()
    assert not torch.equal(trained, base)  # it trained, and the folder loads back through the registry
    assert torch.equal(trained, load_safetensors(out / BIAS_FILE)[0]["bias"])
    assert pipe.subject["method"] == "output-bias"
    pipe.load_subject(out, step=1)
    assert not torch.equal(pipe.unet.conv_out.bias, trained)  # the checkpoint of step 1
    assert methods.training_record(out)["trainable_parameters"] == base.numel()
