"""DreamVideo's motion (section 5): the motion adapter in the temporal blocks, with appearance guidance.

Files: ``motion_adapter.safetensors`` and ``motion.json``; checkpoints in ``checkpoints/motion_adapter/``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dreamvideo import adapters as ad
from dreamvideo import artifacts
from dreamvideo.artifacts import MOTION_ADAPTER_FILE
from dreamvideo.data import MotionData
from dreamvideo.fileio import DreamVideoError
from dreamvideo.methods.adapter_files import attach_fresh, load_adapter, restore_adapter, save_adapter
from dreamvideo.methods.learner import Stage
from dreamvideo.methods.motion import MotionLearner, MotionSettings
from dreamvideo.methods.registry import register
from dreamvideo.training import StageConfig


@register
class DreamVideoMotion(MotionLearner):
    """Only the motion adapter trains; each clip's adapters see the embedding of one of its frames (``e``)."""

    name = "dreamvideo"
    summary = "motion adapter + appearance guidance"

    def __init__(self, pipe: Any, settings: MotionSettings, stage: StageConfig | None = None) -> None:
        super().__init__(pipe, settings, stage)
        guided = settings.appearance_guidance
        self.config = settings.motion_adapter or ad.motion_adapter_config(
            pipe.condition_dim if guided else None
        )

    def read_inputs(
        self, videos: str | os.PathLike, captions: str | dict[str, str] | None = None
    ) -> MotionData:
        if self.settings.appearance_guidance and self.pipe.image_encoder is None:
            raise DreamVideoError(
                "appearance guidance needs an image encoder: the base has no image_encoder/ folder; pass "
                "--image-encoder PATH (a CLIPVisionModelWithProjection) or --no-appearance-guidance"
            )
        return super().read_inputs(videos, captions)

    def stages(self):
        unet, config = self.pipe.unet, self.config
        params = attach_fresh(unet, config, self.stage.seed)

        def condition(embeds) -> None:
            ad.set_adapter_condition(unet, config.name, embeds, 1.0)

        try:
            yield Stage(
                name="motion_adapter",
                title="motion adapter",
                params=params,
                loss=self.loss(self.stage, condition),
                save=lambda folder: save_adapter(unet, config, folder / MOTION_ADAPTER_FILE),
                load=lambda folder: restore_adapter(unet, config, folder / MOTION_ADAPTER_FILE),
                config=self.stage,
                train_mode=(unet,),
                preview_prompt=self.data.captions[0],
            )
        finally:
            ad.clear_adapter_condition(unet, config.name)  # however training ends

    def save(self, folder: Path) -> list[str]:
        save_adapter(self.pipe.unet, self.config, folder / MOTION_ADAPTER_FILE)
        return [MOTION_ADAPTER_FILE]

    def record(self, wall_seconds: float) -> dict[str, Any]:
        s, trainer = self.settings, self.trainers["motion_adapter"]
        parameters = ad.count_adapter_parameters(self.pipe.unet, self.config.name)
        return {
            "type": "dreamvideo-motion",
            "motion_adapter": self.config.to_dict(),
            "motion_adapter_parameters": parameters,
            "trainable_parameters": parameters,
            "training_seconds": round(trainer.seconds, 2),
            **super().record(wall_seconds),
            "target_fps": s.target_fps,
            "frame_strides": [s.stride(fps) for fps in self.data.fps],
            "appearance_dropout": s.appearance_dropout,
            "training": self.stage.to_dict()
            | {
                "steps_done": trainer.step,
                "seconds": round(trainer.seconds, 2),
                "wall_seconds": wall_seconds,
            },
            "losses": trainer.losses,
        }

    @classmethod
    def load(cls, pipe: Any, folder: Path, info: dict[str, Any], step: int | None, scale: float) -> None:
        """The motion adapter of ``step`` (a checkpoint) or the final one, at output scale ``scale``."""
        file = artifacts.checkpoint_file(folder, "motion_adapter", step, MOTION_ADAPTER_FILE)
        load_adapter(pipe, ad.AdapterConfig.from_dict(info["motion_adapter"]), file, scale)

    @classmethod
    def training_cost(cls, folder: Path, info: dict[str, Any]) -> tuple[int, float]:
        if "trainable_parameters" in info:
            return super().training_cost(folder, info)
        return info["motion_adapter_parameters"], info["training"]["seconds"]  # older folders
