"""Textual Inversion baseline: the placeholder's word embedding only (DreamVideo's stage 1, no identity adapter)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dreamvideo import artifacts
from dreamvideo.artifacts import EMBEDS_FILE
from dreamvideo.methods.dreamvideo_subject import DreamVideoSubject
from dreamvideo.methods.registry import register


@register
class TextualInversion(DreamVideoSubject):
    """DreamVideo's subject learner stopped after textual inversion (``settings.textual_inversion`` is its stage)."""

    name = "textual-inversion"
    summary = "the token's word embedding only"
    trains_identity = False

    def record(self, wall_seconds: float) -> dict[str, Any]:
        info = super().record(wall_seconds)
        return info | {
            "trainable_parameters": int(self.pipe.text_encoder.config.hidden_size),
            "training_seconds": info["training"]["textual_inversion"]["seconds"],
        }

    @classmethod
    def load(
        cls, pipe: Any, folder: Path, info: dict[str, Any], step: int | None, scale: float
    ) -> str | None:
        """The token, from the textual-inversion checkpoint of ``step`` if given (``scale`` does not apply)."""
        embeds = artifacts.checkpoint_file(folder, "textual_inversion", step, EMBEDS_FILE)
        if embeds.is_file():
            pipe.load_learned_token(embeds)
        return info.get("token") or info.get("class_word")
