"""The appearance encoder ``y_a = F_a(z_ref | I_ref, t, theta_a)`` (method.md, section 9) and its feature cache.

Design (section 9 leaves these open; MagicAnimate's choices where it has one):

- **A copy of the whole base UNet** (the main UNet is never shared or modified). Its **spatial path is trained**;
  its **temporal layers are copied and frozen**: the reference is a 1-frame video, which the temporal layers
  see exactly as in DreamVideo's subject learning (section 4), so at initialisation the encoder computes what
  the base computes on the reference image -- the captured ``y_a`` are then the base's own self-attention inputs
  for that image. Layers after the last captured site (the rest of the last up block, ``conv_out``) never run.
- **Input**: the VAE latent of the reference image, without noise, at the main UNet's timestep ``t`` (as
  MagicAnimate), with the text features of the **empty prompt**: the features then depend only on the image and
  ``t``, so one encoder run per denoising step serves every frame and both guidance branches.
- **Output**: the input of ``attn1`` (the normalised hidden states) of every spatial block in the chosen levels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet3DConditionModel
from torch import nn

from dreamvideo.base import check_same_architecture
from dreamvideo.fileio import (
    DreamVideoError,
    copy_exactly,
    load_safetensors,
    read_json,
    save_safetensors,
    write_json,
)
from dreamvideo.reference.config import ReferenceConfig
from dreamvideo.reference.layer import CaptureStore, EncoderStop, ReferenceCaptureProcessor
from dreamvideo.reference.model import find_reference_sites, set_reference_features

ENCODER_FILE = "appearance_encoder.safetensors"
ENCODER_INFO = "appearance_encoder.json"
TEMPORAL_MODULES = ("temp_convs", "temp_attentions", "transformer_in")


def canonical_name(name: str) -> str:
    """A UNet tensor name without DreamVideo's block wrapper, peft's base layer or the checkpointing wrapper."""
    for wrapper in (".block.", ".base_layer.", ".module."):
        name = name.replace(wrapper, ".")
    return name


def is_temporal(name: str) -> bool:
    return any(part in TEMPORAL_MODULES for part in name.split("."))


def clean_unet_copy(unet: nn.Module) -> UNet3DConditionModel:
    """A new ``UNet3DConditionModel`` with the base weights of ``unet`` (adapters, LoRA and wrappers left out)."""
    tensors = {
        canonical_name(k): v.detach().clone()
        for k, v in unet.state_dict().items()
        if "adapters." not in k and "lora_" not in k
    }
    with torch.device("meta"):
        copy = UNet3DConditionModel.from_config(dict(unet.config))
    copy.load_state_dict(tensors, strict=True, assign=True)
    return copy


class AppearanceEncoder(nn.Module):
    """A trainable copy of the base UNet that encodes a reference latent into per-block features ``y_a``.

    Args:
        unet: the encoder's own UNet (use :meth:`from_unet` to copy a base).
        config: the :class:`ReferenceConfig` naming the levels whose features are read.
    """

    def __init__(self, unet: UNet3DConditionModel, config: ReferenceConfig | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.config = config or ReferenceConfig()
        self.store = CaptureStore()
        sites = find_reference_sites(unet, self.config)
        if not sites:
            raise ValueError(f"no spatial transformer blocks in {self.config.blocks} of this UNet")
        for path, attn in sites:
            attn.set_processor(ReferenceCaptureProcessor(attn.processor, path, self.store))
        self.sites = [p for p, _ in sites]
        self.store.stop_at = self.sites[-1]  # sites are in forward order
        self.unet.requires_grad_(False)
        self.runs = 0  # forward passes (tests check the caching with it)
        self._used = self._modules_used()

    @classmethod
    def from_unet(cls, base: nn.Module, config: ReferenceConfig | None = None) -> AppearanceEncoder:
        """Initialise from a copy of ``base``'s weights (section 9: "a trainable copy of the base UNet")."""
        return cls(clean_unet_copy(base), config)

    def forward(
        self, latents: torch.Tensor, timestep: torch.Tensor | int, encoder_hidden_states: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Features ``y_a`` (samples, tokens, dim) by block path.

        Args:
            latents: clean reference latents (samples, C, h, w) or (samples, C, 1, h, w).
            timestep: the main UNet's timestep (scalar or (samples,)).
            encoder_hidden_states: text features (samples, tokens, dim); the pipeline passes the empty prompt's.
        """
        if latents.ndim == 4:
            latents = latents.unsqueeze(2)  # an image is a 1-frame video
        if latents.shape[2] != 1:
            raise ValueError(f"the appearance encoder takes one reference frame, got {latents.shape[2]}")
        self.store.features = {}
        self.store.stopping = True
        try:
            self.unet(latents, timestep, encoder_hidden_states=encoder_hidden_states)
        except EncoderStop:
            pass  # the last site is captured: nothing after it is needed
        finally:
            self.store.stopping = False
        self.runs += 1
        features, self.store.features = self.store.features, {}
        return {p: features[p] for p in self.sites}

    def _modules_used(self) -> set[str]:
        """Names of the modules one forward pass runs (a probe on a minimal input; works on the meta device)."""
        called: set[str] = set()
        hooks = [
            m.register_forward_pre_hook(lambda mod, args, n=n: called.add(canonical_name(n + ".")[:-1]))
            for n, m in self.unet.named_modules()
            if next(m.parameters(recurse=False), None) is not None
        ]
        ref = next(self.unet.parameters())
        cfg = self.unet.config
        side = 2 ** (len(cfg.block_out_channels) - 1)
        x = torch.zeros(1, cfg.in_channels, 1, side, side, device=ref.device, dtype=ref.dtype)
        text = torch.zeros(1, 1, cfg.cross_attention_dim, device=ref.device, dtype=ref.dtype)
        try:
            with torch.no_grad():
                self(x, torch.zeros(1, dtype=torch.long, device=ref.device), text)
        finally:
            for h in hooks:
                h.remove()
            self.runs = 0
        return called

    def trainable_named_parameters(self) -> dict[str, nn.Parameter]:
        """The spatial parameters that reach ``y_a``, by canonical name (temporal layers stay frozen)."""
        out = {}
        for name, p in self.unet.named_parameters():
            name = canonical_name(name)
            if not is_temporal(name) and name.rpartition(".")[0] in self._used:
                out[name] = p
        return out

    def frozen_parameter_count(self) -> int:
        trainable = {id(p) for p in self.trainable_named_parameters().values()}
        return sum(p.numel() for p in self.unet.parameters() if id(p) not in trainable)

    def state_dict_trainable(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.trainable_named_parameters().items()}

    def load_trainable(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Load tensors saved by :meth:`state_dict_trainable`; keys and shapes must match exactly."""
        copy_exactly(
            self.trainable_named_parameters(),
            tensors,
            lambda missing, unexpected: DreamVideoError(
                f"{source}: does not fit this appearance encoder ({len(missing)} missing tensors, "
                f"e.g. {missing[:1]}; {len(unexpected)} unexpected, e.g. {unexpected[:1]})"
            ),
            lambda name, shape, expected: DreamVideoError(
                f"{source}: {name} has shape {shape}, expected {expected}"
            ),
        )


class ReferenceFeatureCache:
    """Runs the encoder once per denoising step and shares ``y_a`` with every frame and guidance branch.

    Args:
        encoder: the :class:`AppearanceEncoder`.
        latents: clean reference latents, one per sample (samples, C, h, w).
        text: the encoder's text features (samples, tokens, dim).
        copies: how many times the main UNet's batch holds the samples (2 with classifier-free guidance:
            ``[uncond, cond]``); the features are tiled, not recomputed.
    """

    def __init__(
        self, encoder: AppearanceEncoder, latents: torch.Tensor, text: torch.Tensor, copies: int = 1
    ) -> None:
        self.encoder, self.latents, self.text, self.copies = encoder, latents, text, copies
        self.timestep: Any = None
        self.features: dict[str, torch.Tensor] = {}

    def step(self, unet: nn.Module, timestep: torch.Tensor | int) -> dict[str, torch.Tensor]:
        """Give ``unet`` the features at ``timestep`` (computed only if the timestep changed)."""
        key = int(timestep)
        if key != self.timestep:
            t = torch.full((len(self.latents),), key, device=self.latents.device, dtype=torch.long)
            with torch.no_grad():
                features = self.encoder(self.latents, t, self.text)
            self.features = {p: f.repeat(self.copies, 1, 1) for p, f in features.items()}
            self.timestep = key
        set_reference_features(unet, self.features)
        return self.features


# ----------------------------------------------------------------------------- files


def save_encoder(encoder: AppearanceEncoder, folder: str | os.PathLike, info: dict[str, Any]) -> None:
    """``appearance_encoder.safetensors`` (trainable tensors) and ``appearance_encoder.json`` (config, base, ...)."""
    folder = Path(folder)
    save_safetensors(
        encoder.state_dict_trainable(), folder / ENCODER_FILE, {"reference": encoder.config.to_dict()}
    )
    write_json(info | {"reference": encoder.config.to_dict()}, folder / ENCODER_INFO)


def load_encoder(
    folder: str | os.PathLike, base: nn.Module, base_description: dict[str, Any], step: int | None = None
) -> tuple[AppearanceEncoder, dict[str, Any]]:
    """An encoder trained on a base of ``base``'s architecture: frozen parts from ``base``, trained ones from file.

    Args:
        folder: written by ``dreamvideo learn-appearance-encoder``.
        base: the main UNet.
        base_description: :func:`dreamvideo.base.describe_base` of the loaded base (fingerprint check).
        step: use the checkpoint of this training step.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DreamVideoError(f"{folder}: appearance encoder folder not found")
    info = read_json(folder / ENCODER_INFO)
    if info.get("type") != "dreamvideo-appearance-encoder":
        raise DreamVideoError(f"{folder / ENCODER_INFO}: not an appearance encoder")
    check_same_architecture(info["base"], base_description, f"appearance encoder {folder}")
    file = folder / ENCODER_FILE
    if step is not None:
        file = folder / "checkpoints" / "appearance_encoder" / f"step-{step:06d}" / ENCODER_FILE
        if not file.is_file():
            raise DreamVideoError(f"{folder}: no appearance encoder checkpoint at step {step}")
    tensors, _ = load_safetensors(file)
    encoder = AppearanceEncoder.from_unet(base, ReferenceConfig.from_dict(info["reference"]))
    encoder.load_trainable({k: v.to(next(base.parameters()).dtype) for k, v in tensors.items()}, str(file))
    return encoder, info
