"""The methods by name, and the three things done by name: learn a subject, learn a motion, load a folder back.

Every method is a :class:`~dreamvideo.methods.learner.Learner` class registered with :func:`register` under its
``(kind, name)``; ``--method`` of the CLI, the benchmark's entries and ``pipe.load_subject`` / ``pipe.load_motion``
(through :func:`load_into`, by the ``"method"`` of the folder's JSON) all look it up here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dreamvideo import artifacts
from dreamvideo.fileio import DreamVideoError

if TYPE_CHECKING:
    from dreamvideo.methods.learner import Learner, PreviewSettings
    from dreamvideo.methods.motion import MotionSettings
    from dreamvideo.methods.subject import SubjectSettings
    from dreamvideo.training import StageConfig

_LEARNERS: dict[tuple[str, str], type[Learner]] = {}  # (kind, name) -> learner, in registration order


class UnknownMethodError(DreamVideoError):
    pass


def register(learner: type[Learner]) -> type[Learner]:
    """Make ``learner`` available under its ``kind`` and ``name`` (usable as a class decorator).

    Args:
        learner: a :class:`~dreamvideo.methods.learner.Learner` subclass with ``name`` and ``kind`` set.

    Raises:
        ValueError: its name or kind is missing, or another learner holds that name for that kind.
    """
    key = (learner.kind, learner.name)
    if learner.kind not in artifacts.KINDS or not learner.name:
        raise ValueError(
            f"{learner.__name__}: set the class attributes kind ('subject' or 'motion') and name"
        )
    if _LEARNERS.get(key, learner) is not learner:
        raise ValueError(
            f"a {learner.kind} method named {learner.name!r} is already registered ({_LEARNERS[key]})"
        )
    _LEARNERS[key] = learner
    return learner


def unregister(learner: type[Learner]) -> None:
    """Remove a learner added with :func:`register` (tests that add their own)."""
    if _LEARNERS.get((learner.kind, learner.name)) is learner:
        del _LEARNERS[learner.kind, learner.name]


def names(kind: str | None = None) -> list[str]:
    """The method names that learn ``kind`` (``None``: either), in registration order."""
    return list(dict.fromkeys(name for k, name in _LEARNERS if kind in (None, k)))


def get(name: str, kind: str) -> type[Learner]:
    """The learner of method ``name`` for ``kind``.

    Raises:
        UnknownMethodError: no such method, or it does not learn ``kind`` (the message lists the choices).
    """
    if name not in names():
        raise UnknownMethodError(f"unknown method {name!r}; choose from {', '.join(names())}")
    if (kind, name) not in _LEARNERS:
        other = "motions" if kind == "subject" else "subjects"
        raise UnknownMethodError(f"method {name!r} learns {other} only; choose from {', '.join(names(kind))}")
    return _LEARNERS[kind, name]


def learn_subject(
    pipe: Any,
    images: str | os.PathLike,
    out: str | os.PathLike,
    settings: SubjectSettings,
    method: str = "dreamvideo",
    stage: StageConfig | None = None,
    masks: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    preview: PreviewSettings | None = None,
    **options: Any,
) -> Path:
    """Learn a subject from photos with ``method``.

    Args:
        pipe: the base model (modified in place: load a fresh one to generate).
        images: folder of photos (``images/`` + ``masks/`` subfolders are recognised).
        out: the subject folder to write.
        settings: token, class word, caption, resolution, masks and DreamVideo's two stages.
        method: a name of :func:`names` ``("subject")``.
        stage: the one training stage of the one-stage baselines (default: both DreamVideo stages' steps at the
            identity stage's settings); DreamVideo and Textual Inversion take theirs from ``settings``.
        masks: optional mask folder.
        overwrite, resume: what to do with an existing ``out``.
        progress: show progress bars.
        preview: optional preview videos every N steps of each stage.
        options: method-specific keywords (``lora``: ``rank``).

    Returns:
        The subject folder.
    """
    learner = get(method, "subject")(pipe, settings, stage, **options)
    return learner.learn(
        images, out, masks, overwrite=overwrite, resume=resume, progress=progress, preview=preview
    )


def learn_motion(
    pipe: Any,
    videos: str | os.PathLike,
    out: str | os.PathLike,
    settings: MotionSettings,
    method: str = "dreamvideo",
    captions: str | dict[str, str] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    preview: PreviewSettings | None = None,
    **options: Any,
) -> Path:
    """Learn a motion from videos with ``method``.

    Args:
        pipe: the base model (with an image encoder for DreamVideo's appearance guidance).
        videos: a folder of videos (with optional ``captions.json``) or one video file.
        out: the motion folder to write.
        settings: clips, caption dropout, the training stage (appearance settings: DreamVideo only).
        method: a name of :func:`names` ``("motion")``.
        captions: one caption for all videos, or a file-name -> caption mapping.
        overwrite, resume: what to do with an existing ``out``.
        progress: show progress bars.
        preview: optional preview videos every N steps.
        options: method-specific keywords (``lora``: ``rank``).

    Returns:
        The motion folder.
    """
    learner = get(method, "motion")(pipe, settings, None, **options)
    return learner.learn(
        videos, out, captions, overwrite=overwrite, resume=resume, progress=progress, preview=preview
    )


def load_into(
    pipe: Any, folder: str | os.PathLike, kind: str, step: int | None = None, scale: float = 1.0
) -> str | None:
    """Load a subject or motion folder of any method into ``pipe`` (``pipe.load_subject`` / ``pipe.load_motion``).

    Args:
        pipe: the pipeline.
        folder: the folder.
        kind: ``"subject"`` or ``"motion"``.
        step: use the checkpoint of this training step instead of the final result.
        scale: weight of what was learned (adapter or LoRA scale; ``W0 + scale * (W1 - W0)`` for weights).

    Returns:
        For a subject, the words naming it in prompts (``None`` without a learned word); for a motion ``None``.
    """
    folder = Path(folder)
    info = artifacts.read_info(folder, kind)
    artifacts.check_base(info, pipe.base_description(), f"{kind} {folder}")
    words = get(info.get("method", "dreamvideo"), kind).load(pipe, folder, info, step, scale)
    setattr(pipe, kind, info | {"path": str(folder)})
    return words


def training_record(folder: str | os.PathLike) -> dict[str, Any]:
    """``{"method", "kind", "trainable_parameters", "training_seconds"}`` of any method's subject or motion folder.

    ``training_seconds`` counts the optimisation steps of every stage (the trainers' clocks, kept across
    resumptions), not data loading, latent caching or checkpoint writing.
    """
    folder = Path(folder)
    kind = "subject" if (folder / artifacts.SUBJECT_FILE).is_file() else "motion"
    info = artifacts.read_info(folder, kind)
    method = info.get("method", "dreamvideo")
    params, seconds = get(method, kind).training_cost(folder, info)
    return {
        "method": method,
        "kind": kind,
        "trainable_parameters": int(params),
        "training_seconds": float(seconds),
    }
