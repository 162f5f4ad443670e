"""Settings and probes shared by the learners' tests: the tiny model, a few steps each."""

from __future__ import annotations

from pathlib import Path

import torch

from dreamvideo.methods import MotionSettings, SubjectSettings, weights
from dreamvideo.pipeline import DreamVideoPipeline
from dreamvideo.training import StageConfig


def stage(steps: int = 2, **kw) -> StageConfig:
    """A baseline's stage: lr 1e-2, batch 1, a checkpoint every step, no warm-up."""
    return StageConfig(
        **({"steps": steps, "lr": 1e-2, "batch_size": 1, "checkpoint_every": 1, "warmup_steps": 0} | kw)
    )


def baseline_subject_settings() -> SubjectSettings:
    return SubjectSettings(
        token="<sks>",
        init_word="dog",
        caption="a {token} {word}",
        textual_inversion=stage(),
        identity=stage(),
    )


def baseline_motion_settings(**kw) -> MotionSettings:
    return MotionSettings(**({"num_frames": 2, "stage": stage()} | kw))


def dreamvideo_subject_settings(**kw) -> SubjectSettings:
    """DreamVideo's two stages, 4 steps of batch 2 each, checkpoints at 2 and 4."""
    four = StageConfig(steps=4, lr=1e-2, batch_size=2, checkpoint_every=2)
    return SubjectSettings(
        **({"token": "<sks>", "init_word": "dog", "textual_inversion": four, "identity": four} | kw)
    )


def dreamvideo_motion_settings(**kw) -> MotionSettings:
    """4-frame clips, 4 steps of batch 2, checkpoints at 2 and 4."""
    four = StageConfig(steps=4, lr=1e-2, batch_size=2, checkpoint_every=2)
    return MotionSettings(**({"num_frames": 4, "stage": four} | kw))


def fresh(base: Path) -> DreamVideoPipeline:
    return DreamVideoPipeline.from_pretrained(str(base))


def snapshot(pipe: DreamVideoPipeline) -> dict[str, torch.Tensor]:
    """Copies of the UNet's base parameters by state-dict name."""
    return {n: p.detach().clone() for n, p in weights.unet_parameters(pipe.unet).items()}


@torch.no_grad()
def unet_output(pipe: DreamVideoPipeline, token_text: str = "a dog") -> torch.Tensor:
    """The UNet's output on fixed noise at t = 10 for ``token_text``."""
    x = torch.randn((1, 4, 2, 2, 2), generator=torch.Generator().manual_seed(0))
    return pipe.unet(x, 10, encoder_hidden_states=pipe.encode_text([token_text])).sample


def stored_files(folder: Path) -> set[str]:
    """The suffixes of every file below ``folder``."""
    return {p.suffix for p in folder.rglob("*") if p.is_file()}
