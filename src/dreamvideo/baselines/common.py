"""What every baseline shares: parameter groups of the UNet, weight files, the identifier token, and the training
runs for subjects (photos) and motions (videos) built on the same Trainer, data and latent caches as DreamVideo."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dreamvideo.artifacts import Workspace
from dreamvideo.data import MotionData, SubjectData, load_subject_images
from dreamvideo.fileio import DreamVideoError, load_safetensors, save_safetensors, write_json
from dreamvideo.pipeline import EMBEDS_FILE, MOTION_FILE, SUBJECT_FILE, DreamVideoPipeline
from dreamvideo.stages import (
    FORMAT_VERSION,
    MotionBatches,
    MotionSettings,
    SubjectBatches,
    SubjectSettings,
    load_motion_data,
    native_resolution,
    prepare_output,
    publish,
    release,
    staging_dir,
    tokenize,
)
from dreamvideo.textual_inversion import add_placeholder_token, save_learned_embeds
from dreamvideo.training import StageConfig, Trainer, diffusion_loss

WEIGHTS_FILE = "unet_weights.safetensors"
CHECKPOINT_STAGE = "training"  # checkpoints/<stage>/step-NNNNNN/ of every one-stage baseline
TEMPORAL_MODULES = ("temp_convs", "temp_attentions", "transformer_in")
RARE_WORD = "sks"  # DreamBooth's identifier, used where the tokenizer has it as one token


class BaselineError(DreamVideoError):
    pass


# ----------------------------------------------------------------------------- parameter groups


def canonical_name(name: str) -> str:
    """A UNet parameter's plain diffusers state-dict name: without DreamVideo's block wrapper, peft's base layer or
    the gradient-checkpointing wrapper."""
    for wrapper in (".block.", ".base_layer.", ".module."):
        name = name.replace(wrapper, ".")
    return name


def unet_parameters(unet: nn.Module) -> dict[str, nn.Parameter]:
    """Base parameters of the UNet by canonical name (adapter and LoRA parameters excluded)."""
    skip = ("adapters.", "lora_")
    return {canonical_name(n): p for n, p in unet.named_parameters() if not any(s in n for s in skip)}


def is_temporal(name: str) -> bool:
    """Temporal layers of a UNet3D: ``temp_convs``, ``temp_attentions`` and ``transformer_in``."""
    return any(part in TEMPORAL_MODULES for part in name.split("."))


def spatial_parameters(unet: nn.Module) -> dict[str, nn.Parameter]:
    """Everything that is not temporal: resnets, spatial transformers, conv in/out, time embedding, samplers."""
    return {n: p for n, p in unet_parameters(unet).items() if not is_temporal(n)}


def temporal_parameters(unet: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in unet_parameters(unet).items() if is_temporal(n)}


def count(params: dict[str, nn.Parameter] | list[nn.Parameter]) -> int:
    values = params.values() if isinstance(params, dict) else params
    return sum(p.numel() for p in values)


# ----------------------------------------------------------------------------- weight files


def save_weights(params: dict[str, nn.Parameter], path: Path, metadata: dict[str, Any] | None = None) -> None:
    """Store exactly the given (trained) tensors under their state-dict names."""
    save_safetensors({n: p.detach().float() for n, p in params.items()}, path, metadata)


def load_weights(unet: nn.Module, tensors: dict[str, torch.Tensor], scale: float = 1.0, source: str = "") -> None:
    """Load stored tensors into the UNet: ``W <- W + scale * (W_stored - W)`` (scale 1 replaces the weights).

    Raises:
        BaselineError: a name the UNet does not have or a shape that differs.
    """
    own = unet_parameters(unet)
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise BaselineError(f"{source}: {len(unknown)} tensors do not fit this UNet (e.g. {unknown[:2]})")
    with torch.no_grad():
        for name, value in tensors.items():
            p = own[name]
            if p.shape != value.shape:
                raise BaselineError(f"{source}: {name} has shape {tuple(value.shape)}, the UNet {tuple(p.shape)}")
            value = value.to(p.device, p.dtype)
            p.copy_(value if scale == 1.0 else p + scale * (value - p))


# ----------------------------------------------------------------------------- identifier token


def add_identifier(pipe: DreamVideoPipeline, token: str, class_word: str) -> tuple[str, bool]:
    """DreamBooth's fixed identifier: ``sks`` if the tokenizer has it as one token, else ``token`` added with the
    class word's embedding (never trained). Returns ``(identifier, added)``."""
    tok = pipe.tokenizer
    ids = tok.encode(RARE_WORD, add_special_tokens=False)
    if len(ids) == 1 and ids[0] != tok.unk_token_id:
        return RARE_WORD, False
    add_placeholder_token(tok, pipe.text_encoder, token, class_word)
    return token, True


# ----------------------------------------------------------------------------- what a baseline trains


@dataclass
class Trainable:
    """The parameters a baseline trains and how they are stored.

    Args:
        params: the trained tensors by name (state-dict names for weights, peft names for LoRA).
        file: the file they go to, in the output folder and in every checkpoint.
        save: ``save(path)`` writes them.
        load: ``load(path)`` restores them (resume).
        info: extra JSON fields describing them (e.g. the LoRA config, re-initialised modules).
    """

    params: dict[str, nn.Parameter]
    file: str
    save: Callable[[Path], None]
    load: Callable[[Path], None]
    info: dict[str, Any] = field(default_factory=dict)


def weight_trainable(unet: nn.Module, params: dict[str, nn.Parameter], info: dict[str, Any] | None = None) -> Trainable:
    """Train UNet weights in place; store only them, under their state-dict names, in ``unet_weights.safetensors``."""

    def load(path: Path) -> None:
        load_weights(unet, load_safetensors(path)[0], source=str(path))

    return Trainable(params, WEIGHTS_FILE, lambda path: save_weights(params, path), load,
                     {"storage": "weights", **(info or {})})


def select(params: dict[str, nn.Parameter], pattern: str) -> dict[str, nn.Parameter]:
    """The parameters whose name matches the regular expression (``re.search``)."""
    rx = re.compile(pattern)
    return {n: p for n, p in params.items() if rx.search(n)}


# ----------------------------------------------------------------------------- training runs


def _train(name: str, pipe: DreamVideoPipeline, trainable: Trainable, loss_fn, ws: Workspace, stage: StageConfig,
           resume: bool, progress: bool) -> Trainer:
    params = list(trainable.params.values())
    for p in params:
        p.requires_grad_(True)
    trainer = Trainer(name, params, loss_fn, lambda folder: trainable.save(folder / trainable.file),
                      lambda folder: trainable.load(folder / trainable.file),
                      ws.work / "checkpoints" / CHECKPOINT_STAGE, stage, device=pipe.unet.device, run_id=ws.run_id,
                      train_mode=(pipe.unet,))
    if resume:
        trainer.resume()
    if stage.gradient_checkpointing:
        from dreamvideo.memory import disable_gradient_checkpointing, enable_gradient_checkpointing

        enable_gradient_checkpointing(pipe.unet)
    try:
        trainer.train(progress)
    finally:
        if stage.gradient_checkpointing:
            disable_gradient_checkpointing(pipe.unet)
        for p in params:
            p.requires_grad_(False)
    return trainer


def _finish(ws: Workspace, marker: str, trainable: Trainable, info: dict[str, Any], extra: dict[str, Path]) -> Path:
    staging = staging_dir(ws.work)
    staging.mkdir(exist_ok=True)
    trainable.save(staging / trainable.file)
    files = {trainable.file: staging / trainable.file, **extra, marker: staging / marker}
    write_json(info | {"run_id": ws.run_id}, files[marker])
    publish(ws, files, marker)
    shutil.rmtree(staging, ignore_errors=True)
    return ws.out


def _record(method: str, kind: str, pipe: DreamVideoPipeline, trainable: Trainable, trainer: Trainer,
            stage: StageConfig, started: float) -> dict[str, Any]:
    wall = round(time.perf_counter() - started, 2)
    return {
        "type": f"baseline-{kind}",
        "method": method,
        "format_version": FORMAT_VERSION,
        "weights_file": trainable.file,
        "checkpoint_stage": CHECKPOINT_STAGE,
        "trainable_parameters": count(trainable.params),
        "training_seconds": round(trainer.seconds, 2),  # optimisation steps only, across resumptions
        **trainable.info,
        "base": pipe.base_description(),
        "training": stage.to_dict() | {"steps_done": trainer.step, "seconds": round(trainer.seconds, 2),
                                       "wall_seconds": wall},
        "losses": trainer.losses,
    }


def run_subject(
    method: str,
    pipe: DreamVideoPipeline,
    images: str | os.PathLike,
    out: str | os.PathLike,
    settings: SubjectSettings,
    stage: StageConfig,
    make_trainable: Callable[[DreamVideoPipeline, int], Trainable],
    identifier: bool = True,
    masks: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Fine-tune what ``make_trainable(pipe, seed)`` returns on a subject's photos (1-frame videos, mask loss).

    Args:
        method: the method's name, recorded in ``subject.json``.
        pipe: the base model; it is modified in place.
        images, masks: the subject's photos (and masks), as for :func:`dreamvideo.stages.learn_subject`.
        out: the subject folder to write.
        settings: token, class word, caption template, resolution and mask use (its stages are not used).
        stage: the one training stage (steps, lr, batch, seed, ...).
        make_trainable: builds the trained parameters (called after the data is cached).
        identifier: caption with DreamBooth's fixed identifier (``"a sks dog"``); ``False``: the class word only.
        overwrite, resume: as for :func:`dreamvideo.stages.prepare_output`.
    """
    out = Path(out)
    size = settings.resolution or native_resolution(pipe)
    data = load_subject_images(images, size, masks)
    ws = prepare_output(out, SUBJECT_FILE, overwrite, resume)
    try:
        return _run_subject(method, pipe, data, ws, settings, stage, make_trainable, identifier, size, resume,
                            progress)
    finally:
        release(ws)


def _run_subject(method: str, pipe: DreamVideoPipeline, data: SubjectData, ws: Workspace, settings: SubjectSettings,
                 stage: StageConfig, make_trainable: Callable[[DreamVideoPipeline, int], Trainable], identifier: bool,
                 size: int, resume: bool, progress: bool) -> Path:
    """:func:`run_subject` in ``ws`` (locked, inputs validated)."""
    started = time.perf_counter()
    batches = SubjectBatches.encode(pipe, data, settings.use_masks)
    word = settings.init_word
    token, added = add_identifier(pipe, settings.token, word) if identifier else (None, False)
    caption = " ".join(settings.caption.format(token=token or "", word=word).split())
    with torch.no_grad():
        text = pipe.text_encoder(tokenize(pipe, caption))[0]
    trainable = make_trainable(pipe, stage.seed)

    def loss_fn(step: int, generator: torch.Generator) -> torch.Tensor:
        x, m = batches.sample(stage.batch_size, generator)
        return diffusion_loss(pipe.unet, pipe.scheduler, x, text.expand(stage.batch_size, -1, -1), generator,
                              stage.offset_noise, m)

    trainer = _train(f"{method} (subject)", pipe, trainable, loss_fn, ws, stage, resume, progress)
    info = _record(method, "subject", pipe, trainable, trainer, stage, started)
    info |= {"token": token, "init_word": word, "class_word": word, "caption": caption, "identifier_trained": False,
             "images": [str(p) for p in data.paths], "masks_used": batches.mask is not None, "resolution": size}
    extra = {}
    if added:  # the identifier's (untrained) embedding, so that generation can add the same token
        embeds = staging_dir(ws.work) / EMBEDS_FILE
        embeds.parent.mkdir(exist_ok=True)
        vector = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids(token)]
        save_learned_embeds(embeds, token, vector, {"token": token, "init_word": word, "trained": "false"})
        extra[EMBEDS_FILE] = embeds
    return _finish(ws, SUBJECT_FILE, trainable, info, extra)


def run_motion(
    method: str,
    pipe: DreamVideoPipeline,
    videos: str | os.PathLike,
    out: str | os.PathLike,
    settings: MotionSettings,
    make_trainable: Callable[[DreamVideoPipeline, int], Trainable],
    captions: str | dict[str, str] | None = None,
    max_videos: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Fine-tune what ``make_trainable(pipe, seed)`` returns on motion videos (clips and caption dropout as in
    section 5; no appearance guidance, which only DreamVideo's motion adapter can take).

    Args:
        method: the method's name, recorded in ``motion.json``.
        pipe: the base model; it is modified in place.
        videos, captions: the motion videos, as for :func:`dreamvideo.stages.learn_motion`.
        out: the motion folder to write.
        settings: clip sampling, caption dropout and ``settings.stage`` (appearance settings are ignored).
        make_trainable: builds the trained parameters (called after the data is cached).
        max_videos: train on the first ``max_videos`` videos only (Tune-A-Video: one).
        overwrite, resume: as for :func:`dreamvideo.stages.prepare_output`.
    """
    out = Path(out)
    settings = dataclasses.replace(settings, appearance_guidance=False)
    size = settings.resolution or native_resolution(pipe)
    data = load_motion_data(videos, size, settings, captions)
    if max_videos is not None:
        data = dataclasses.replace(data, videos=data.videos[:max_videos], captions=data.captions[:max_videos],
                                   paths=data.paths[:max_videos], fps=data.fps[:max_videos])
    ws = prepare_output(out, MOTION_FILE, overwrite, resume)
    try:
        return _run_motion(method, pipe, data, ws, settings, make_trainable, resume, progress, size)
    finally:
        release(ws)


def _run_motion(method: str, pipe: DreamVideoPipeline, data: MotionData, ws: Workspace, settings: MotionSettings,
                make_trainable: Callable[[DreamVideoPipeline, int], Trainable], resume: bool, progress: bool,
                size: int) -> Path:
    """:func:`run_motion` in ``ws`` (locked, inputs validated)."""
    started = time.perf_counter()
    batches = MotionBatches.encode(pipe, data, settings)
    stage = settings.stage
    trainable = make_trainable(pipe, stage.seed)

    def loss_fn(step: int, generator: torch.Generator) -> torch.Tensor:
        x, text, _ = batches.sample(stage.batch_size, generator)
        return diffusion_loss(pipe.unet, pipe.scheduler, x, text, generator, stage.offset_noise)

    trainer = _train(f"{method} (motion)", pipe, trainable, loss_fn, ws, stage, resume, progress)
    info = _record(method, "motion", pipe, trainable, trainer, stage, started)
    info |= {"videos": [str(p) for p in data.paths], "captions": data.captions, "num_frames": settings.num_frames,
             "frame_stride": settings.frame_stride, "resolution": size, "caption_dropout": settings.caption_dropout,
             "appearance_guidance": False}
    return _finish(ws, MOTION_FILE, trainable, info, {})
