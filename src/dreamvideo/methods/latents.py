"""Encoding training inputs once: VAE latent statistics of pixels, token ids of captions, the base's native size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def native_resolution(pipe: Any) -> int:
    """The pixel side the base was trained at (UNet sample size times the VAE's down-sampling)."""
    sample = pipe.unet.config.sample_size
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    return sample * 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def tokenize(pipe: Any, caption: str) -> torch.Tensor:
    """Token ids (1, max_length) of one caption, padded as the text encoder expects."""
    tok = pipe.tokenizer
    ids = tok(
        caption, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    )
    return ids.input_ids.to(pipe.unet.device)


@dataclass
class LatentCache:
    """VAE posterior (mean, std) cached once; each step draws a fresh sample, as encoding every step would."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    @torch.no_grad()
    def encode(cls, pipe: Any, frames: torch.Tensor, chunk: int = 16) -> LatentCache:
        """Encode pixels (N, 3, H, W) in [-1, 1] to per-frame latent statistics (N, C, h, w), scaled.

        Args:
            pipe: the pipeline whose VAE encodes.
            frames: the pixels.
            chunk: frames per VAE call.
        """
        means, stds = [], []
        scale = pipe.vae.config.scaling_factor
        for part in frames.split(chunk):
            dist = pipe.vae.encode(part.to(pipe.vae.device, pipe.vae.dtype)).latent_dist
            means.append(dist.mean.float() * scale)
            stds.append(dist.std.float() * scale)
        return cls(torch.cat(means), torch.cat(stds))

    def sample(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A latent sample of the frames ``index``, drawn from ``generator``."""
        mean, std = self.mean[index], self.std[index]
        return mean + std * torch.randn(mean.shape, generator=generator).to(mean)
