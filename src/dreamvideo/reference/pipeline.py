"""The pipeline side of the appearance encoder: loading it and feeding the main UNet once per denoising step."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from dreamvideo.fileio import DreamVideoError
from dreamvideo.reference.encoder import ReferenceFeatureCache, load_encoder
from dreamvideo.reference.model import (
    attach_reference_attention,
    clear_reference_features,
    detach_reference_attention,
    reference_state,
    set_reference_scale,
)


class AppearanceEncoderMixin:
    """Adds ``load_appearance_encoder`` / ``unload_appearance_encoder`` and the per-step feature cache to
    :class:`~dreamvideo.pipeline.DreamVideoPipeline`."""

    appearance_encoder = None
    appearance_encoder_info: dict[str, Any] | None = None

    def load_appearance_encoder(self, path: str | os.PathLike, step: int | None = None) -> None:
        """Load an encoder written by ``dreamvideo learn-appearance-encoder`` (its base must match this one) and
        hook the main UNet's spatial self-attentions; ``reference_image=`` then works in ``__call__``.

        Args:
            path: the encoder folder.
            step: use the training checkpoint of this step.
        """
        encoder, info = load_encoder(path, self.unet, self.base_description(), step)
        encoder.to(self.unet.device).eval()
        if reference_state(self.unet) is not None:
            detach_reference_attention(self.unet)
        attach_reference_attention(self.unet, encoder.config)
        self.appearance_encoder, self.appearance_encoder_info = encoder, info | {"path": str(path)}

    def unload_appearance_encoder(self) -> None:
        """Remove the encoder and restore the main UNet's original attention processors."""
        if reference_state(self.unet) is not None:
            detach_reference_attention(self.unet)
        self.appearance_encoder = self.appearance_encoder_info = None

    @torch.no_grad()
    def _reference_latents(self, image: Image.Image | np.ndarray, height: int, width: int) -> torch.Tensor:
        """The clean VAE latent (1, C, h, w) of the reference image resized to the video's size (posterior mean)."""
        img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
        img = img.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 127.5 - 1
        dist = self.vae.encode(pixels[None].to(self.vae.device, self.vae.dtype)).latent_dist
        return dist.mean * self.vae.config.scaling_factor

    def _start_reference(
        self,
        image,
        batch: int,
        guided: bool,
        height: int,
        width: int,
        strength: float,
        strength_uncond: float,
    ) -> ReferenceFeatureCache | None:
        """The feature cache of one sampling run, or ``None`` without a reference image.

        The encoder sees the empty prompt, so its features are the same for both guidance branches and are
        computed once per step. The conditional branch blends them in with ``strength``, the unconditional one with
        ``strength_uncond`` (default 1: both branches see the reference and guidance acts on the text only; 0: the
        unconditional branch has no reference, and guidance also pushes towards it).
        """
        if image is None:
            return None
        if self.appearance_encoder is None:
            raise DreamVideoError(
                "reference_image needs an appearance encoder: call load_appearance_encoder(DIR) "
                "(CLI: --appearance-encoder DIR)"
            )
        self.appearance_encoder.to(self._execution_device)  # follows pipe.to(...) and cpu offload
        latents = self._reference_latents(image, height, width).to(self.unet.dtype).expand(batch, -1, -1, -1)
        text = self.encode_text([""] * batch).to(self.unet.dtype)
        if guided and strength_uncond != strength:
            scale = torch.cat(
                [torch.full((batch,), float(strength_uncond)), torch.full((batch,), float(strength))]
            )
            set_reference_scale(self.unet, scale.to(self._execution_device))
        else:
            set_reference_scale(self.unet, strength)
        return ReferenceFeatureCache(self.appearance_encoder, latents, text, copies=2 if guided else 1)

    def _end_reference(self) -> None:
        if reference_state(self.unet) is not None:
            clear_reference_features(self.unet)
            set_reference_scale(self.unet, 1.0)
