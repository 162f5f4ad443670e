"""Training the appearance encoder once per base (method.md, section 9) with the shared :class:`Trainer`.

A training pair is a reference image of a subject and a clip of the same subject elsewhere. The base UNet (with
reference attention attached) is frozen; only the encoder's spatial path is trained, on the base's own diffusion
loss: at each step the encoder encodes the clean reference latent at the clip's timestep ``t`` and the main UNet
denoises the clip with ``K' = W_K [z, y_a]``, ``V' = W_V [z, y_a]`` in its mid and up spatial self-attentions.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamvideo.data import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    DataError,
    load_image,
    load_motion_videos,
    sample_clip,
)
from dreamvideo.fileio import DreamVideoError, load_safetensors
from dreamvideo.reference.config import ReferenceConfig
from dreamvideo.reference.encoder import ENCODER_FILE, ENCODER_INFO, AppearanceEncoder, save_encoder
from dreamvideo.reference.model import (
    attach_reference_attention,
    clear_reference_features,
    detach_reference_attention,
    reference_state,
    set_reference_features,
)
from dreamvideo.training import StageConfig, Trainer, diffusion_loss

STAGE = "appearance_encoder"


@dataclass
class EncoderSettings:
    """Settings of ``learn-appearance-encoder``.

    Args:
        num_frames: frames per training clip.
        resolution: side of frames and reference images (the base's native size when ``None``).
        stage: optimisation settings (only the encoder is optimised).
        caption_dropout: probability of training on the empty prompt.
        reference: levels whose self-attentions take the features (section 9: mid and up).
        toy_pairs: number of toy-world pairs rendered when no ``--pairs`` folder is given.
    """

    num_frames: int = 8
    resolution: int | None = None
    stage: StageConfig = None  # type: ignore[assignment]
    caption_dropout: float = 0.1
    reference: ReferenceConfig = None  # type: ignore[assignment]
    toy_pairs: int = 512

    def __post_init__(self) -> None:
        if self.stage is None:
            self.stage = StageConfig(steps=2000, lr=1e-5, batch_size=2)
        if self.reference is None:
            self.reference = ReferenceConfig()
        if not 0 <= self.caption_dropout <= 1:
            raise DreamVideoError(f"caption_dropout must be in [0, 1], got {self.caption_dropout}")


@dataclass
class PairData:
    """Reference images (N, 3, S, S), clips (each (F_i, 3, S, S)), all in [-1, 1], and one caption per pair."""

    references: torch.Tensor
    videos: list[torch.Tensor]
    captions: list[str]
    source: str


def toy_pairs(n: int, num_frames: int, size: int, seed: int = 0) -> PairData:
    """Pairs from the toy world: a vocabulary sprite standing still on one background (the reference) and the same
    sprite with any motion on another background (the clip). Captions name the sprite by its shape only ("a star
    bounces on blue sky"), so colour and pattern must come from the reference. Composite subjects
    (``NOVEL_SUBJECTS``) never appear: they stay held out for evaluation.
    """
    from dreamvideo.toy import world

    rng = np.random.default_rng(seed)
    refs, videos, captions = [], [], []
    for _ in range(n):
        spec = world.sample_pretraining_spec(rng)
        other = [b for b in world.BACKGROUNDS if b != spec.background]
        ref_spec = world._random_spec(rng, spec.sprite, str(rng.choice(other)), "stays still")
        ref = world.render_clip(ref_spec, num_frames=1, size=size).frames[0]
        clip = world.render_clip(spec, num_frames=num_frames, size=size).frames
        refs.append(torch.from_numpy(ref).permute(2, 0, 1).float() / 127.5 - 1)
        videos.append(torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 127.5 - 1)
        captions.append(world.caption(spec, subject_word=spec.sprite.shape))
    return PairData(torch.stack(refs), videos, captions, f"toy world ({n} pairs, seed {seed})")


def load_pairs(folder: str | os.PathLike, size: int) -> PairData:
    """Pairs from a folder: one sub-folder per pair with ``reference.<image>``, ``video.<video>`` and optionally
    ``caption.txt`` (default: empty caption). Every pair is validated before any training."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: pairs folder not found")
    pairs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not pairs:
        raise DataError(f"{folder}: no pair sub-folders (each needs reference.png and video.mp4)")
    refs, videos, captions = [], [], []
    for pair in pairs:
        ref = [p for p in pair.iterdir() if p.stem == "reference" and p.suffix.lower() in IMAGE_EXTENSIONS]
        vid = [p for p in pair.iterdir() if p.stem == "video" and p.suffix.lower() in VIDEO_EXTENSIONS]
        if len(ref) != 1 or len(vid) != 1:
            raise DataError(
                f"{pair}: needs exactly one reference image (reference{IMAGE_EXTENSIONS[2]}, ...) and "
                f"one video (video{VIDEO_EXTENSIONS[0]}, ...)"
            )
        caption = (pair / "caption.txt").read_text().strip() if (pair / "caption.txt").is_file() else ""
        refs.append(load_image(ref[0], size))
        videos.append(load_motion_videos(vid[0], size, caption).videos[0])
        captions.append(caption)
    return PairData(torch.stack(refs), videos, captions, str(folder))


class ReferencedUNet:
    """The main UNet as :func:`~dreamvideo.training.diffusion_loss` calls it, with the encoder run first at the
    same timestep ``t`` on the reference latents (clean, as at inference), its features set on the UNet."""

    def __init__(
        self, unet, encoder: AppearanceEncoder, references: torch.Tensor, text: torch.Tensor
    ) -> None:
        self.unet, self.encoder, self.references, self.text = unet, encoder, references, text

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor):
        set_reference_features(self.unet, self.encoder(self.references, timestep, self.text))
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)


def learn_appearance_encoder(
    pipe,
    out: str | os.PathLike,
    settings: EncoderSettings,
    pairs: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train an appearance encoder for ``pipe``'s base and write it to ``out``.

    Args:
        pipe: the base model (its UNet gets reference attention for training and loses it at the end).
        out: output folder (``appearance_encoder.safetensors`` + ``appearance_encoder.json``, ``checkpoints/``).
        settings: :class:`EncoderSettings`.
        pairs: a pairs folder (see :func:`load_pairs`); ``None`` on the toy base renders toy-world pairs.
        overwrite, resume: what to do with an existing ``out`` (as every stage).
    """
    from dreamvideo.artifacts import prepare_output, publish, release, staging_dir
    from dreamvideo.methods.latents import LatentCache, native_resolution

    out = Path(out)
    size = settings.resolution or native_resolution(pipe)
    if pairs is None and pipe.base_name != "toy":
        raise DreamVideoError(
            "--pairs is required except on the toy base (where the toy world supplies pairs)"
        )
    data = (
        load_pairs(pairs, size)
        if pairs is not None
        else toy_pairs(settings.toy_pairs, settings.num_frames, size, settings.stage.seed)
    )
    ws = prepare_output(out, ENCODER_INFO, overwrite, resume)
    try:
        started = time.perf_counter()
        st = settings.stage
        refs = LatentCache.encode(pipe, data.references)
        clips = [LatentCache.encode(pipe, v) for v in data.videos]
        with torch.no_grad():
            texts = pipe.encode_text(sorted(set(data.captions)) + [""]).float()
        index_of = {c: i for i, c in enumerate(sorted(set(data.captions)))}
        empty = texts[-1]

        encoder = AppearanceEncoder.from_unet(pipe.unet, settings.reference).to(torch.float32)
        params = list(encoder.trainable_named_parameters().values())
        for p in params:
            p.requires_grad_(True)
        if reference_state(pipe.unet) is not None:
            detach_reference_attention(pipe.unet)
        attach_reference_attention(pipe.unet, settings.reference)

        def batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            xs, rs, ts = [], [], []
            for _ in range(st.batch_size):
                i = int(torch.randint(0, len(data.captions), (1,), generator=generator))
                frames = torch.arange(clips[i].mean.shape[0])
                index = sample_clip(frames, settings.num_frames, 1, generator, "loop", f"pair {i}")
                xs.append(clips[i].sample(index, generator).permute(1, 0, 2, 3))  # (C, F, h, w)
                rs.append(refs.sample(torch.tensor([i]), generator)[0])
                drop = torch.rand((), generator=generator) < settings.caption_dropout
                ts.append(empty if drop else texts[index_of[data.captions[i]]])
            return torch.stack(xs), torch.stack(rs), torch.stack(ts)

        def loss_fn(step: int, generator: torch.Generator) -> torch.Tensor:
            x, r, text = batch(generator)
            model = ReferencedUNet(pipe.unet, encoder, r, empty.expand(len(r), -1, -1))
            return diffusion_loss(model, pipe.scheduler, x, text, generator, st.offset_noise)

        def info(steps_done: int, seconds: float, losses: list[float]) -> dict[str, Any]:
            return {
                "type": "dreamvideo-appearance-encoder",
                "format_version": 1,
                "base": pipe.base_description(),
                "trainable_parameters": sum(p.numel() for p in params),
                "frozen_encoder_parameters": encoder.frozen_parameter_count(),
                "temporal_layers": "copied from the base, frozen",
                "encoder_text": "empty prompt",
                "reference_input": "clean VAE latent at the main UNet's timestep",
                "pairs": data.source,
                "num_pairs": len(data.captions),
                "num_frames": settings.num_frames,
                "resolution": size,
                "caption_dropout": settings.caption_dropout,
                "training": st.to_dict() | {"steps_done": steps_done, "seconds": round(seconds, 2)},
                "losses": losses,
            }

        def save(folder: Path) -> None:
            save_encoder(encoder, folder, info(trainer.step, trainer.seconds, trainer.losses))

        def load(folder: Path) -> None:
            encoder.load_trainable(load_safetensors(folder / ENCODER_FILE)[0], str(folder / ENCODER_FILE))

        trainer = Trainer(
            "appearance encoder",
            params,
            loss_fn,
            save,
            load,
            ws.work / "checkpoints" / STAGE,
            st,
            device=pipe.unet.device,
            run_id=ws.run_id,
            train_mode=(pipe.unet,),
        )
        if resume:
            trainer.resume()
        _checkpointing(pipe.unet, encoder, st, True)
        try:
            trainer.train(progress)
        finally:
            _checkpointing(pipe.unet, encoder, st, False)
            clear_reference_features(pipe.unet)
            detach_reference_attention(pipe.unet)
        for p in params:
            p.requires_grad_(False)
        staging = staging_dir(ws.work)
        staging.mkdir(exist_ok=True)
        record = info(trainer.step, trainer.seconds, trainer.losses)
        record["training"]["wall_seconds"] = round(time.perf_counter() - started, 2)
        save_encoder(encoder, staging, record)
        publish(
            ws, {ENCODER_FILE: staging / ENCODER_FILE, ENCODER_INFO: staging / ENCODER_INFO}, ENCODER_INFO
        )
        shutil.rmtree(staging, ignore_errors=True)
    finally:
        release(ws)
    return out


def _checkpointing(unet, encoder: AppearanceEncoder, config: StageConfig, on: bool) -> None:
    """Gradient checkpointing of both UNets (as in the other stages)."""
    if not config.gradient_checkpointing:
        return
    from dreamvideo.memory import disable_gradient_checkpointing, enable_gradient_checkpointing

    for model in (unet, encoder.unet):
        (enable_gradient_checkpointing if on else disable_gradient_checkpointing)(model)


def encoder_memory_estimate(encoder: AppearanceEncoder, frozen_bytes: int = 2) -> dict[str, int]:
    """Bytes of weights, gradients and AdamW state when training ``encoder`` (fp32 trainables, frozen copies in
    ``frozen_bytes`` per parameter; activations not included)."""
    trainable = sum(p.numel() for p in encoder.trainable_named_parameters().values())
    frozen = encoder.frozen_parameter_count()
    return {
        "trainable": trainable,
        "frozen": frozen,
        "bytes": trainable * (4 + 4 + 8) + frozen * frozen_bytes,
    }
