"""What every motion learner shares (section 5): its settings, clips of the videos as cached batches, the loss."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from dreamvideo import adapters as ad
from dreamvideo.data import (
    DataError,
    MotionData,
    clip_span,
    frame_stride_for_fps,
    load_motion_videos,
    sample_clip,
)
from dreamvideo.methods.latents import LatentCache, native_resolution
from dreamvideo.methods.learner import Learner
from dreamvideo.training import StageConfig, diffusion_loss


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


def load_motion_data(
    videos: str | os.PathLike,
    size: int,
    settings: MotionSettings,
    captions: str | dict[str, str] | None = None,
) -> MotionData:
    """Load and validate the motion videos; short ones are refused when ``settings.short_videos == "error"``.

    Args:
        videos: a folder of videos (with optional ``captions.json``) or one video file.
        size: the frame side to decode to.
        settings: clip length, stride and what to do with short videos.
        captions: one caption for all videos, or a file-name -> caption mapping.
    """
    data = load_motion_videos(videos, size, captions)
    if settings.short_videos == "error":
        for video, fps, path in zip(data.videos, data.fps, data.paths, strict=True):
            stride = settings.stride(fps)
            if len(video) < clip_span(settings.num_frames, stride):
                raise DataError(
                    f"{path}: has {len(video)} frames, but a clip of {settings.num_frames} frames every "
                    f"{stride} frames needs {clip_span(settings.num_frames, stride)}"
                )
    return data


@torch.no_grad()
def frame_embeddings(pipe: Any, video: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """CLIP image embeddings of every frame of a video (F, 3, H, W) in [-1, 1], computed once."""
    frames = ((video + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return torch.cat(
        [pipe.encode_image(list(frames[i : i + chunk])).float() for i in range(0, len(frames), chunk)]
    )


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
    def encode(cls, pipe: Any, data: MotionData, settings: MotionSettings) -> MotionBatches:
        """Cache every video's latents, every caption's features and (with appearance guidance) frame embeddings."""
        caches = [LatentCache.encode(pipe, v) for v in data.videos]
        captions = sorted(set(data.captions))
        with torch.no_grad():
            text_table = pipe.encode_text(captions + [""])
        text_of = {c: text_table[i] for i, c in enumerate(captions)}
        appearance = (
            [frame_embeddings(pipe, v) for v in data.videos] if settings.appearance_guidance else None
        )
        black = LatentCache.encode(pipe, -torch.ones(1, *data.videos[0].shape[1:])).mean[0]
        return cls(data, caches, text_of, text_table[-1], appearance, settings, black)

    def sample(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Latents (batch, C, F, h, w), text features (batch, tokens, dim), embeddings (batch, dim) or ``None``."""
        xs, texts, embeds = [], [], []
        for _ in range(batch_size):
            x, text, e = self._one(generator)
            xs.append(x)
            texts.append(text)
            embeds.append(e)
        return (
            torch.stack(xs),
            torch.stack(texts),
            torch.stack(embeds) if self.appearance is not None else None,
        )

    def _one(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One clip (C, F, h, w), its caption's features (or the empty prompt's) and its appearance embedding."""
        s, data = self.settings, self.data
        v = int(torch.randint(0, len(data), (1,), generator=generator))
        frames = torch.arange(self.caches[v].mean.shape[0])
        index = sample_clip(
            frames, s.num_frames, s.stride(data.fps[v]), generator, s.short_videos, data.paths[v]
        )
        x = self.caches[v].sample(index.clamp_min(0), generator)
        x[index < 0] = self.black  # padding frames of a short video (the authors' black frames)
        drop_caption = torch.rand((), generator=generator) < s.caption_dropout
        text = self.empty if drop_caption else self.text_of[data.captions[v]]
        e = None
        if self.appearance is not None:  # appearance guidance: a random (real) frame of this clip
            real = index[index >= 0]
            e = self.appearance[v][real[int(torch.randint(0, len(real), (1,), generator=generator))]]
            if torch.rand((), generator=generator) < s.appearance_dropout:
                e = torch.zeros_like(e)
        return x.permute(1, 0, 2, 3), text, e


class MotionLearner(Learner):
    """A learner of a motion from a few videos; subclasses give the stages and the files.

    Class attributes:
        max_videos: train on the first ``max_videos`` videos only (Tune-A-Video: one); ``None``: all.
    """

    kind = "motion"
    max_videos: ClassVar[int | None] = None

    def __init__(self, pipe: Any, settings: MotionSettings, stage: StageConfig | None = None) -> None:
        super().__init__(pipe, settings, stage or settings.stage)

    @property
    def resolution(self) -> int:
        """The training clip side."""
        return self.settings.resolution or native_resolution(self.pipe)

    def read_inputs(
        self, videos: str | os.PathLike, captions: str | dict[str, str] | None = None
    ) -> MotionData:
        """Load and validate every video (and its caption) before any work."""
        data = load_motion_data(videos, self.resolution, self.settings, captions)
        if self.max_videos is not None:
            n = self.max_videos
            data = dataclasses.replace(
                data,
                videos=data.videos[:n],
                captions=data.captions[:n],
                paths=data.paths[:n],
                fps=data.fps[:n],
            )
        return data

    def prepare(self, data: MotionData) -> None:
        self.data = data
        self.batches = MotionBatches.encode(self.pipe, data, self.settings)

    def loss(
        self, config: StageConfig, condition: Callable[[torch.Tensor], None] | None = None
    ) -> Callable[[int, torch.Generator], torch.Tensor]:
        """The denoising loss of section 5 on a batch of clips.

        Args:
            config: the stage (batch size, offset noise).
            condition: ``condition(embeds)`` hands a batch's appearance embeddings to the model (appearance guidance).
        """

        def loss(step: int, generator: torch.Generator) -> torch.Tensor:
            x, text, embeds = self.batches.sample(config.batch_size, generator)
            if embeds is not None and condition is not None:
                condition(embeds)
            return diffusion_loss(
                self.pipe.unet, self.pipe.scheduler, x, text, generator, config.offset_noise
            )

        return loss

    def record(self, wall_seconds: float) -> dict[str, Any]:
        s = self.settings
        return {
            "videos": [str(p) for p in self.data.paths],
            "captions": self.data.captions,
            "num_frames": s.num_frames,
            "frame_stride": s.frame_stride,
            "resolution": self.resolution,
            "caption_dropout": s.caption_dropout,
            "appearance_guidance": s.appearance_guidance,
        }
