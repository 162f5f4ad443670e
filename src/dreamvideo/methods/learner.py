"""The method interface: a :class:`Learner` says what is trained and how; :func:`fit` runs any learner the same way.

A learner is built for one run (``Learner(pipe, settings, stage)``) and answers four questions:

- **which batches**: :meth:`Learner.prepare` caches the inputs (latents, caption features) once;
- **what is trainable**: :meth:`Learner.stages` yields its training stages in order, each a :class:`Stage` with the
  trainable tensors, the loss of one batch, and how that stage's files are saved and loaded (checkpoints);
- **what the folder holds**: :meth:`Learner.save` writes the final files, :meth:`Learner.record` the JSON fields;
- **how to load a folder**: the class method :meth:`Learner.load` puts a finished folder into a pipeline.

:func:`fit` does everything else identically for every method: the locked output folder (:mod:`dreamvideo.artifacts`),
one :class:`~dreamvideo.training.Trainer` per stage with checkpoints, resume, previews and gradient checkpointing, the
per-process staging folder and publishing the result, marker JSON last.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from dreamvideo import artifacts
from dreamvideo.training import StageConfig, Trainer


@dataclass
class Stage:
    """One training stage of a learner.

    Args:
        name: the checkpoint folder (``checkpoints/<name>/``) and the previews' prefix, e.g. ``"identity_adapter"``.
        title: the trainer's name in progress bars and the web app, e.g. ``"identity adapter"``.
        params: the trainable tensors; nothing else changes.
        loss: ``loss(step, generator)`` draws a batch from ``generator`` and returns its loss.
        save: ``save(folder)`` writes this stage's result files (a checkpoint has the final files' format).
        load: ``load(folder)`` restores them from a checkpoint (resume).
        config: steps, learning rate, batch size, seed, precision of the stage.
        train_mode: frozen modules kept in train mode (their dropout active, as the authors train).
        preview_prompt: the default prompt of preview videos (``None``: this stage writes no previews).
    """

    name: str
    title: str
    params: list[nn.Parameter]
    loss: Callable[[int, torch.Generator], torch.Tensor]
    save: Callable[[Path], None]
    load: Callable[[Path], None]
    config: StageConfig
    train_mode: tuple[nn.Module, ...] = ()
    preview_prompt: str | None = None


@dataclass
class PreviewSettings:
    """A short video rendered every ``every`` steps while training, written to ``OUT/previews/``.

    Args:
        every: steps between previews (0: no previews).
        prompt: the prompt (default: the stage's, e.g. the training caption "a <sks> dog").
        num_frames, steps, guidance_scale, seed: sampling settings (DDIM steps kept low: previews are for a glance).
    """

    every: int = 0
    prompt: str | None = None
    num_frames: int = 8
    steps: int = 25
    guidance_scale: float | None = None  # None: the base's default
    seed: int = 0

    def renderer(self, pipe: Any, out: Path, stage: str, default_prompt: str) -> Callable[[int], None]:
        """``render(step)`` writing ``OUT/previews/<stage>-step-NNNNNN.mp4`` and ``.gif``.

        Args:
            pipe: the pipeline being trained (sampled as it is).
            out: the run's work folder.
            stage: the stage's name.
            default_prompt: the prompt when :attr:`prompt` is not set.
        """
        from dreamvideo.video_io import write_video

        def render(step: int) -> None:
            frames = pipe(
                self.prompt or default_prompt,
                num_frames=self.num_frames,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance_scale,
                generator=torch.Generator().manual_seed(self.seed),
                progress=False,
            ).frames[0]
            folder = out / "previews"
            folder.mkdir(exist_ok=True)
            for ext in (".mp4", ".gif"):
                write_video(frames, folder / f"{stage}-step-{step:06d}{ext}")

        return render


class Learner:
    """One way of learning a subject or a motion; subclass :class:`~dreamvideo.methods.subject.SubjectLearner` or
    :class:`~dreamvideo.methods.motion.MotionLearner` and :func:`~dreamvideo.methods.register` it.

    Args:
        pipe: the base model; training modifies it in place (load a fresh one to generate).
        settings: the kind's settings (``SubjectSettings`` / ``MotionSettings``).
        stage: the training stage of one-stage methods (others take their stages from ``settings``).

    Class attributes:
        name: the method's name: ``--method``, the registry key and the folder JSON's ``"method"``.
        kind: ``"subject"`` or ``"motion"``.
        summary: one line for the docs and ``--help``.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def __init__(self, pipe: Any, settings: Any, stage: StageConfig | None = None) -> None:
        self.pipe, self.settings, self.stage = pipe, settings, stage
        self.trainers: dict[str, Trainer] = {}  # by stage name, filled by :func:`fit`

    @property
    def marker(self) -> str:
        """The result's JSON file name."""
        return artifacts.marker_of(self.kind)

    def read_inputs(self, source: str | os.PathLike, extra: Any = None) -> Any:
        """Load and validate the inputs before any work: photos and masks, or videos and captions."""
        raise NotImplementedError

    def learn(
        self,
        source: str | os.PathLike,
        out: str | os.PathLike,
        extra: Any = None,
        overwrite: bool = False,
        resume: bool = False,
        progress: bool = True,
        preview: PreviewSettings | None = None,
    ) -> Path:
        """Read the inputs (:meth:`read_inputs`) and :func:`fit` them into the folder ``out``.

        Args:
            source: a subject's photo folder, or a motion's videos (a folder or one file).
            out: the folder to write.
            extra: a mask folder, or the videos' captions (one for all, or file name -> caption).
            overwrite, resume, progress, preview: as for :func:`fit`.
        """
        return fit(self, self.read_inputs(source, extra), out, overwrite, resume, progress, preview)

    def prepare(self, data: Any) -> None:
        """Cache what the losses draw from (called once, in the locked output folder, before :meth:`stages`)."""
        raise NotImplementedError

    def stages(self) -> Iterator[Stage]:
        """The training stages in order. A generator: the code after a ``yield`` runs once that stage is trained."""
        raise NotImplementedError

    def save(self, folder: Path) -> list[str]:
        """Write the final files into ``folder``; return their names."""
        raise NotImplementedError

    def record(self, wall_seconds: float) -> dict[str, Any]:
        """The marker JSON's method-specific fields (:func:`fit` adds ``method``, ``format_version``, ``base``)."""
        raise NotImplementedError

    @classmethod
    def load(
        cls, pipe: Any, folder: Path, info: dict[str, Any], step: int | None, scale: float
    ) -> str | None:
        """Load a finished folder of this method into ``pipe``.

        Args:
            pipe: the pipeline (its UNet, tokenizer and text encoder are updated).
            folder: the folder.
            info: its marker JSON.
            step: a checkpoint step instead of the final result.
            scale: weight of what was learned (adapter scale, LoRA scale, weight interpolation).

        Returns:
            For a subject, the words naming it in prompts (its token or class word); for a motion ``None``.
        """
        raise NotImplementedError

    @classmethod
    def training_cost(cls, folder: Path, info: dict[str, Any]) -> tuple[int, float]:
        """``(trainable parameters, seconds of optimisation steps)`` of a finished folder."""
        return int(info["trainable_parameters"]), float(info["training_seconds"])


def fit(
    learner: Learner,
    data: Any,
    out: str | Path,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    preview: PreviewSettings | None = None,
) -> Path:
    """Train ``learner`` on ``data`` into the folder ``out`` and publish the result.

    Args:
        learner: the method, built for this run.
        data: its validated inputs (``SubjectData`` / ``MotionData``).
        out: the subject or motion folder to write.
        overwrite: replace a finished result (built aside, swapped in when complete).
        resume: continue an unfinished run from its last checkpoints.
        progress: show progress bars.
        preview: optional preview videos every N steps of each stage.

    Returns:
        The published folder.
    """
    ws = artifacts.prepare_output(Path(out), learner.marker, overwrite, resume)
    try:
        started = time.perf_counter()
        learner.prepare(data)
        with contextlib.closing(
            learner.stages()
        ) as stages:  # closed (its ``finally`` run) however training ends
            for stage in stages:
                learner.trainers[stage.name] = train_stage(learner.pipe, stage, ws, resume, progress, preview)
        staging = artifacts.staging_dir(ws.work)
        staging.mkdir(exist_ok=True)
        names = learner.save(staging)
        info = {
            "method": learner.name,
            "format_version": artifacts.FORMAT_VERSION,
            "base": learner.pipe.base_description(),
        } | learner.record(round(time.perf_counter() - started, 2))
        return artifacts.publish_result(ws, staging, names, info, learner.marker)
    finally:
        artifacts.release(ws)


def train_stage(
    pipe: Any,
    stage: Stage,
    ws: artifacts.Workspace,
    resume: bool,
    progress: bool,
    preview: PreviewSettings | None,
) -> Trainer:
    """Train one stage with checkpoints in ``ws.work/checkpoints/<stage.name>/`` and return its trainer.

    Args:
        pipe: the pipeline being trained.
        stage: the stage.
        ws: the run's workspace.
        resume: start from the stage's last checkpoint if there is one.
        progress: show a progress bar.
        preview: optional preview videos.
    """
    preview = preview or PreviewSettings()
    render = (
        preview.renderer(pipe, ws.work, stage.name, stage.preview_prompt) if stage.preview_prompt else None
    )
    trainer = Trainer(
        stage.title,
        stage.params,
        stage.loss,
        stage.save,
        stage.load,
        artifacts.checkpoint_dir(ws.work, stage.name),
        stage.config,
        device=pipe.unet.device,
        preview_every=preview.every if render else 0,
        on_preview=render,
        run_id=ws.run_id,
        train_mode=stage.train_mode,
    )
    if resume:
        trainer.resume()
    with _trainable(stage.params), _gradient_checkpointing(pipe.unet, stage.config.gradient_checkpointing):
        trainer.train(progress)
    return trainer


@contextlib.contextmanager
def _trainable(params: list[nn.Parameter]) -> Iterator[None]:
    """Gradients for ``params`` inside the block only."""
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(False)


@contextlib.contextmanager
def _gradient_checkpointing(unet: nn.Module, enabled: bool) -> Iterator[None]:
    """Recompute the UNet's activations in the backward pass inside the block (``enabled`` only)."""
    if not enabled:
        yield
        return
    from dreamvideo.memory import disable_gradient_checkpointing, enable_gradient_checkpointing

    enable_gradient_checkpointing(unet)
    try:
        yield
    finally:
        disable_gradient_checkpointing(unet)
