"""What the one-stage baselines share: one stage named ``training`` that trains a :class:`~.weights.Trainable`.

A subject baseline subclasses :class:`BaselineSubject`, a motion baseline :class:`BaselineMotion`, and says only what
it trains (:meth:`OneStage.trainable`); stored LoRA instead of weights also overrides :meth:`OneStage.load_trained`.
Their folders hold the trained tensors (``weights_file``), ``learned_embeds.safetensors`` when a DreamBooth
identifier had to be added to the vocabulary, and the JSON; checkpoints go to ``checkpoints/training/``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import torch

from dreamvideo import artifacts
from dreamvideo.artifacts import EMBEDS_FILE
from dreamvideo.fileio import load_safetensors
from dreamvideo.methods.latents import tokenize
from dreamvideo.methods.learner import Stage
from dreamvideo.methods.motion import MotionLearner, MotionSettings
from dreamvideo.methods.subject import SubjectLearner, SubjectSettings
from dreamvideo.methods.weights import Trainable, count, load_weights
from dreamvideo.textual_inversion import add_placeholder_token
from dreamvideo.textual_inversion import save_learned_embeds as save_token
from dreamvideo.training import StageConfig

CHECKPOINT_STAGE = "training"  # checkpoints/<stage>/step-NNNNNN/ of every one-stage baseline
RARE_WORD = "sks"  # DreamBooth's identifier, used where the tokenizer has it as one token


def default_stage(settings: SubjectSettings) -> StageConfig:
    """One-stage subject baselines: DreamVideo's identity-stage settings with the steps of both of its stages."""
    return dataclasses.replace(
        settings.identity, steps=settings.textual_inversion.steps + settings.identity.steps
    )


def add_identifier(pipe: Any, token: str, class_word: str) -> tuple[str, bool]:
    """DreamBooth's fixed identifier: ``sks`` if the tokenizer has it as one token, else ``token`` added with the
    class word's embedding (never trained). Returns ``(identifier, added)``."""
    tok = pipe.tokenizer
    ids = tok.encode(RARE_WORD, add_special_tokens=False)
    if len(ids) == 1 and ids[0] != tok.unk_token_id:
        return RARE_WORD, False
    add_placeholder_token(tok, pipe.text_encoder, token, class_word)
    return token, True


class OneStage:
    """Mixed into a :class:`SubjectLearner` or :class:`MotionLearner`: train :meth:`trainable` in one stage."""

    def trainable(self) -> Trainable:
        """Make the trained parameters (called once the data is cached; may modify the UNet, e.g. inject LoRA)."""
        raise NotImplementedError

    def one_stage(self, loss, preview_prompt: str) -> Stage:
        """The stage that trains :attr:`trained` with ``loss``."""
        t = self.trained
        return Stage(
            name=CHECKPOINT_STAGE,
            title=f"{self.name} ({self.kind})",
            params=list(t.params.values()),
            loss=loss,
            save=lambda folder: t.save(folder / t.file),
            load=lambda folder: t.load(folder / t.file),
            config=self.stage,
            train_mode=(self.pipe.unet,),
            preview_prompt=preview_prompt,
        )

    def save(self, folder: Path) -> list[str]:
        self.trained.save(folder / self.trained.file)
        return [self.trained.file]

    def record(self, wall_seconds: float) -> dict[str, Any]:
        trainer, t = self.trainers[CHECKPOINT_STAGE], self.trained
        seconds = round(trainer.seconds, 2)  # optimisation steps only, across resumptions
        return {
            "type": f"baseline-{self.kind}",
            "weights_file": t.file,
            "checkpoint_stage": CHECKPOINT_STAGE,
            "trainable_parameters": count(t.params),
            "training_seconds": seconds,
            **t.info,
            "training": self.stage.to_dict()
            | {"steps_done": trainer.step, "seconds": seconds, "wall_seconds": wall_seconds},
            "losses": trainer.losses,
            **super().record(wall_seconds),
        }

    @classmethod
    def load_trained(cls, pipe: Any, file: Path, info: dict[str, Any], scale: float) -> None:
        """Put the stored tensors into ``pipe``'s UNet: ``W0 + scale * (W1 - W0)``."""
        load_weights(pipe.unet, load_safetensors(file)[0], scale, str(file))

    @classmethod
    def load(
        cls, pipe: Any, folder: Path, info: dict[str, Any], step: int | None, scale: float
    ) -> str | None:
        file = artifacts.checkpoint_file(folder, info["checkpoint_stage"], step, info["weights_file"])
        cls.load_trained(pipe, file, info, scale)
        pipe.unet.to(pipe.device)
        return None


class BaselineSubject(OneStage, SubjectLearner):
    """A subject baseline: fine-tune :meth:`trainable` on the photos (1-frame videos, mask loss).

    Class attributes:
        identifier: caption with DreamBooth's fixed identifier (``"a sks dog"``); ``False``: the class word only.
    """

    identifier: ClassVar[bool] = True

    def __init__(self, pipe: Any, settings: SubjectSettings, stage: StageConfig | None = None) -> None:
        super().__init__(pipe, settings, stage or default_stage(settings))

    def prepare(self, data) -> None:
        super().prepare(data)
        word = self.settings.init_word
        self.token, self.added = (
            add_identifier(self.pipe, self.settings.token, word) if self.identifier else (None, False)
        )
        self.caption = " ".join(self.settings.caption.format(token=self.token or "", word=word).split())
        with torch.no_grad():
            self.text = self.pipe.text_encoder(tokenize(self.pipe, self.caption))[0]
        self.trained = self.trainable()

    def stages(self):
        yield self.one_stage(self.loss(self.stage, lambda: self.text), self.caption)

    def save(self, folder: Path) -> list[str]:
        names = super().save(folder)
        if not self.added:
            return names
        # the identifier's (untrained) embedding, so that generation can add the same token
        vector = self.pipe.text_encoder.get_input_embeddings().weight[
            self.pipe.tokenizer.convert_tokens_to_ids(self.token)
        ]
        meta = {"token": self.token, "init_word": self.settings.init_word, "trained": "false"}
        save_token(folder / EMBEDS_FILE, self.token, vector, meta)
        return [*names, EMBEDS_FILE]

    def record(self, wall_seconds: float) -> dict[str, Any]:
        word = self.settings.init_word
        return super().record(wall_seconds) | {
            "token": self.token,
            "init_word": word,
            "class_word": word,
            "caption": self.caption,
            "identifier_trained": False,
        }

    @classmethod
    def load(
        cls, pipe: Any, folder: Path, info: dict[str, Any], step: int | None, scale: float
    ) -> str | None:
        """The identifier (if it was added), then the trained tensors; returns the identifier or the class word."""
        if (folder / EMBEDS_FILE).is_file():
            pipe.load_learned_token(folder / EMBEDS_FILE)
        super().load(pipe, folder, info, step, scale)
        return info.get("token") or info.get("class_word")


class BaselineMotion(OneStage, MotionLearner):
    """A motion baseline: fine-tune :meth:`trainable` on the clips (no appearance guidance: only DreamVideo's motion
    adapter takes the appearance embedding)."""

    def __init__(self, pipe: Any, settings: MotionSettings, stage: StageConfig | None = None) -> None:
        super().__init__(pipe, dataclasses.replace(settings, appearance_guidance=False), stage)

    def prepare(self, data) -> None:
        super().prepare(data)
        self.trained = self.trainable()

    def stages(self):
        yield self.one_stage(self.loss(self.stage), self.data.captions[0])
