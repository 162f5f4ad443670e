"""DreamVideoPipeline: text-to-video generation with learned subjects and motions (section 6).

Our own DDIM / classifier-free-guidance loop on any diffusers ``UNet3DConditionModel`` base.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet3DConditionModel
from diffusers.loaders import TextualInversionLoaderMixin
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPTextModel, CLIPVisionModelWithProjection

from dreamvideo import adapters as ad
from dreamvideo import methods
from dreamvideo.artifacts import EMBEDS_FILE, IDENTITY_FILE, MOTION_ADAPTER_FILE, MOTION_FILE, SUBJECT_FILE  # noqa: F401
from dreamvideo.base import describe_base, resolve_base
from dreamvideo.fileio import DreamVideoError
from dreamvideo.reference.pipeline import AppearanceEncoderMixin  # appearance encoder (section 9)


@dataclass
class DreamVideoOutput:
    """``frames``: one uint8 array (frames, height, width, 3) per prompt."""

    frames: list[np.ndarray]


class DreamVideoPipeline(DiffusionPipeline, TextualInversionLoaderMixin, AppearanceEncoderMixin):
    """Generate videos from text with optional learned subjects (token + identity adapter) and motions.

    Args:
        vae: frame autoencoder (``AutoencoderKL``).
        text_encoder: CLIP text model; its last hidden state conditions the UNet.
        tokenizer: its tokenizer.
        unet: a ``UNet3DConditionModel``.
        scheduler: any diffusers scheduler; DDIM by default (``DDIMScheduler.from_config``).
        image_encoder: optional ``CLIPVisionModelWithProjection`` for appearance guidance.
        feature_extractor: its ``CLIPImageProcessor``.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: Any,
        unet: UNet3DConditionModel,
        scheduler: Any,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        feature_extractor: CLIPImageProcessor | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        self.base_name = "unknown"
        self.subject: dict[str, Any] | None = None
        self.motion: dict[str, Any] | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        base: str | os.PathLike | None = "toy",
        image_encoder: str | os.PathLike | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> DreamVideoPipeline:
        """Load a base model: a diffusers text-to-video folder, a hub id, or ``"toy"`` (the built-in model).

        Args:
            base: folder with ``unet/ vae/ text_encoder/ tokenizer/ scheduler/`` (optionally ``image_encoder/`` and
                ``feature_extractor/``), a hub id such as ``damo-vilab/text-to-video-ms-1.7b``, or ``"toy"``.
            image_encoder: a ``CLIPVisionModelWithProjection`` folder, overriding ``base/image_encoder``.
            torch_dtype: weights dtype of the frozen modules (``torch.float16`` on GPUs).
            device: where to put the modules.
        """
        root = resolve_base(base)
        kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        unet = UNet3DConditionModel.from_pretrained(root, subfolder="unet", **kw)
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **kw)
        text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **kw)
        tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer")
        scheduler = DDIMScheduler.from_pretrained(root, subfolder="scheduler")
        enc_path = Path(image_encoder) if image_encoder is not None else root / "image_encoder"
        encoder = processor = None
        if enc_path.is_dir():
            encoder = CLIPVisionModelWithProjection.from_pretrained(enc_path, **kw)
            proc_path = enc_path.parent / "feature_extractor" if image_encoder is None else enc_path
            processor = (
                CLIPImageProcessor.from_pretrained(proc_path)
                if (proc_path / "preprocessor_config.json").is_file()
                else CLIPImageProcessor(size=encoder.config.image_size, crop_size=encoder.config.image_size)
            )
        elif image_encoder is not None:
            raise DreamVideoError(f"{enc_path}: image encoder folder not found")
        pipe = cls(vae, text_encoder, tokenizer, unet, scheduler, encoder, processor)
        pipe.base_name = "toy" if base is None or str(base) in ("toy", "dreamvideo-toy") else str(base)
        for module in (unet, vae, text_encoder, encoder):
            if module is not None:
                module.requires_grad_(False).eval()
        if device is not None:
            pipe.to(device)
        return pipe

    def base_description(self) -> dict[str, Any]:
        return describe_base(self.base_name, dict(self.unet.config), self.text_encoder.config.hidden_size)

    @property
    def default_guidance_rescale(self) -> float:
        """0.7 for a zero-terminal-SNR base (Lin et al., 2024), 0 otherwise (ModelScope's setting)."""
        return 0.7 if self.scheduler.config.get("rescale_betas_zero_snr", False) else 0.0

    @property
    def condition_dim(self) -> int | None:
        return None if self.image_encoder is None else int(self.image_encoder.config.projection_dim)

    def load_subject(self, path: str | os.PathLike, step: int | None = None, scale: float = 1.0) -> str | None:
        """Add a learned subject of any method (from ``checkpoints/`` at ``step`` if given; see
        :func:`dreamvideo.methods.load_into`). Returns the words naming it in prompts (its token, or the class word
        for a baseline without one); ``None`` for a subject without a learned word (prompt with the class word)."""
        return methods.load_into(self, path, "subject", step, scale)

    def load_motion(self, path: str | os.PathLike, step: int | None = None, scale: float = 1.0) -> None:
        """Add a learned motion of any method (from ``checkpoints/`` at ``step`` if given)."""
        methods.load_into(self, path, "motion", step, scale)

    def unload(self, name: str) -> None:
        """Remove the ``"identity"`` or ``"motion"`` adapter (the learned token stays in the vocabulary)."""
        ad.detach_adapter(self.unet, name)
        if name == "motion":
            self.motion = None

    # ------------------------------------------------------------------ encoders
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """CLIP text features (last hidden state) for a list of prompts."""
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids)[0]

    @torch.no_grad()
    def encode_image(self, images: list[Image.Image | np.ndarray]) -> torch.Tensor:
        """Appearance embeddings ``e`` (batch, projection_dim) from the CLIP image encoder."""
        if self.image_encoder is None:
            raise DreamVideoError(
                "this base has no image_encoder/ for appearance guidance; pass --image-encoder PATH"
            )
        pixels = self.feature_extractor(images=list(images), return_tensors="pt").pixel_values
        pixels = pixels.to(self.image_encoder.device, self.image_encoder.dtype)
        return self.image_encoder(pixel_values=pixels).image_embeds

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """VAE latents (batch, channels, frames, h, w) of pixels (batch, frames, 3, H, W) in [-1, 1]."""
        b, f = frames.shape[:2]
        flat = frames.reshape(b * f, *frames.shape[2:]).to(self.vae.device, self.vae.dtype)
        latents = self.vae.encode(flat).latent_dist.sample(generator) * self.vae.config.scaling_factor
        return latents.reshape(b, f, *latents.shape[1:]).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels (batch, frames, 3, H, W) in [-1, 1] from latents (batch, channels, frames, h, w)."""
        b, c, f, h, w = latents.shape
        flat = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w) / self.vae.config.scaling_factor
        images = self.vae.decode(flat.to(self.vae.dtype)).sample
        return images.reshape(b, f, *images.shape[1:]).float().clamp(-1, 1)

    # ------------------------------------------------------------------ sampling
    def predicted_x0_and_noise(
        self, model_output: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, eps)`` from the UNet output at noise level ``alpha_bar``, whatever the scheduler's prediction type."""
        kind = self.scheduler.config.prediction_type
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        if kind == "epsilon":  # x_t = a x0 + s eps
            return (sample - s * model_output) / a, model_output
        if kind == "v_prediction":  # v = a eps - s x0
            return a * sample - s * model_output, a * model_output + s * sample
        if kind == "sample":
            return model_output, (sample - a * model_output) / s
        raise DreamVideoError(f"unsupported prediction_type {kind!r} in the base's scheduler config")

    @torch.no_grad()
    def invert(self, latents: torch.Tensor, num_inference_steps: int, progress: bool = True) -> torch.Tensor:
        """DDIM inversion of clean latents to noise, as the authors do: the empty prompt, no appearance condition,
        no guidance; the model is evaluated at t = 0, k, ..., T - k (k = T / steps) on its input at that level,
        and the last step lands on pure predicted noise (alpha_bar = 0)."""
        total = self.scheduler.config.num_train_timesteps
        stride = total // num_inference_steps
        alphas = self.scheduler.alphas_cumprod.to(latents.device, torch.float64)
        text = self.encode_prompt([""] * latents.shape[0]).to(self.unet.dtype)
        saved = ad.get_adapter_condition(self.unet, "motion")
        ad.clear_adapter_condition(self.unet, "motion")  # the authors invert without an image
        x = latents.double()
        try:
            steps = range(0, total, stride)
            for t in self.progress_bar(steps) if progress else steps:
                out = self.unet(x.to(self.unet.dtype), t, encoder_hidden_states=text).sample.double()
                x0, eps = self.predicted_x0_and_noise(out, x, alphas[t])
                a_next = alphas[t + stride] if t + stride < total else alphas.new_zeros(())
                x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps  # DDIM, eq. 12 of Song et al., run forwards
        finally:
            ad.restore_adapter_condition(self.unet, "motion", saved)
        return x.float()

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str = "",
        num_frames: int = 16,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 9.0,
        appearance_image: Image.Image | np.ndarray | None = None,
        appearance_strength: float = 1.0,
        appearance_strength_uncond: float = 1.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        init_video: torch.Tensor | None = None,
        init_strength: float = 0.0,
        guidance_rescale: float | None = None,
        offset_noise: float = 0.0,
        progress: bool = True,
        reference_image: Image.Image | np.ndarray | None = None,
        reference_strength: float = 1.0,
        reference_strength_uncond: float = 1.0,
    ) -> DreamVideoOutput:
        """Generate one video per prompt.

        Args:
            prompt: text, with a learned subject's token where wanted ("a <sks> dog playing guitar").
            negative_prompt: the unconditional prompt of classifier-free guidance (paper: empty).
            num_frames, height, width: video size; height/width default to the UNet's native size.
            num_inference_steps: DDIM steps (paper: 50).
            guidance_scale: classifier-free guidance weight (paper: 9.0); 1 disables guidance.
            appearance_image: reference image for the motion adapter's appearance guidance (section 6);
                without one, the motion adapter has no condition term (the authors' code).
            appearance_strength: ``lam_c``, guidance strength in the conditional branch.
            appearance_strength_uncond: ``lam_u``, strength in the unconditional branch, which gets the zero vector.
            generator: torch generator for reproducible noise.
            latents: optional starting noise (batch, channels, frames, h, w).
            init_video: optional pixels (frames, 3, H, W) in [-1, 1] of a training video; its DDIM-inverted latents are
                mixed with the noise (section 6) as ``sqrt(s) * inverted + sqrt(1 - s) * noise``.
            init_strength: ``s`` in [0, 0.5]; 0 (default) ignores ``init_video``.
            guidance_rescale: ``phi`` of Lin et al. (2024, section 3.4): rescales the guided prediction towards the
                conditional one's standard deviation. Default: 0.7 for a zero-terminal-SNR base, 0 otherwise
                (ModelScope).
            offset_noise: strength of an offset added to the starting noise, one draw per sample, channel and
                frame, as in training (the authors sample with 0.1, the default of ``dreamvideo generate``).
            progress: show a progress bar.
            reference_image: image of the subject for the appearance encoder (``load_appearance_encoder`` first;
                section 9); it is also the motion adapter's appearance image unless ``appearance_image`` is given.
            reference_strength, reference_strength_uncond: blend of the reference attention in the conditional and
                unconditional branch (1: section 9's attention; 0: none).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not 0 <= init_strength <= 0.5:
            raise DreamVideoError(f"init_strength must be in [0, 0.5], got {init_strength}")
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        sample = self.unet.config.sample_size
        sample = sample[0] if isinstance(sample, (list, tuple)) else sample
        height = height or sample * factor
        width = width or sample * factor
        if height % factor or width % factor:
            raise DreamVideoError(f"height and width must be multiples of {factor}, got {height}x{width}")
        device, batch = self.unet.device, len(prompts)
        guided = guidance_scale > 1.0
        rescale = self.default_guidance_rescale if guidance_rescale is None else guidance_rescale
        if not 0 <= rescale <= 1:
            raise DreamVideoError(f"guidance_rescale must be in [0, 1], got {rescale}")
        cond = self.encode_prompt(prompts)
        text = torch.cat([self.encode_prompt([negative_prompt] * batch), cond]) if guided else cond
        text = text.to(self.unet.dtype)
        if appearance_image is None:  # appearance encoder: the reference image also guides the motion adapter
            appearance_image = reference_image
        self._set_appearance(appearance_image, batch, guided, appearance_strength, appearance_strength_uncond)
        try:  # the condition is cleared however sampling ends
            shape = (batch, self.unet.config.in_channels, num_frames, height // factor, width // factor)
            if latents is None:
                latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
                if offset_noise:  # the authors' offset noise at inference
                    offset = randn_tensor((*shape[:3], 1, 1), generator=generator, device=device, dtype=torch.float32)
                    latents = latents + offset_noise * offset
            if init_video is not None and init_strength > 0:
                video_latents = self.encode_video(init_video.unsqueeze(0), generator).expand(batch, -1, -1, -1, -1)
                inverted = self.invert(video_latents.float(), num_inference_steps, progress)
                latents = math.sqrt(init_strength) * inverted + math.sqrt(1 - init_strength) * latents

            self.scheduler.set_timesteps(num_inference_steps, device=device)
            latents = latents * self.scheduler.init_noise_sigma
            timesteps = self.scheduler.timesteps
            # appearance encoder (section 9): y_a once per step, shared by every frame and both guidance branches
            reference = self._start_reference(reference_image, batch, guided, height, width, reference_strength,
                                              reference_strength_uncond)  # fmt: skip
            for t in self.progress_bar(timesteps) if progress else timesteps:
                model_in = torch.cat([latents] * 2) if guided else latents
                model_in = self.scheduler.scale_model_input(model_in, t).to(self.unet.dtype)
                if reference is not None:
                    reference.step(self.unet, t)
                noise = self.unet(model_in, t, encoder_hidden_states=text).sample.float()
                if guided:  # classifier-free guidance: eps_u + w (eps_c - eps_u)
                    uncond, conditional = noise.chunk(2)
                    noise = uncond + guidance_scale * (conditional - uncond)
                    if rescale > 0:
                        noise = rescale_noise_cfg(noise, conditional, guidance_rescale=rescale)
                latents = self.scheduler.step(noise, t, latents, generator=generator).prev_sample
        finally:
            ad.clear_adapter_condition(self.unet, "motion")
            self._end_reference()
        pixels = self.decode_latents(latents)
        frames = ((pixels + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
        return DreamVideoOutput(frames=list(frames))

    def _set_appearance(
        self, image: Image.Image | np.ndarray | None, batch: int, guided: bool, lam_c: float, lam_u: float
    ) -> None:
        """The motion adapter's condition for one sampling run (section 6, and the authors' code).

        With an image: ``e`` and ``lam_c`` in the conditional branch, the zero vector (``W_cond(0)`` = its bias)
        and ``lam_u`` in the unconditional one. Without an image, or without an image encoder: no condition term.
        """
        ad.clear_adapter_condition(self.unet, "motion")
        dim = self.condition_dim or 0
        if "motion" not in ad.adapter_names(self.unet) or image is None or not dim:
            return
        e = self.encode_image([image]).float().expand(batch, -1)
        strength = torch.full((batch,), float(lam_c), device=self.unet.device)
        if guided:  # the unconditional branch gets the zero vector with its own strength
            e = torch.cat([torch.zeros_like(e), e])
            strength = torch.cat([torch.full((batch,), float(lam_u), device=self.unet.device), strength])
        ad.set_adapter_condition(self.unet, "motion", e, strength)

