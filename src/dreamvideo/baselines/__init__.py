"""The paper's comparison methods (method.md section 8), selectable by name (``--method``).

Every method writes a folder that ``generate --subject/--motion`` loads: ``subject.json`` or ``motion.json`` with
``"method"``, the trainable-parameter count and the training time, plus safetensors holding only what was trained.

=================== ============================================== ==============================================
method              subject                                        motion
=================== ============================================== ==============================================
dreamvideo          textual inversion + identity adapter           motion adapter + appearance guidance
textual-inversion   the token's embedding only                     -
dreamix             spatial UNet parameters, fixed identifier      -
finetune            spatial UNet parameters, class word only       temporal UNet parameters
lora                LoRA on spatial cross-attention k/v            LoRA on every self-attention k/v
tune-a-video        -                                              one video: every to_q + temporal attentions
animatediff         DreamBooth: spatial parameters, identifier     temporal transformers re-initialised, trained
=================== ============================================== ==============================================

Subject baselines with one training stage take a :class:`~dreamvideo.training.StageConfig`; by default it is
DreamVideo's identity stage with the step budget of both DreamVideo stages (:func:`default_stage`). Motion
baselines use ``MotionSettings.stage`` like DreamVideo.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dreamvideo.fileio import DreamVideoError

if TYPE_CHECKING:  # the heavy modules load on first use, so that ``dreamvideo --help`` stays fast
    from dreamvideo.pipeline import DreamVideoPipeline
    from dreamvideo.stages import MotionSettings, SubjectSettings
    from dreamvideo.training import StageConfig


class UnknownMethodError(DreamVideoError):
    pass


def _resolve(ref: str | None) -> Callable[..., Path] | None:
    if ref is None:
        return None
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Method:
    """A learning method and where its two learners live (``"module:function"``; ``None``: not supported).

    ``subject(pipe, images, out, settings, stage, masks=, overwrite=, resume=, progress=)`` and
    ``motion(pipe, videos, out, settings, captions=, overwrite=, resume=, progress=)`` return the written folder.
    """

    name: str
    summary: str
    subject_ref: str | None = None
    motion_ref: str | None = None

    @property
    def subject(self) -> Callable[..., Path] | None:
        return _resolve(self.subject_ref)

    @property
    def motion(self) -> Callable[..., Path] | None:
        return _resolve(self.motion_ref)


_B = "dreamvideo.baselines"
METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("dreamvideo", "textual inversion + identity adapter; motion adapter with appearance guidance",
               f"{_B}:_dreamvideo_subject", "dreamvideo.stages:learn_motion"),
        Method("textual-inversion", "the token's word embedding only", f"{_B}.textual_inversion:learn_subject"),
        Method("dreamix", "spatial UNet parameters with a fixed identifier (DreamBooth style), temporal frozen",
               f"{_B}.spatial:learn_dreamix"),
        Method("finetune", "ModelScopeT2V fine-tuning: spatial parameters on photos, temporal on videos",
               f"{_B}.spatial:learn_finetune", f"{_B}.temporal:learn_finetune"),
        Method("lora", "LoRA: cross-attention k/v for a subject, self-attention k/v for a motion",
               f"{_B}.lora:learn_subject", f"{_B}.lora:learn_motion"),
        Method("tune-a-video", "one video: every attention query and the temporal attentions", None,
               f"{_B}.temporal:learn_tune_a_video"),
        Method("animatediff", "DreamBooth on spatial layers; temporal transformers re-initialised and trained",
               f"{_B}.spatial:learn_animatediff", f"{_B}.temporal:learn_animatediff"),
    ]
}


def _dreamvideo_subject(pipe, images, out, settings, stage=None, masks=None, overwrite=False, resume=False,
                        progress=True, skip_identity=False) -> Path:
    from dreamvideo.stages import learn_subject as learn_dreamvideo_subject

    return learn_dreamvideo_subject(pipe, images, out, settings, masks=masks, overwrite=overwrite, resume=resume,
                                    progress=progress, skip_identity=skip_identity)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def subject_methods() -> list[str]:
    return [n for n, m in METHODS.items() if m.subject_ref is not None]


def motion_methods() -> list[str]:
    return [n for n, m in METHODS.items() if m.motion_ref is not None]


def default_stage(settings: SubjectSettings) -> StageConfig:
    """One-stage baselines: DreamVideo's identity-stage settings with the steps of both of its stages."""
    return dataclasses.replace(settings.identity, steps=settings.textual_inversion.steps + settings.identity.steps)


def learn_subject(method: str, pipe: DreamVideoPipeline, images: str | os.PathLike, out: str | os.PathLike,
                  settings: SubjectSettings, stage: StageConfig | None = None, masks: str | os.PathLike | None = None,
                  overwrite: bool = False, resume: bool = False, progress: bool = True, **options: Any) -> Path:
    """Learn a subject from photos with ``method``.

    Args:
        method: a name of :data:`METHODS` that supports subjects.
        pipe: the base model (modified in place: load a fresh one to generate).
        images, masks: the subject's photos and optional masks.
        out: the subject folder to write.
        settings: token, class word, caption, resolution, masks (and DreamVideo's and Textual Inversion's stages).
        stage: the one training stage of the other methods (default :func:`default_stage`).
        overwrite, resume: what to do with an existing ``out``.
        options: method-specific keywords (``lora``: ``rank``).
    """
    fn = get_method(method).subject
    if fn is None:
        raise UnknownMethodError(f"method {method!r} learns motions only; choose from {', '.join(subject_methods())}")
    return fn(pipe, images, out, settings, stage or default_stage(settings), masks=masks, overwrite=overwrite,
              resume=resume, progress=progress, **options)


def learn_motion(method: str, pipe: DreamVideoPipeline, videos: str | os.PathLike, out: str | os.PathLike,
                 settings: MotionSettings, captions: str | dict[str, str] | None = None, overwrite: bool = False,
                 resume: bool = False, progress: bool = True, **options: Any) -> Path:
    """Learn a motion from videos with ``method``.

    Args:
        method: a name of :data:`METHODS` that supports motions.
        pipe: the base model (modified in place).
        videos, captions: the motion videos and their captions.
        out: the motion folder to write.
        settings: clips, caption dropout and the training stage (appearance settings: DreamVideo only).
        overwrite, resume: what to do with an existing ``out``.
        options: method-specific keywords (``lora``: ``rank``).
    """
    fn = get_method(method).motion
    if fn is None:
        raise UnknownMethodError(f"method {method!r} learns subjects only; choose from {', '.join(motion_methods())}")
    return fn(pipe, videos, out, settings, captions=captions, overwrite=overwrite, resume=resume, progress=progress,
              **options)


def load_learned(pipe: DreamVideoPipeline, path: str | os.PathLike, info: dict[str, Any], kind: str,
                 step: int | None = None, scale: float = 1.0) -> str | None:
    """Load a baseline's subject or motion folder into ``pipe`` (called by ``load_subject``/``load_motion``).

    Args:
        pipe: the pipeline; its UNet weights, LoRA adapters and tokenizer are updated.
        path: the folder.
        info: its ``subject.json`` / ``motion.json``.
        kind: ``"subject"`` or ``"motion"``.
        step: use the checkpoint of this training step instead of the final result.
        scale: weight of what was learned: ``W0 + scale * (W1 - W0)`` for weights, the LoRA scale for LoRA
            (the token of Textual Inversion is not scaled).

    Returns:
        For a subject, the words naming it in prompts: its token (``"<sks>"``, ``"sks"``) or, without one, the class
        word. For a motion, ``None``.
    """
    from dreamvideo.baselines import lora
    from dreamvideo.baselines.common import load_weights
    from dreamvideo.fileio import load_safetensors
    from dreamvideo.pipeline import EMBEDS_FILE, _checkpoint_file

    path = Path(path)
    get_method(info.get("method", ""))
    token = None
    if kind == "subject":
        stage = "textual_inversion" if info["method"] == "textual-inversion" else None
        embeds = _checkpoint_file(path, stage, step, EMBEDS_FILE) if stage else path / EMBEDS_FILE
        if embeds.is_file():
            pipe.load_learned_token(embeds)
        token = info.get("token") or info.get("class_word")
    storage = info.get("storage")
    if storage is not None:
        file = _checkpoint_file(path, info["checkpoint_stage"], step, info["weights_file"])
        if storage == "lora":
            lora.load(pipe, info, file, scale)
        else:
            load_weights(pipe.unet, load_safetensors(file)[0], scale, str(file))
        pipe.unet.to(pipe.device)
    setattr(pipe, kind, info | {"path": str(path)})
    return token


def training_record(folder: str | os.PathLike) -> dict[str, Any]:
    """``{"method", "kind", "trainable_parameters", "training_seconds"}`` of any method's subject or motion folder.

    ``training_seconds`` counts the optimisation steps of every stage (the trainers' clocks, kept across
    resumptions), not data loading, latent caching or checkpoint writing.
    """
    from dreamvideo.fileio import read_json
    from dreamvideo.pipeline import EMBEDS_FILE, MOTION_FILE, SUBJECT_FILE
    from dreamvideo.textual_inversion import load_learned_embeds

    folder = Path(folder)
    kind = "subject" if (folder / SUBJECT_FILE).is_file() else "motion"
    info = read_json(folder / (SUBJECT_FILE if kind == "subject" else MOTION_FILE))
    method = info.get("method", "dreamvideo")
    if "trainable_parameters" in info:
        params, seconds = info["trainable_parameters"], info["training_seconds"]
    elif kind == "subject":  # DreamVideo: the token (if trained) and the identity adapter
        ti, identity = info["training"]["textual_inversion"], info["training"]["identity_adapter"]
        token_dim = len(load_learned_embeds(folder / EMBEDS_FILE)[1]) if ti["steps_done"] > 0 else 0
        params = token_dim + info["identity_adapter_parameters"]
        seconds = ti["seconds"] + (identity["seconds"] if identity else 0.0)
    else:
        params, seconds = info["motion_adapter_parameters"], info["training"]["seconds"]
    return {"method": method, "kind": kind, "trainable_parameters": int(params), "training_seconds": float(seconds)}
