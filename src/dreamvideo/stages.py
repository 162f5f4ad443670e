"""DreamVideo's training stages: subject learning (section 4) and motion learning (section 5)."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dreamvideo import adapters as ad
from dreamvideo import artifacts, distributed
from dreamvideo.artifacts import Workspace
from dreamvideo.data import (
    DataError,
    MotionData,
    SubjectData,
    clip_span,
    frame_stride_for_fps,
    load_motion_videos,
    load_subject_images,
    sample_clip,
)
from dreamvideo.fileio import DreamVideoError, save_safetensors, write_json
from dreamvideo.pipeline import (
    EMBEDS_FILE,
    IDENTITY_FILE,
    MOTION_ADAPTER_FILE,
    MOTION_FILE,
    SUBJECT_FILE,
    DreamVideoPipeline,
)
from dreamvideo.textual_inversion import (
    add_placeholder_token,
    check_placeholder,
    save_learned_embeds,
    unwrap_placeholder,
    wrap_placeholder,
)
from dreamvideo.training import StageConfig, Trainer, diffusion_loss
from dreamvideo.validate import check_caption_template, check_token_in_reach

FORMAT_VERSION = 1


class OutputExistsError(DreamVideoError):
    pass


def prepare_output(out: Path, marker: str, overwrite: bool, resume: bool) -> Workspace:
    """Take ``out`` for this run (lock) and choose where it works; never clobber or delete a finished result.

    Args:
        out: the output folder.
        marker: ``subject.json`` or ``motion.json``.
        overwrite: build a new result aside (``out/.overwrite``) that replaces the old one when complete.
        resume: continue an unfinished run.

    Returns:
        The :class:`~dreamvideo.artifacts.Workspace` (its ``work`` folder takes checkpoints, previews, staging).
    """
    artifacts.check_output_folder(out, marker)
    finished = (out / marker).is_file()
    started = (out / "checkpoints").is_dir()
    if finished and not (overwrite or resume):
        raise OutputExistsError(f"{out}: already holds a finished result ({marker}); pass --overwrite to replace it")
    if started and not finished and not (resume or overwrite):
        raise OutputExistsError(f"{out}: holds an unfinished run; pass --resume to continue it or --overwrite to restart")
    if distributed.is_main_process():
        ws = artifacts.open_workspace(out, marker, overwrite, resume)
        _HELD_LOCKS.add(ws.lock)
    distributed.wait_for_everyone()
    if not distributed.is_main_process():
        has = (out / artifacts.OVERWRITE_DIR).is_dir() and overwrite
        work = out / artifacts.OVERWRITE_DIR if has else out
        ws = artifacts.Workspace(out, work, artifacts.run_id_of(work, resume=True))
    return ws


_HELD_LOCKS: set = set()


def release(ws: Workspace) -> None:
    """Give up ``ws``'s lock (after publishing, or when a run fails)."""
    if ws.lock is not None:
        artifacts.release_lock(ws.lock)
        _HELD_LOCKS.discard(ws.lock)


def publish(ws: Workspace, files: dict[str, Path], marker: str) -> None:
    """Move finished files into place; the marker JSON goes last, so a folder without it reads as unfinished.

    Built aside (``--overwrite``), the complete new result then replaces the old one (:func:`artifacts.promote`).
    With several processes only the main one publishes (all trained the same weights); the others wait for it.
    """
    if distributed.is_main_process():
        work = ws.work
        (work / marker).unlink(missing_ok=True)
        for name, src in files.items():
            if name != marker:
                os.replace(src, work / name)
        os.replace(files[marker], work / marker)
        if ws.aside:
            artifacts.promote(work, ws.out, marker)
        release(ws)
    distributed.wait_for_everyone()


def staging_dir(out: Path) -> Path:
    """Where a process assembles the final files before :func:`publish` (one folder per process)."""
    rank = distributed.process_index()
    return out / (".final" if rank == 0 else f".final-rank{rank}")


@dataclass
class PreviewSettings:
    """A short video rendered every ``every`` steps while training, written to ``OUT/previews/``.

    Args:
        every: steps between previews (0: no previews).
        prompt: the prompt (default: the training caption, e.g. "a <sks> dog").
        num_frames, steps, guidance_scale, seed: sampling settings (DDIM steps kept low: previews are for a glance).
    """

    every: int = 0
    prompt: str | None = None
    num_frames: int = 8
    steps: int = 25
    guidance_scale: float = 9.0
    seed: int = 0

    def renderer(self, pipe: DreamVideoPipeline, out: Path, stage: str, default_prompt: str):
        """``render(step)`` writing ``OUT/previews/<stage>-step-NNNNNN.mp4`` and ``.gif``."""
        from dreamvideo.video_io import write_video

        def render(step: int) -> None:
            frames = pipe(self.prompt or default_prompt, num_frames=self.num_frames, num_inference_steps=self.steps,
                          guidance_scale=self.guidance_scale, generator=torch.Generator().manual_seed(self.seed),
                          progress=False).frames[0]
            folder = out / "previews"
            folder.mkdir(exist_ok=True)
            for ext in (".mp4", ".gif"):
                write_video(frames, folder / f"{stage}-step-{step:06d}{ext}")

        return render


def _device_of(pipe: DreamVideoPipeline) -> torch.device:
    return pipe.unet.device


def _maybe_checkpointing(pipe: DreamVideoPipeline, config: StageConfig) -> None:
    if config.gradient_checkpointing:
        from dreamvideo.memory import enable_gradient_checkpointing

        enable_gradient_checkpointing(pipe.unet)


def _undo_checkpointing(pipe: DreamVideoPipeline, config: StageConfig) -> None:
    if config.gradient_checkpointing:
        from dreamvideo.memory import disable_gradient_checkpointing

        disable_gradient_checkpointing(pipe.unet)


@dataclass
class LatentCache:
    """VAE posterior (mean, std) cached once; each step draws a fresh sample, as encoding every step would."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    @torch.no_grad()
    def encode(cls, pipe: DreamVideoPipeline, frames: torch.Tensor, chunk: int = 16) -> LatentCache:
        """Encode pixels (N, 3, H, W) in [-1, 1] to per-frame latent statistics (N, C, h, w), scaled."""
        means, stds = [], []
        scale = pipe.vae.config.scaling_factor
        for part in frames.split(chunk):
            dist = pipe.vae.encode(part.to(pipe.vae.device, pipe.vae.dtype)).latent_dist
            means.append(dist.mean.float() * scale)
            stds.append(dist.std.float() * scale)
        return cls(torch.cat(means), torch.cat(stds))

    def sample(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mean, std = self.mean[index], self.std[index]
        return mean + std * torch.randn(mean.shape, generator=generator).to(mean)


def tokenize(pipe: DreamVideoPipeline, caption: str) -> torch.Tensor:
    """Token ids (1, max_length) of one caption, padded as the text encoder expects."""
    tok = pipe.tokenizer
    ids = tok(caption, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    return ids.input_ids.to(_device_of(pipe))


@dataclass
class SubjectBatches:
    """A subject's photos as cached latents (and masks at latent resolution); draws 1-frame-video batches."""

    latents: LatentCache
    mask: torch.Tensor | None

    @classmethod
    def encode(cls, pipe: DreamVideoPipeline, data: SubjectData, use_masks: bool) -> SubjectBatches:
        latents = LatentCache.encode(pipe, data.images)
        mask = None
        if use_masks and data.masks is not None:  # mask loss at latent resolution
            size = tuple(latents.mean.shape[-2:])
            mask = F.interpolate(data.masks, size=size, mode="nearest").to(_device_of(pipe))  # as the authors
        return cls(latents, mask)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latents (batch, C, 1, h, w) and masks (batch, 1, 1, h, w) or ``None``."""
        index = torch.randint(0, len(self.latents.mean), (batch_size,), generator=generator)
        x = self.latents.sample(index, generator).unsqueeze(2)  # images are 1-frame videos
        return x, (self.mask[index].unsqueeze(2) if self.mask is not None else None)


# --------------------------------------------------------------------------------------------- subject


@dataclass
class SubjectSettings:
    """Subject learning (section 4). Defaults are the authors'.

    Args:
        token: the placeholder word, e.g. ``"<sks>"``.
        init_word: a one-token class word initialising it, e.g. ``"dog"``.
        caption: caption template with ``{token}`` (and optionally ``{word}``); the authors' is ``a {token}``.
        resolution: training image side (the base's native size when ``None``).
        textual_inversion: stage 1 settings (authors: lr 1e-4, 3000 steps, batch 4).
        identity: stage 2 settings (authors: lr 1e-5, 1000 steps, batch 4).
        use_masks: restrict the loss to the subject masks if the folder has them.
        identity_adapter: adapter placement (paper: cross-attention of every spatial block); ``None`` skips stage 2.
        train_token: ``False`` skips stage 1 (ablation "without textual identity": the token keeps the class word).
    """

    token: str = "<sks>"
    init_word: str = "dog"
    caption: str = "a {token}"
    resolution: int | None = None
    textual_inversion: StageConfig = None  # type: ignore[assignment]
    identity: StageConfig = None  # type: ignore[assignment]
    use_masks: bool = True
    identity_adapter: ad.AdapterConfig | None = field(default_factory=ad.identity_adapter_config)
    train_token: bool = True

    def __post_init__(self) -> None:
        if self.textual_inversion is None:
            self.textual_inversion = StageConfig(steps=3000, lr=1e-4, batch_size=4)
        if self.identity is None:
            self.identity = StageConfig(steps=1000, lr=1e-5, batch_size=4)


def check_subject_settings(tokenizer: Any, settings: SubjectSettings, data: SubjectData | None = None) -> None:
    """Refuse settings that fail or learn nothing: bad token or init word, a caption template without
    ``{token}`` (or with unknown fields), a token the tokenizer would cut off.

    Args:
        tokenizer: the base's tokenizer (before the token is added).
        settings: the subject settings.
        data: the loaded photos: with the mask loss on, an all-black mask (its photo would teach nothing) is refused.
    """
    if data is not None and settings.use_masks and data.masks is not None:
        for path, mask in zip(data.paths, data.masks, strict=True):
            if not mask.any():
                raise DreamVideoError(f"{path}: its mask is all black (no subject pixels), so this photo would "
                                      "teach nothing; fix the mask or pass --no-masks")
    check_placeholder(tokenizer, settings.token, settings.init_word)
    check_caption_template(settings.caption, needs_token=settings.train_token)
    check_token_in_reach(tokenizer, settings.caption, settings.init_word)


def native_resolution(pipe: DreamVideoPipeline) -> int:
    sample = pipe.unet.config.sample_size
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    return sample * 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def learn_subject(
    pipe: DreamVideoPipeline,
    images: str | os.PathLike,
    out: str | os.PathLike,
    settings: SubjectSettings,
    masks: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    skip_identity: bool = False,
    preview: PreviewSettings | None = None,
) -> Path:
    """Learn a subject from a few photos: textual inversion, then the identity adapter (section 4).

    Args:
        pipe: the base model; its tokenizer/text encoder gain the token, its UNet keeps the identity adapter.
        images: folder of photos (``images/`` + ``masks/`` subfolders are recognised).
        out: subject folder to write.
        settings: :class:`SubjectSettings`.
        masks: optional mask folder.
        overwrite, resume: what to do with an existing ``out`` (see :func:`prepare_output`).
        skip_identity: stop after textual inversion (the Textual Inversion baseline).
        preview: optional :class:`PreviewSettings` (a video every N steps of each stage).

    Returns:
        The subject folder.
    """
    out = Path(out)
    size = settings.resolution or native_resolution(pipe)
    data = load_subject_images(images, size, masks)  # validates every file before any work
    check_subject_settings(pipe.tokenizer, settings, data)
    ws = prepare_output(out, SUBJECT_FILE, overwrite, resume)
    try:
        return _learn_subject(pipe, data, ws, settings, size, resume, progress, skip_identity, preview)
    finally:
        release(ws)


def _learn_subject(pipe: DreamVideoPipeline, data: SubjectData, ws: Workspace, settings: SubjectSettings, size: int,
                   resume: bool, progress: bool, skip_identity: bool, preview: PreviewSettings | None) -> Path:
    """The two stages of :func:`learn_subject` in ``ws`` (locked, inputs validated)."""
    out, work = ws.out, ws.work
    device = _device_of(pipe)
    started = time.perf_counter()

    batches = SubjectBatches.encode(pipe, data, settings.use_masks)
    mask = batches.mask
    word = settings.init_word
    token_id = add_placeholder_token(pipe.tokenizer, pipe.text_encoder, settings.token, word)
    caption = settings.caption.format(token=settings.token, word=word)
    ids = tokenize(pipe, caption)
    preview = preview or PreviewSettings()

    def batch(config: StageConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        return batches.sample(config.batch_size, generator)

    # Stage 1: textual inversion, only the new token's embedding row is trained.
    embed = wrap_placeholder(pipe.text_encoder, token_id)
    ti = settings.textual_inversion
    meta = {"token": settings.token, "init_word": word}

    def ti_loss(step: int, generator: torch.Generator) -> torch.Tensor:
        x, m = batch(ti, generator)
        text = pipe.text_encoder(ids)[0].expand(ti.batch_size, -1, -1)
        return diffusion_loss(pipe.unet, pipe.scheduler, x, text, generator, ti.offset_noise, m)

    def ti_save(folder: Path) -> None:
        save_learned_embeds(folder / EMBEDS_FILE, settings.token, embed.vector, meta)

    def ti_load(folder: Path) -> None:
        from dreamvideo.textual_inversion import load_learned_embeds

        with torch.no_grad():
            embed.vector.copy_(load_learned_embeds(folder / EMBEDS_FILE)[1])

    ti_trainer = Trainer(
        "textual inversion",
        [embed.vector],
        ti_loss,
        ti_save,
        ti_load,
        work / "checkpoints" / "textual_inversion",
        ti if settings.train_token else StageConfig(steps=0, lr=ti.lr),
        device=device,
        preview_every=preview.every,
        on_preview=preview.renderer(pipe, work, "textual_inversion", caption),
        run_id=ws.run_id,
        train_mode=(pipe.unet, pipe.text_encoder),
    )
    if resume:
        ti_trainer.resume()
    _maybe_checkpointing(pipe, ti)
    try:
        ti_trainer.train(progress)
    finally:
        _undo_checkpointing(pipe, ti)
    vector = unwrap_placeholder(pipe.text_encoder)
    ti_losses = ti_trainer.losses

    # Stage 2: identity adapter, embedding frozen (text features computed once).
    staging = staging_dir(work)
    staging.mkdir(exist_ok=True)
    files = {EMBEDS_FILE: staging / EMBEDS_FILE, SUBJECT_FILE: staging / SUBJECT_FILE}
    save_learned_embeds(files[EMBEDS_FILE], settings.token, vector, meta)
    identity_info = None
    id_trainer = None
    if not skip_identity and settings.identity_adapter is not None:  # None: no identity adapter (stage 1 only)
        idc = settings.identity
        with torch.no_grad():
            text = pipe.text_encoder(ids)[0]
        config = settings.identity_adapter
        if config.name in ad.adapter_names(pipe.unet):
            ad.detach_adapter(pipe.unet, config.name)
        ad.attach_adapter(pipe.unet, config, seed=idc.seed)
        params = ad.adapter_parameters(pipe.unet, config.name)
        for p in params:
            p.requires_grad_(True)

        def id_loss(step: int, generator: torch.Generator) -> torch.Tensor:
            x, m = batch(idc, generator)
            return diffusion_loss(pipe.unet, pipe.scheduler, x, text.expand(idc.batch_size, -1, -1), generator,
                                  idc.offset_noise, m)

        def id_save(folder: Path) -> None:
            save_safetensors(ad.adapter_state_dict(pipe.unet, config.name), folder / IDENTITY_FILE,
                             {"adapter": config.to_dict()})

        def id_load(folder: Path) -> None:
            from dreamvideo.fileio import load_safetensors

            ad.load_adapter_state_dict(pipe.unet, config.name, load_safetensors(folder / IDENTITY_FILE)[0])

        id_trainer = Trainer("identity adapter", params, id_loss, id_save, id_load,
                             work / "checkpoints" / "identity_adapter", idc, device=device,
                             preview_every=preview.every, run_id=ws.run_id, train_mode=(pipe.unet,),
                             on_preview=preview.renderer(pipe, work, "identity_adapter", caption))
        if resume:
            id_trainer.resume()
        _maybe_checkpointing(pipe, idc)
        try:
            id_trainer.train(progress)
        finally:
            _undo_checkpointing(pipe, idc)
        for p in params:
            p.requires_grad_(False)
        id_save(staging)
        files[IDENTITY_FILE] = staging / IDENTITY_FILE
        identity_info = config.to_dict()

    info: dict[str, Any] = {
        "type": "dreamvideo-subject",
        "format_version": FORMAT_VERSION,
        "run_id": ws.run_id,
        "token": settings.token,
        "init_word": word,
        "class_word": word,
        "caption": caption,
        "identity_adapter": identity_info,
        "identity_adapter_parameters": (
            ad.count_adapter_parameters(pipe.unet, settings.identity_adapter.name) if identity_info else 0
        ),
        "base": pipe.base_description(),
        "images": [str(p) for p in data.paths],
        "masks_used": mask is not None,
        "resolution": size,
        "training": {
            "textual_inversion": ti.to_dict() | {"steps_done": ti_trainer.step, "seconds": round(ti_trainer.seconds, 2)},
            "identity_adapter": (
                settings.identity.to_dict() | {"steps_done": id_trainer.step, "seconds": round(id_trainer.seconds, 2)}
                if id_trainer else None
            ),
            "wall_seconds": round(time.perf_counter() - started, 2),
        },
        "losses": {"textual_inversion": ti_losses, "identity_adapter": id_trainer.losses if id_trainer else []},
    }
    write_json(info, files[SUBJECT_FILE])
    publish(ws, files, SUBJECT_FILE)
    shutil.rmtree(staging, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------- motion


@dataclass
class MotionSettings:
    """Motion learning (section 5). Defaults are the authors' (lr 1e-5, batch 1-2, 8 fps clips).

    Args:
        num_frames: clip length (authors: 32; 16 fits smaller GPUs).
        frame_stride: take every n-th frame of the source videos; ``None`` (default) picks it per video from its
            frame rate so that clips play at ``target_fps``.
        target_fps: frame rate of the training clips when ``frame_stride`` is ``None`` (authors: 8).
        resolution: clip side (the base's native size when ``None``).
        stage: optimisation settings.
        caption_dropout: probability of training on the empty prompt (0.5).
        appearance_dropout: probability of replacing the appearance embedding by the zero vector (0.5).
        appearance_guidance: condition the adapter on a random frame's image embedding.
        motion_adapter: adapter placement; ``None`` gives the paper's (temporal attn1/attn2/ff).
        short_videos: videos shorter than a clip: ``"loop"`` (default: ping-pong, so the adapter never sees a cut),
            ``"pad"`` (the authors': black frames after the last one) or ``"error"``.
    """

    num_frames: int = 32
    frame_stride: int | None = None
    target_fps: float = 8.0
    resolution: int | None = None
    stage: StageConfig = None  # type: ignore[assignment]
    caption_dropout: float = 0.5
    appearance_dropout: float = 0.5
    appearance_guidance: bool = True
    motion_adapter: ad.AdapterConfig | None = None
    short_videos: str = "loop"

    def __post_init__(self) -> None:
        if self.stage is None:
            self.stage = StageConfig(steps=3000, lr=1e-5, batch_size=1)

    def stride(self, fps: float | None) -> int:
        """The frame step for a video of frame rate ``fps``."""
        return self.frame_stride or frame_stride_for_fps(fps, self.target_fps)


def learn_motion(
    pipe: DreamVideoPipeline,
    videos: str | os.PathLike,
    out: str | os.PathLike,
    settings: MotionSettings,
    captions: str | dict[str, str] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    preview: PreviewSettings | None = None,
) -> Path:
    """Learn a motion from a few videos: the motion adapter with appearance guidance (section 5).

    Args:
        pipe: the base model (with an image encoder unless ``settings.appearance_guidance`` is off).
        videos: a folder of videos (with optional ``captions.json``) or one video file.
        out: motion folder to write.
        settings: :class:`MotionSettings`.
        captions: one caption for all videos, or a file-name -> caption mapping.
        overwrite, resume: what to do with an existing ``out``.
        preview: optional :class:`PreviewSettings` (default prompt: the first video's caption; the motion adapter
            gets the zero appearance vector, as when generating without an appearance image).

    Returns:
        The motion folder.
    """
    out = Path(out)
    if settings.appearance_guidance and pipe.image_encoder is None:
        raise DreamVideoError(
            "appearance guidance needs an image encoder: the base has no image_encoder/ folder; pass "
            "--image-encoder PATH (a CLIPVisionModelWithProjection) or --no-appearance-guidance"
        )
    size = settings.resolution or native_resolution(pipe)
    data = load_motion_data(videos, size, settings, captions)
    ws = prepare_output(out, MOTION_FILE, overwrite, resume)
    try:
        return _learn_motion(pipe, data, ws, settings, size, resume, progress, preview)
    finally:
        release(ws)


def _learn_motion(pipe: DreamVideoPipeline, data: MotionData, ws: Workspace, settings: MotionSettings, size: int,
                  resume: bool, progress: bool, preview: PreviewSettings | None) -> Path:
    """The motion stage of :func:`learn_motion` in ``ws`` (locked, inputs validated)."""
    out, work = ws.out, ws.work
    device = _device_of(pipe)
    started = time.perf_counter()

    batches = MotionBatches.encode(pipe, data, settings)
    config = settings.motion_adapter or ad.motion_adapter_config(
        pipe.condition_dim if settings.appearance_guidance else None
    )
    if config.name in ad.adapter_names(pipe.unet):
        ad.detach_adapter(pipe.unet, config.name)
    ad.attach_adapter(pipe.unet, config, seed=settings.stage.seed)
    params = ad.adapter_parameters(pipe.unet, config.name)
    for p in params:
        p.requires_grad_(True)
    st = settings.stage

    def loss_fn(step: int, generator: torch.Generator) -> torch.Tensor:
        x, text, embeds = batches.sample(st.batch_size, generator)
        if embeds is not None:
            ad.set_adapter_condition(pipe.unet, config.name, embeds, 1.0)
        return diffusion_loss(pipe.unet, pipe.scheduler, x, text, generator, st.offset_noise)

    def save(folder: Path) -> None:
        save_safetensors(ad.adapter_state_dict(pipe.unet, config.name), folder / MOTION_ADAPTER_FILE,
                         {"adapter": config.to_dict()})

    def load(folder: Path) -> None:
        from dreamvideo.fileio import load_safetensors

        ad.load_adapter_state_dict(pipe.unet, config.name, load_safetensors(folder / MOTION_ADAPTER_FILE)[0])

    preview = preview or PreviewSettings()
    trainer = Trainer("motion adapter", params, loss_fn, save, load, work / "checkpoints" / "motion_adapter", st,
                      device=device, preview_every=preview.every, run_id=ws.run_id, train_mode=(pipe.unet,),
                      on_preview=preview.renderer(pipe, work, "motion_adapter", data.captions[0]))
    if resume:
        trainer.resume()
    _maybe_checkpointing(pipe, st)
    try:
        trainer.train(progress)
    finally:
        _undo_checkpointing(pipe, st)
        ad.clear_adapter_condition(pipe.unet, config.name)
    for p in params:
        p.requires_grad_(False)

    staging = staging_dir(work)
    staging.mkdir(exist_ok=True)
    save(staging)
    info = {
        "type": "dreamvideo-motion",
        "format_version": FORMAT_VERSION,
        "run_id": ws.run_id,
        "motion_adapter": config.to_dict(),
        "motion_adapter_parameters": ad.count_adapter_parameters(pipe.unet, config.name),
        "base": pipe.base_description(),
        "videos": [str(p) for p in data.paths],
        "captions": data.captions,
        "num_frames": settings.num_frames,
        "frame_stride": settings.frame_stride,
        "target_fps": settings.target_fps,
        "frame_strides": [settings.stride(fps) for fps in data.fps],
        "resolution": size,
        "caption_dropout": settings.caption_dropout,
        "appearance_dropout": settings.appearance_dropout,
        "appearance_guidance": settings.appearance_guidance,
        "training": st.to_dict() | {"steps_done": trainer.step, "seconds": round(trainer.seconds, 2),
                                    "wall_seconds": round(time.perf_counter() - started, 2)},
        "losses": trainer.losses,
    }
    write_json(info, staging / MOTION_FILE)
    publish(ws, {MOTION_ADAPTER_FILE: staging / MOTION_ADAPTER_FILE, MOTION_FILE: staging / MOTION_FILE}, MOTION_FILE)
    shutil.rmtree(staging, ignore_errors=True)
    return out


def load_motion_data(videos: str | os.PathLike, size: int, settings: MotionSettings,
                     captions: str | dict[str, str] | None = None) -> MotionData:
    """Load and validate the motion videos; short ones are refused when ``settings.short_videos == "error"``."""
    data = load_motion_videos(videos, size, captions)
    if settings.short_videos == "error":
        for video, fps, path in zip(data.videos, data.fps, data.paths, strict=True):
            stride = settings.stride(fps)
            if len(video) < clip_span(settings.num_frames, stride):
                raise DataError(f"{path}: has {len(video)} frames, but a clip of {settings.num_frames} frames every "
                                f"{stride} frames needs {clip_span(settings.num_frames, stride)}")
    return data


@dataclass
class MotionBatches:
    """Motion videos as cached latents, caption features and, with appearance guidance, frame embeddings.

    ``sample`` draws clips as section 5 prescribes: a random video, a random clip of it, caption dropout, and (with
    appearance guidance) the embedding of a random frame of that clip with appearance dropout.
    """

    data: MotionData
    caches: list[LatentCache]
    text_of: dict[str, torch.Tensor]
    empty: torch.Tensor
    appearance: list[torch.Tensor] | None
    settings: MotionSettings
    black: torch.Tensor  # latent of a black frame, for ``short_videos="pad"``

    @classmethod
    def encode(cls, pipe: DreamVideoPipeline, data: MotionData, settings: MotionSettings) -> MotionBatches:
        caches = [LatentCache.encode(pipe, v) for v in data.videos]
        captions_list = sorted(set(data.captions))
        with torch.no_grad():
            text_table = pipe.encode_text(captions_list + [""])
        text_of = {c: text_table[i] for i, c in enumerate(captions_list)}
        appearance = None
        if settings.appearance_guidance:
            appearance = [_frame_embeddings(pipe, v) for v in data.videos]
        black = LatentCache.encode(pipe, -torch.ones(1, *data.videos[0].shape[1:])).mean[0]
        return cls(data, caches, text_of, text_table[-1], appearance, settings, black)

    def sample(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Latents (batch, C, F, h, w), text features (batch, tokens, dim), embeddings (batch, dim) or ``None``."""
        s, data = self.settings, self.data
        xs, texts, embeds = [], [], []
        for _ in range(batch_size):
            v = int(torch.randint(0, len(data), (1,), generator=generator))
            frames = torch.arange(self.caches[v].mean.shape[0])
            index = sample_clip(frames, s.num_frames, s.stride(data.fps[v]), generator, s.short_videos, data.paths[v])
            x = self.caches[v].sample(index.clamp_min(0), generator)
            x[index < 0] = self.black  # padding frames of a short video (the authors' black frames)
            xs.append(x.permute(1, 0, 2, 3))  # (C, F, h, w)
            drop_caption = torch.rand((), generator=generator) < s.caption_dropout
            texts.append(self.empty if drop_caption else self.text_of[data.captions[v]])
            if self.appearance is not None:  # appearance guidance: a random (real) frame of this clip
                real = index[index >= 0]
                frame = real[int(torch.randint(0, len(real), (1,), generator=generator))]
                e = self.appearance[v][frame]
                if torch.rand((), generator=generator) < s.appearance_dropout:
                    e = torch.zeros_like(e)
                embeds.append(e)
        e = torch.stack(embeds) if self.appearance is not None else None
        return torch.stack(xs), torch.stack(texts), e


@torch.no_grad()
def _frame_embeddings(pipe: DreamVideoPipeline, video: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """CLIP image embeddings of every frame of a video (F, 3, H, W) in [-1, 1], computed once."""
    frames = ((video + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return torch.cat([pipe.encode_image(list(frames[i:i + chunk])).float() for i in range(0, len(frames), chunk)])
