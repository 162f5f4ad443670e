"""DreamVideo's subject (section 4): textual inversion of a new token, then the identity adapter with the token frozen.

Files: ``learned_embeds.safetensors`` (the token, diffusers' textual-inversion format), ``identity_adapter.safetensors``
(without one when ``SubjectSettings.identity_adapter`` is ``None``), ``subject.json``; checkpoints of both stages in
``checkpoints/textual_inversion/`` and ``checkpoints/identity_adapter/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from dreamvideo import adapters as ad
from dreamvideo import artifacts
from dreamvideo.artifacts import EMBEDS_FILE, IDENTITY_FILE
from dreamvideo.data import SubjectData
from dreamvideo.methods.adapter_files import attach_fresh, load_adapter, restore_adapter, save_adapter
from dreamvideo.methods.latents import tokenize
from dreamvideo.methods.learner import Stage
from dreamvideo.methods.registry import register
from dreamvideo.methods.subject import SubjectLearner, SubjectSettings, check_subject_settings
from dreamvideo.textual_inversion import (
    PlaceholderEmbedding,
    add_placeholder_token,
    load_learned_embeds,
    save_learned_embeds,
    unwrap_placeholder,
    wrap_placeholder,
)
from dreamvideo.training import StageConfig, Trainer


@register
class DreamVideoSubject(SubjectLearner):
    """Textual inversion (only the new token's embedding row trains), then the identity adapter (only it trains).

    Class attributes:
        trains_identity: run stage 2 (``False``: the Textual Inversion baseline).
    """

    name = "dreamvideo"
    summary = "textual inversion + identity adapter"
    trains_identity: ClassVar[bool] = True

    @classmethod
    def check_settings(
        cls, tokenizer: Any, settings: SubjectSettings, data: SubjectData | None = None
    ) -> None:
        check_subject_settings(tokenizer, settings, data)

    @property
    def identity_config(self) -> ad.AdapterConfig | None:
        """The identity adapter this run trains (``None``: stage 1 only)."""
        return self.settings.identity_adapter if self.trains_identity else None

    def prepare(self, data: SubjectData) -> None:
        super().prepare(data)
        s, pipe = self.settings, self.pipe
        self.token_id = add_placeholder_token(pipe.tokenizer, pipe.text_encoder, s.token, s.init_word)
        self.caption = s.caption.format(token=s.token, word=s.init_word)
        self.ids = tokenize(pipe, self.caption)

    def stages(self):
        embed = wrap_placeholder(self.pipe.text_encoder, self.token_id)
        yield self._textual_inversion(embed)
        self.vector = unwrap_placeholder(self.pipe.text_encoder)  # frozen from here on
        if self.identity_config is not None:
            yield self._identity_adapter()

    def _textual_inversion(self, embed: PlaceholderEmbedding) -> Stage:
        """Stage 1: the token's row of the embedding table (``train_token=False``: zero steps)."""
        s, pipe = self.settings, self.pipe
        config = s.textual_inversion if s.train_token else StageConfig(steps=0, lr=s.textual_inversion.lr)

        def load(folder: Path) -> None:
            with torch.no_grad():
                embed.vector.copy_(load_learned_embeds(folder / EMBEDS_FILE)[1])

        return Stage(
            name="textual_inversion",
            title="textual inversion",
            params=[embed.vector],
            loss=self.loss(config, lambda: pipe.text_encoder(self.ids)[0]),
            save=lambda folder: self._save_token(folder, embed.vector),
            load=load,
            config=config,
            train_mode=(pipe.unet, pipe.text_encoder),
            preview_prompt=self.caption,
        )

    def _identity_adapter(self) -> Stage:
        """Stage 2: the identity adapter on the frozen token (the caption's features computed once)."""
        pipe, config, stage = self.pipe, self.identity_config, self.settings.identity
        with torch.no_grad():
            text = pipe.text_encoder(self.ids)[0]
        params = attach_fresh(pipe.unet, config, stage.seed)
        return Stage(
            name="identity_adapter",
            title="identity adapter",
            params=params,
            loss=self.loss(stage, lambda: text),
            save=lambda folder: save_adapter(pipe.unet, config, folder / IDENTITY_FILE),
            load=lambda folder: restore_adapter(pipe.unet, config, folder / IDENTITY_FILE),
            config=stage,
            train_mode=(pipe.unet,),
            preview_prompt=self.caption,
        )

    def _save_token(self, folder: Path, vector: torch.Tensor) -> None:
        meta = {"token": self.settings.token, "init_word": self.settings.init_word}
        save_learned_embeds(folder / EMBEDS_FILE, self.settings.token, vector, meta)

    def save(self, folder: Path) -> list[str]:
        self._save_token(folder, self.vector)
        if "identity_adapter" not in self.trainers:
            return [EMBEDS_FILE]
        save_adapter(self.pipe.unet, self.identity_config, folder / IDENTITY_FILE)
        return [EMBEDS_FILE, IDENTITY_FILE]

    def record(self, wall_seconds: float) -> dict[str, Any]:
        s = self.settings
        ti, identity = self.trainers["textual_inversion"], self.trainers.get("identity_adapter")
        config = self.identity_config if identity else None
        adapter_parameters = ad.count_adapter_parameters(self.pipe.unet, config.name) if config else 0
        return {
            "type": "dreamvideo-subject",
            "token": s.token,
            "init_word": s.init_word,
            "class_word": s.init_word,
            "caption": self.caption,
            "identity_adapter": config.to_dict() if config else None,
            "identity_adapter_parameters": adapter_parameters,
            "trainable_parameters": (self.vector.numel() if ti.step > 0 else 0) + adapter_parameters,
            "training_seconds": _seconds(ti) + (_seconds(identity) if identity else 0.0),
            **super().record(wall_seconds),
            "training": {
                "textual_inversion": _done(s.textual_inversion, ti),
                "identity_adapter": _done(s.identity, identity) if identity else None,
                "wall_seconds": wall_seconds,
            },
            "losses": {
                "textual_inversion": ti.losses,
                "identity_adapter": identity.losses if identity else [],
            },
        }

    @classmethod
    def load(
        cls, pipe: Any, folder: Path, info: dict[str, Any], step: int | None, scale: float
    ) -> str | None:
        """The token (if the folder has one) and the identity adapter of ``step`` (a checkpoint) or the final one."""
        token = None
        if (folder / EMBEDS_FILE).is_file() or info.get("token", "") is not None:
            token = pipe.load_learned_token(folder / EMBEDS_FILE)
        if info.get("identity_adapter") is not None:
            file = artifacts.checkpoint_file(folder, "identity_adapter", step, IDENTITY_FILE)
            load_adapter(pipe, ad.AdapterConfig.from_dict(info["identity_adapter"]), file, scale)
        return token

    @classmethod
    def training_cost(cls, folder: Path, info: dict[str, Any]) -> tuple[int, float]:
        if "trainable_parameters" in info:
            return super().training_cost(folder, info)
        ti, identity = (
            info["training"]["textual_inversion"],
            info["training"]["identity_adapter"],
        )  # older folders
        token_dim = len(load_learned_embeds(folder / EMBEDS_FILE)[1]) if ti["steps_done"] > 0 else 0
        seconds = ti["seconds"] + (identity["seconds"] if identity else 0.0)
        return token_dim + info["identity_adapter_parameters"], seconds


def _seconds(trainer: Trainer) -> float:
    return round(trainer.seconds, 2)


def _done(config: StageConfig, trainer: Trainer) -> dict[str, Any]:
    """A stage's settings with the steps done and the seconds they took."""
    return config.to_dict() | {"steps_done": trainer.step, "seconds": _seconds(trainer)}
