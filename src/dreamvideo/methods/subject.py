"""What every subject learner shares (section 4): its settings, the photos as cached 1-frame-video batches, the loss."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from dreamvideo import adapters as ad
from dreamvideo.data import SubjectData, load_subject_images
from dreamvideo.fileio import DreamVideoError
from dreamvideo.methods.latents import LatentCache, native_resolution
from dreamvideo.methods.learner import Learner
from dreamvideo.textual_inversion import check_placeholder
from dreamvideo.training import StageConfig, diffusion_loss
from dreamvideo.validate import check_caption_template, check_token_in_reach


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


def check_masks(settings: SubjectSettings, data: SubjectData) -> None:
    """With the mask loss on, refuse an all-black mask: its photo would teach nothing.

    Args:
        settings: the subject settings.
        data: the loaded photos and masks.
    """
    if not settings.use_masks or data.masks is None:
        return
    for path, mask in zip(data.paths, data.masks, strict=True):
        if not mask.any():
            raise DreamVideoError(
                f"{path}: its mask is all black (no subject pixels), so this photo would "
                "teach nothing; fix the mask or pass --no-masks"
            )


def check_subject_settings(
    tokenizer: Any, settings: SubjectSettings, data: SubjectData | None = None
) -> None:
    """DreamVideo's checks: refuse settings that fail or learn nothing: bad token or init word, a caption template
    without ``{token}`` (or with unknown fields), a token the tokenizer would cut off, an all-black mask.

    Args:
        tokenizer: the base's tokenizer (before the token is added).
        settings: the subject settings.
        data: the loaded photos (their masks are checked).
    """
    if data is not None:
        check_masks(settings, data)
    check_placeholder(tokenizer, settings.token, settings.init_word)
    check_caption_template(settings.caption, needs_token=settings.train_token)
    check_token_in_reach(tokenizer, settings.caption, settings.init_word)


@dataclass
class SubjectBatches:
    """A subject's photos as cached latents (and masks at latent resolution); draws 1-frame-video batches."""

    latents: LatentCache
    mask: torch.Tensor | None

    @classmethod
    def encode(cls, pipe: Any, data: SubjectData, use_masks: bool) -> SubjectBatches:
        """Cache the photos' latents and (with ``use_masks``) their masks resized nearest-neighbour, as the authors."""
        latents = LatentCache.encode(pipe, data.images)
        mask = None
        if use_masks and data.masks is not None:  # mask loss at latent resolution
            size = tuple(latents.mean.shape[-2:])
            mask = F.interpolate(data.masks, size=size, mode="nearest").to(pipe.unet.device)
        return cls(latents, mask)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latents (batch, C, 1, h, w) and masks (batch, 1, 1, h, w) or ``None``."""
        index = torch.randint(0, len(self.latents.mean), (batch_size,), generator=generator)
        x = self.latents.sample(index, generator).unsqueeze(2)  # images are 1-frame videos
        return x, (self.mask[index].unsqueeze(2) if self.mask is not None else None)


class SubjectLearner(Learner):
    """A learner of a subject from a few photos (and optional masks); subclasses give the stages and the files."""

    kind = "subject"

    @classmethod
    def check_settings(
        cls, tokenizer: Any, settings: SubjectSettings, data: SubjectData | None = None
    ) -> None:
        """Refuse settings this method cannot learn from (run before any model is loaded, and again in :meth:`learn`).

        Args:
            tokenizer: the base's tokenizer.
            settings: the subject settings.
            data: the loaded photos and masks.
        """
        if data is not None:
            check_masks(settings, data)
        check_caption_template(settings.caption, needs_token=False)

    @property
    def resolution(self) -> int:
        """The training image side."""
        return self.settings.resolution or native_resolution(self.pipe)

    def read_inputs(self, images: str | os.PathLike, masks: str | os.PathLike | None = None) -> SubjectData:
        """Load and validate every photo and mask, and check the settings, before any work."""
        data = load_subject_images(images, self.resolution, masks)
        self.check_settings(self.pipe.tokenizer, self.settings, data)
        return data

    def prepare(self, data: SubjectData) -> None:
        self.data = data
        self.batches = SubjectBatches.encode(self.pipe, data, self.settings.use_masks)

    def loss(
        self, config: StageConfig, text: Callable[[], torch.Tensor]
    ) -> Callable[[int, torch.Generator], torch.Tensor]:
        """The denoising loss of section 4 on a batch of photos (mask loss where masks are used).

        Args:
            config: the stage (batch size, offset noise).
            text: ``text()`` gives the caption's features (1, tokens, dim), recomputed per step where they train.
        """

        def loss(step: int, generator: torch.Generator) -> torch.Tensor:
            x, mask = self.batches.sample(config.batch_size, generator)
            features = text().expand(config.batch_size, -1, -1)
            return diffusion_loss(
                self.pipe.unet, self.pipe.scheduler, x, features, generator, config.offset_noise, mask
            )

        return loss

    def record(self, wall_seconds: float) -> dict[str, Any]:
        return {
            "images": [str(p) for p in self.data.paths],
            "masks_used": self.batches.mask is not None,
            "resolution": self.resolution,
        }
