"""DreamVideoPipeline: text-to-video generation with learned subjects and motions (method.md, section 6).

A diffusers pipeline on any ``UNet3DConditionModel`` base: classifier-free guidance with the authors' appearance
guidance of the motion adapter, DDIM inversion of an initial video, offset noise, and the appearance encoder's
reference attention (section 9). Importing this module registers the class with diffusers, so that
``DiffusionPipeline.from_pretrained`` loads a folder written by ``save_pretrained``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet3DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.loaders import TextualInversionLoaderMixin
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from tqdm.auto import tqdm
from transformers import (
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from dreamvideo import adapters as ad
from dreamvideo.base import TOY_NAMES, describe_base, resolve_base
from dreamvideo.fileio import DreamVideoError
from dreamvideo.loaders import (
    EMBEDS_FILE,
    IDENTITY_FILE,
    MOTION_ADAPTER_FILE,
    MOTION_FILE,
    SUBJECT_FILE,
    DreamVideoLoaderMixin,
    _checkpoint_file,
)
from dreamvideo.reference.pipeline import AppearanceEncoderMixin  # appearance encoder (section 9)
from dreamvideo.video_io import to_uint8_frames

__all__ = [
    "EMBEDS_FILE",
    "IDENTITY_FILE",
    "MOTION_ADAPTER_FILE",
    "MOTION_FILE",
    "OUTPUT_TYPES",
    "SUBJECT_FILE",
    "DreamVideoOutput",
    "DreamVideoPipeline",
    "PipelineInputError",
    "_checkpoint_file",
]

OUTPUT_TYPES = ("uint8", "np", "pt", "pil", "latent")
ImageInput = PIL.Image.Image | np.ndarray


class PipelineInputError(DreamVideoError, ValueError):
    """An argument of :class:`DreamVideoPipeline` that cannot work (raised before any computation)."""


@dataclass
class DreamVideoOutput(BaseOutput):
    """Output of :class:`DreamVideoPipeline`.

    Args:
        frames: by ``output_type``: ``"uint8"`` a list of uint8 arrays (frames, height, width, 3), one per video;
            ``"np"`` one float array (batch, frames, height, width, 3) in [0, 1]; ``"pt"`` a float tensor
            (batch, frames, 3, height, width) in [0, 1]; ``"pil"`` a list of lists of images; ``"latent"`` the
            latents (batch, channels, frames, h, w).
    """

    frames: list[np.ndarray] | np.ndarray | torch.Tensor | list[list[PIL.Image.Image]]


class DreamVideoPipeline(
    DiffusionPipeline, TextualInversionLoaderMixin, DreamVideoLoaderMixin, AppearanceEncoderMixin
):
    """Generate videos from text with optional learned subjects (word + identity adapter) and motions.

    Args:
        vae: frame autoencoder (``AutoencoderKL``).
        text_encoder: CLIP text model; its last hidden state conditions the UNet.
        tokenizer: its tokenizer.
        unet: a ``UNet3DConditionModel``.
        scheduler: any diffusers scheduler; DDIM by default (``DDIMScheduler.from_config``).
        image_encoder: optional ``CLIPVisionModelWithProjection`` for appearance guidance.
        feature_extractor: its ``CLIPImageProcessor``.
        default_guidance_scale: the guidance scale a call uses when given none; a base folder sets it in its
            ``model_index.json`` (the built-in toy model: 3.0), else the paper's 9.0.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _optional_components = ["image_encoder", "feature_extractor"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    _guidance_scale, _guidance_rescale, _num_timesteps, _interrupt = 1.0, 0.0, 0, False  # set by each call

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet3DConditionModel,
        scheduler: SchedulerMixin,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        feature_extractor: CLIPImageProcessor | None = None,
        default_guidance_scale: float = 9.0,
    ) -> None:
        super().__init__()
        self.register_to_config(default_guidance_scale=float(default_guidance_scale))
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.video_processor = VideoProcessor(do_resize=False, vae_scale_factor=self.vae_scale_factor)
        self._base_name: str | None = None
        self.subject: dict[str, Any] | None = None
        self.motion: dict[str, Any] | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None = "toy",
        image_encoder: str | os.PathLike | CLIPVisionModelWithProjection | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        **components: Any,
    ) -> DreamVideoPipeline:
        """Load a base model: a diffusers text-to-video folder, a hub id, or ``"toy"`` (the built-in model).

        Args:
            pretrained_model_name_or_path: folder with ``unet/ vae/ text_encoder/ tokenizer/ scheduler/``
                (optionally ``image_encoder/`` and ``feature_extractor/``; no ``model_index.json`` needed), a hub id
                such as ``damo-vilab/text-to-video-ms-1.7b``, or ``"toy"``.
            image_encoder: a ``CLIPVisionModelWithProjection`` folder (or model), overriding ``image_encoder/``.
            torch_dtype: weights dtype of the frozen modules (``torch.float16`` / ``torch.bfloat16`` on GPUs).
            device: where to put the modules.
            components: modules to use instead of loading them, as in diffusers (``scheduler=...``, ``unet=...``).
        """
        unknown = sorted(set(components) - set(inspect.signature(cls.__init__).parameters) - {"self"})
        if unknown:
            raise TypeError(f"from_pretrained() got unexpected arguments {unknown}")
        root = resolve_base(pretrained_model_name_or_path)
        kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        loaded = _load_base_components(root, kw, components)
        loaded.update(_load_image_encoder(root, image_encoder, components.get("feature_extractor"), kw))
        loaded["default_guidance_scale"] = components.get(
            "default_guidance_scale", folder_default_guidance(root)
        )
        pipe = cls(**loaded)
        name = pretrained_model_name_or_path
        pipe._base_name = "toy" if name is None or str(name) in TOY_NAMES else str(name)
        for module in loaded.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False).eval()
        if device is not None:
            pipe.to(device)
        return pipe

    @property
    def base_name(self) -> str:
        """The base's name as given to ``from_pretrained`` (``"toy"`` for the built-in model)."""
        return self._base_name or str(self.config.get("_name_or_path") or "unknown")

    def resolve_guidance_scale(self, guidance_scale: float | None) -> float:
        """``guidance_scale``, or the base's ``default_guidance_scale`` when it is ``None``."""
        return self.config.default_guidance_scale if guidance_scale is None else guidance_scale

    def base_description(self) -> dict[str, Any]:
        return describe_base(self.base_name, dict(self.unet.config), self.text_encoder.config.hidden_size)

    @property
    def default_guidance_rescale(self) -> float:
        """0.7 for a zero-terminal-SNR base (Lin et al., 2024), 0 otherwise (ModelScope's setting)."""
        return 0.7 if self.scheduler.config.get("rescale_betas_zero_snr", False) else 0.0

    @property
    def condition_dim(self) -> int | None:
        return None if self.image_encoder is None else int(self.image_encoder.config.projection_dim)

    # ------------------------------------------------------------------ state of one call (diffusers' properties)
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def guidance_rescale(self) -> float:
        return self._guidance_rescale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # ------------------------------------------------------------------ encoders
    @torch.no_grad()
    def encode_text(self, prompts: list[str], device: torch.device | None = None) -> torch.Tensor:
        """CLIP text features (batch, tokens, dim), the last hidden state, of a list of prompts.

        Args:
            prompts: the texts; words loaded with ``load_textual_inversion`` are expanded to all their vectors.
            device: where to run; the pipeline's execution device by default.
        """
        prompts = self.maybe_convert_prompt(list(prompts), self.tokenizer)
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids.to(device or self._execution_device))[0]

    @torch.no_grad()
    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device | None = None,
        num_videos_per_prompt: int = 1,
        do_classifier_free_guidance: bool = False,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text features of the prompts and, for guidance, of the negative prompts (diffusers' ``encode_prompt``).

        Args:
            prompt: the prompt(s); ignored when ``prompt_embeds`` is given.
            device: where to put the features; the execution device by default.
            num_videos_per_prompt: copies of each prompt's features, one per video.
            do_classifier_free_guidance: also return the negative prompts' features.
            negative_prompt: the unconditional prompt(s) of guidance; empty by default (the paper's).
            prompt_embeds, negative_prompt_embeds: precomputed features (batch, tokens, dim).

        Returns:
            ``(prompt_embeds, negative_prompt_embeds)``, each (batch * num_videos_per_prompt, tokens, dim); the second
            is ``None`` without guidance.
        """
        device = device or self._execution_device
        if prompt_embeds is None:
            prompt_embeds = self.encode_text([prompt] if isinstance(prompt, str) else prompt, device)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative = negative_prompt or ""
            negative = [negative] * len(prompt_embeds) if isinstance(negative, str) else negative
            negative_prompt_embeds = self.encode_text(negative, device)
        pair = (prompt_embeds, negative_prompt_embeds if do_classifier_free_guidance else None)
        positive, negative = (
            None if e is None else e.to(device).repeat_interleave(num_videos_per_prompt, dim=0) for e in pair
        )
        return positive, negative

    @torch.no_grad()
    def encode_image(self, images: list[ImageInput]) -> torch.Tensor:
        """Appearance embeddings ``e`` (batch, projection_dim) from the CLIP image encoder."""
        if self.image_encoder is None:
            raise DreamVideoError(
                "this base has no image_encoder/ for appearance guidance; pass --image-encoder PATH"
            )
        pixels = self.feature_extractor(images=list(images), return_tensors="pt").pixel_values
        pixels = pixels.to(self._execution_device, self.image_encoder.dtype)
        return self.image_encoder(pixel_values=pixels).image_embeds

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """VAE latents (batch, channels, frames, h, w) of pixels (batch, frames, 3, H, W) in [-1, 1]."""
        b, f = frames.shape[:2]
        flat = frames.reshape(b * f, *frames.shape[2:]).to(self._execution_device, self.vae.dtype)
        latents = self.vae.encode(flat).latent_dist.sample(generator) * self.vae.config.scaling_factor
        return latents.reshape(b, f, *latents.shape[1:]).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels (batch, frames, 3, H, W) in [-1, 1] from latents (batch, channels, frames, h, w)."""
        b, c, f, h, w = latents.shape
        flat = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w) / self.vae.config.scaling_factor
        images = self.vae.decode(flat.to(self.vae.dtype)).sample
        return images.reshape(b, f, *images.shape[1:]).float().clamp(-1, 1)

    # ------------------------------------------------------------------ DDIM inversion
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
        """DDIM inversion of clean latents to noise, as the authors do (method.md, section 10).

        The empty prompt, no appearance condition, no guidance; the model is evaluated at t = 0, k, ..., T - k
        (k = T / steps) on its input at that level, and the last step lands on pure predicted noise (alpha_bar = 0).
        diffusers' ``DDIMInverseScheduler`` evaluates the model at the level it steps to and cannot reach
        alpha_bar = 0; its steps equal these up to the last one (``tests/test_pipeline.py``). Runs in float64.

        Args:
            latents: clean latents (batch, channels, frames, h, w).
            num_inference_steps: inversion steps.
            progress: show a progress bar.
        """
        device = self._execution_device
        total = self.scheduler.config.num_train_timesteps
        stride = total // num_inference_steps
        alphas = self.scheduler.alphas_cumprod.to(device, torch.float64)
        text = self.encode_text([""] * latents.shape[0], device).to(self.unet.dtype)
        x = latents.to(device, torch.float64)
        with (
            _no_condition(self.unet, "motion"),
            self._progress(len(range(0, total, stride)), progress) as bar,
        ):
            for t in range(0, total, stride):
                out = self.unet(x.to(self.unet.dtype), t, encoder_hidden_states=text).sample.double()
                x0, eps = self.predicted_x0_and_noise(out, x, alphas[t])
                a_next = alphas[t + stride] if t + stride < total else alphas.new_zeros(())
                x = (
                    a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
                )  # DDIM, eq. 12 of Song et al., run forwards
                bar.update()
        return x.float()

    # ------------------------------------------------------------------ sampling
    def check_inputs(
        self,
        prompt: str | list[str] | None,
        height: int,
        width: int,
        num_frames: int,
        num_inference_steps: int,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        guidance_rescale: float = 0.0,
        init_video: torch.Tensor | None = None,
        init_strength: float = 0.0,
        output_type: str = "uint8",
        num_videos_per_prompt: int = 1,
        eta: float = 0.0,
    ) -> None:
        """Raise :class:`PipelineInputError` (a ``ValueError``) for arguments that cannot work.

        Args:
            see :meth:`__call__`.
        """
        self._check_prompts(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        self._check_sizes(height, width, num_frames, num_inference_steps, num_videos_per_prompt)
        if init_video is not None and init_video.shape != (num_frames, 3, height, width):
            raise PipelineInputError(
                f"init_video must be (num_frames, 3, height, width) = {(num_frames, 3, height, width)}, "
                f"got {tuple(init_video.shape)}"
            )
        checks = [
            (0 <= init_strength <= 0.5, f"init_strength must be in [0, 0.5], got {init_strength}"),
            (
                init_strength == 0 or init_video is not None,
                f"init_strength {init_strength} needs an init_video",
            ),
            (0 <= guidance_rescale <= 1, f"guidance_rescale must be in [0, 1], got {guidance_rescale}"),
            (eta >= 0, f"eta must be >= 0, got {eta}"),
            (output_type in OUTPUT_TYPES, f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}"),
        ]
        unknown = [
            k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs
        ]
        checks.append(
            (
                not unknown,
                f"callback_on_step_end_tensor_inputs must be in {self._callback_tensor_inputs}, "
                f"got {unknown}",
            )
        )
        for ok, message in checks:
            if not ok:
                raise PipelineInputError(message)

    @staticmethod
    def _check_prompts(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds) -> None:
        if (prompt is None) == (prompt_embeds is None):
            raise PipelineInputError("pass exactly one of `prompt` and `prompt_embeds`")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise PipelineInputError(f"`prompt` must be a str or a list of str, got {type(prompt).__name__}")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise PipelineInputError("pass at most one of `negative_prompt` and `negative_prompt_embeds`")
        batch = len(prompt) if isinstance(prompt, list) else 1 if prompt is not None else len(prompt_embeds)
        if isinstance(negative_prompt, list) and len(negative_prompt) != batch:
            raise PipelineInputError(f"{len(negative_prompt)} negative prompts for {batch} prompts")
        if prompt_embeds is not None and negative_prompt_embeds is not None:
            if prompt_embeds.shape != negative_prompt_embeds.shape:
                raise PipelineInputError(
                    f"prompt_embeds {tuple(prompt_embeds.shape)} and negative_prompt_embeds "
                    f"{tuple(negative_prompt_embeds.shape)} must have the same shape"
                )

    def _check_sizes(self, height: int, width: int, num_frames: int, steps: int, videos: int) -> None:
        factor = self.vae_scale_factor
        if height % factor or width % factor:
            raise PipelineInputError(f"height and width must be multiples of {factor}, got {height}x{width}")
        for name, value in (
            ("num_frames", num_frames),
            ("num_inference_steps", steps),
            ("num_videos_per_prompt", videos),
        ):
            if value < 1:
                raise PipelineInputError(f"{name} must be at least 1, got {value}")

    def prepare_latents(
        self,
        batch_size: int,
        num_frames: int,
        height: int,
        width: int,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
        offset_noise: float = 0.0,
    ) -> torch.Tensor:
        """Starting noise (batch, channels, frames, h, w) in float32, drawn on ``device`` with ``generator``.

        Args:
            batch_size: videos in the batch.
            num_frames, height, width: the video's size in pixels.
            device: where to draw (a CPU generator draws on the CPU and moves, as diffusers' ``randn_tensor``).
            generator: a generator, or one per video.
            latents: the noise to use instead of drawing (moved to ``device``; no offset added).
            offset_noise: strength of an offset per sample, channel and frame, drawn after the noise (the authors').
        """
        shape = (
            batch_size,
            self.unet.config.in_channels,
            num_frames,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if isinstance(generator, list) and len(generator) != batch_size:
            raise PipelineInputError(f"{len(generator)} generators for a batch of {batch_size} videos")
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise PipelineInputError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
            return latents.to(device, torch.float32)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        if offset_noise:  # the authors' offset noise at inference
            offset = randn_tensor((*shape[:3], 1, 1), generator=generator, device=device, dtype=torch.float32)
            latents = latents + offset_noise * offset
        return latents

    def prepare_extra_step_kwargs(self, generator, eta: float) -> dict[str, Any]:
        """``eta`` and ``generator`` for schedulers whose ``step`` takes them (diffusers' convention)."""
        params = set(inspect.signature(self.scheduler.step).parameters)
        return {k: v for k, v in (("eta", eta), ("generator", generator)) if k in params}

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int = 16,
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = None,
        num_videos_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "uint8",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | tuple[str, ...] = ("latents",),
        guidance_rescale: float | None = None,
        appearance_image: ImageInput | None = None,
        appearance_strength: float = 1.0,
        appearance_strength_uncond: float = 1.0,
        init_video: torch.Tensor | None = None,
        init_strength: float = 0.0,
        offset_noise: float = 0.0,
        reference_image: ImageInput | None = None,
        reference_strength: float = 1.0,
        reference_strength_uncond: float = 1.0,
        progress: bool = True,
    ) -> DreamVideoOutput | tuple:
        """Generate ``num_videos_per_prompt`` videos per prompt.

        Args:
            prompt: text, with a learned subject's word where wanted ("a <sks> dog playing guitar").
            height, width: video size in pixels; the UNet's native size by default.
            num_frames: frames per video.
            num_inference_steps: denoising steps (paper: 50, DDIM).
            guidance_scale: classifier-free guidance weight; 1 disables guidance. Default: the base's
                ``default_guidance_scale`` (the paper's 9.0 unless the base's ``model_index.json`` says otherwise).
            negative_prompt: the unconditional prompt(s) of guidance (default and paper: empty).
            num_videos_per_prompt: videos per prompt (their noise differs).
            eta: DDIM's eta (0: deterministic; passed to schedulers that take it).
            generator: a torch generator (or one per video) for reproducible noise; a CPU one works with any device.
            latents: starting noise (batch * num_videos_per_prompt, channels, frames, h, w) instead of drawing it.
            prompt_embeds, negative_prompt_embeds: precomputed text features instead of the prompts.
            output_type: ``"uint8"`` (default: uint8 arrays, what the writers and metrics read), or diffusers'
                ``"np"``, ``"pt"``, ``"pil"``, ``"latent"`` (see :class:`DreamVideoOutput`).
            return_dict: return a :class:`DreamVideoOutput`; otherwise the tuple ``(frames,)``.
            callback_on_step_end: ``f(pipe, step, timestep, tensors) -> tensors`` after each step (or a diffusers
                ``PipelineCallback``); it may replace ``latents``, ``prompt_embeds`` (both guidance branches,
                concatenated) and ``negative_prompt_embeds``, and set ``pipe._interrupt``.
            callback_on_step_end_tensor_inputs: the tensors it receives (a subset of ``_callback_tensor_inputs``).
            guidance_rescale: ``phi`` of Lin et al. (2024, section 3.4): rescales the guided prediction towards the
                conditional one's standard deviation. Default: 0.7 for a zero-terminal-SNR base, 0 otherwise.
            appearance_image: reference image for the motion adapter's appearance guidance (section 6); without one
                the motion adapter has no condition term (the authors' code).
            appearance_strength: ``lam_c``, guidance strength in the conditional branch.
            appearance_strength_uncond: ``lam_u``, strength in the unconditional branch, which gets the zero vector.
            init_video: pixels (num_frames, 3, height, width) in [-1, 1] of a training video; its DDIM-inverted
                latents are mixed with the noise (section 6) as ``sqrt(s) * inverted + sqrt(1 - s) * noise``.
            init_strength: ``s`` in [0, 0.5]; 0 (default) ignores ``init_video``.
            offset_noise: strength of an offset added to the drawn noise, one per sample, channel and frame, as in
                training (the authors sample with 0.1, the default of ``dreamvideo generate``).
            reference_image: image of the subject for the appearance encoder (``load_appearance_encoder`` first;
                section 9); it is also the motion adapter's appearance image unless ``appearance_image`` is given.
            reference_strength, reference_strength_uncond: blend of the reference attention in the conditional and
                unconditional branch (1: section 9's attention; 0: none).
            progress: show progress bars (``set_progress_bar_config`` also applies).

        Returns:
            :class:`DreamVideoOutput` with the videos in ``frames``, or ``(frames,)``.
        """
        height, width = self._default_size(height, width)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        rescale = self.default_guidance_rescale if guidance_rescale is None else guidance_rescale
        self.check_inputs(
            prompt,
            height,
            width,
            num_frames,
            num_inference_steps,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            callback_on_step_end_tensor_inputs,
            rescale,
            init_video,
            init_strength,
            output_type,
            num_videos_per_prompt,
            eta,
        )
        guidance_scale = self.resolve_guidance_scale(guidance_scale)
        self._guidance_scale, self._guidance_rescale, self._interrupt = guidance_scale, rescale, False
        device, guided = self._execution_device, self.do_classifier_free_guidance

        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            device,
            num_videos_per_prompt,
            guided,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
        )
        batch = prompt_embeds.shape[0]
        latents = self.prepare_latents(
            batch, num_frames, height, width, device, generator, latents, offset_noise
        )
        latents = self._mix_inverted(
            latents, init_video, init_strength, num_inference_steps, generator, progress
        )
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        if guided:  # one batch for both branches: [unconditional, conditional]
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
        if appearance_image is None:  # appearance encoder: the reference image also guides the motion adapter
            appearance_image = reference_image
        self._set_appearance(appearance_image, batch, guided, appearance_strength, appearance_strength_uncond)
        try:  # the conditions are cleared however sampling ends
            # appearance encoder (section 9): y_a once per step, shared by every frame and both guidance branches
            reference = self._start_reference(
                reference_image, batch, guided, height, width, reference_strength, reference_strength_uncond
            )
            step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
            tensors = {
                "latents": latents,
                "prompt_embeds": prompt_embeds,
                "negative_prompt_embeds": negative_prompt_embeds,
            }
            callback = _StepCallback(callback_on_step_end, callback_on_step_end_tensor_inputs, tensors)
            latents = self._denoise(latents, guided, reference, step_kwargs, callback, progress)
        finally:
            ad.clear_adapter_condition(self.unet, "motion")
            self._end_reference()
        frames = self._postprocess(latents, output_type)
        self.maybe_free_model_hooks()
        return DreamVideoOutput(frames=frames) if return_dict else (frames,)

    def _denoise(
        self,
        latents: torch.Tensor,
        guided: bool,
        reference,
        step_kwargs: dict[str, Any],
        callback,
        progress: bool,
    ) -> torch.Tensor:
        """The denoising loop over ``self.scheduler.timesteps``; text features come from ``callback.tensors``."""
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        with self._progress(len(timesteps), progress) as bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                text = callback.tensors["prompt_embeds"].to(self.unet.dtype)
                model_in = torch.cat([latents] * 2) if guided else latents
                model_in = self.scheduler.scale_model_input(model_in, t).to(self.unet.dtype)
                if reference is not None:
                    reference.step(self.unet, t)
                noise = self.unet(model_in, t, encoder_hidden_states=text).sample.float()
                noise = self._guide(noise, guided)
                latents = self.scheduler.step(noise, t, latents, **step_kwargs).prev_sample
                latents = callback(self, i, t, latents)
                bar.update()
        return latents

    def _guide(self, noise: torch.Tensor, guided: bool) -> torch.Tensor:
        """Classifier-free guidance ``eps_u + w (eps_c - eps_u)``, with guidance rescale when set."""
        if not guided:
            return noise
        uncond, conditional = noise.chunk(2)
        noise = uncond + self.guidance_scale * (conditional - uncond)
        if self.guidance_rescale > 0:
            noise = rescale_noise_cfg(noise, conditional, guidance_rescale=self.guidance_rescale)
        return noise

    def _mix_inverted(self, latents, init_video, strength: float, steps: int, generator, progress: bool):
        """``sqrt(s) * invert(encode(init_video)) + sqrt(1 - s) * latents`` (section 6); ``latents`` when s = 0."""
        if init_video is None or strength == 0:
            return latents
        generator = generator[0] if isinstance(generator, list) else generator
        video = self.encode_video(init_video.unsqueeze(0), generator).expand(latents.shape[0], -1, -1, -1, -1)
        inverted = self.invert(video.float(), steps, progress)
        return math.sqrt(strength) * inverted + math.sqrt(1 - strength) * latents

    def _postprocess(self, latents: torch.Tensor, output_type: str):
        if output_type == "latent":
            return latents
        pixels = self.decode_latents(latents)  # (batch, frames, 3, H, W) in [-1, 1]
        if output_type == "uint8":
            return [to_uint8_frames(video) for video in pixels]
        return self.video_processor.postprocess_video(pixels.permute(0, 2, 1, 3, 4), output_type=output_type)

    def _default_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        sample = self.unet.config.sample_size
        sample = sample[0] if isinstance(sample, (list, tuple)) else sample
        return height or sample * self.vae_scale_factor, width or sample * self.vae_scale_factor

    def _progress(self, total: int, enabled: bool):
        return self.progress_bar(total=total) if enabled else tqdm(total=total, disable=True)

    def _set_appearance(
        self, image: ImageInput | None, batch: int, guided: bool, lam_c: float, lam_u: float
    ) -> None:
        """The motion adapter's condition for one sampling run (section 6, and the authors' code).

        With an image: ``e`` and ``lam_c`` in the conditional branch, the zero vector (``W_cond(0)`` = its bias)
        and ``lam_u`` in the unconditional one. Without an image, or without an image encoder: no condition term.
        """
        ad.clear_adapter_condition(self.unet, "motion")
        if "motion" not in ad.adapter_names(self.unet) or image is None or not self.condition_dim:
            return
        device = self._execution_device
        e = self.encode_image([image]).float().expand(batch, -1)
        strength = torch.full((batch,), float(lam_c), device=device)
        if guided:  # the unconditional branch gets the zero vector with its own strength
            e = torch.cat([torch.zeros_like(e), e])
            strength = torch.cat([torch.full((batch,), float(lam_u), device=device), strength])
        ad.set_adapter_condition(self.unet, "motion", e, strength)


class _StepCallback:
    """``callback_on_step_end`` of one call: hands it the tensors it asked for and keeps what it returns."""

    def __init__(self, fn, inputs, tensors: dict[str, torch.Tensor | None]) -> None:
        self.fn, self.inputs, self.tensors = fn, list(inputs), tensors

    def __call__(self, pipe: DreamVideoPipeline, step: int, timestep, latents: torch.Tensor) -> torch.Tensor:
        self.tensors["latents"] = latents
        if self.fn is not None:
            returned = self.fn(pipe, step, timestep, {k: self.tensors[k] for k in self.inputs}) or {}
            self.tensors.update({k: v for k, v in returned.items() if k in self.tensors})
        return self.tensors["latents"]


@contextlib.contextmanager
def _no_condition(unet: torch.nn.Module, name: str) -> Iterator[None]:
    """Run without adapter ``name``'s appearance condition, and put back the caller's afterwards."""
    saved = ad.get_adapter_condition(unet, name)
    ad.clear_adapter_condition(unet, name)
    try:
        yield
    finally:
        ad.restore_adapter_condition(unet, name, saved)


def _load_base_components(root: Path, kw: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The five required modules of a diffusers text-to-video folder (those in ``given`` are used as they are)."""
    loaders = {  # the UNet first: a base whose config misfits its weights fails before anything is printed
        "unet": lambda: UNet3DConditionModel.from_pretrained(root, subfolder="unet", **kw),
        "vae": lambda: AutoencoderKL.from_pretrained(root, subfolder="vae", **kw),
        "text_encoder": lambda: CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **kw),
        "tokenizer": lambda: AutoTokenizer.from_pretrained(root, subfolder="tokenizer"),
        "scheduler": lambda: DDIMScheduler.from_pretrained(root, subfolder="scheduler"),
    }
    return {name: given[name] if name in given else load() for name, load in loaders.items()}


def folder_default_guidance(root: Path) -> float:
    """``default_guidance_scale`` of the folder's ``model_index.json``; 9.0 (the paper's) without one."""
    index = root / "model_index.json"
    if not index.is_file():
        return 9.0
    try:
        value = json.loads(index.read_text()).get("default_guidance_scale", 9.0)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise DreamVideoError(f"{index}: not a JSON object ({err})") from None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 1
    ):
        raise DreamVideoError(f"{index}: default_guidance_scale must be a finite number >= 1, got {value!r}")
    return float(value)


def _load_image_encoder(root: Path, image_encoder, feature_extractor, kw: dict[str, Any]) -> dict[str, Any]:
    """``image_encoder`` and ``feature_extractor``: a given model or folder, else ``root/image_encoder/`` if any."""
    folder = None
    if not isinstance(image_encoder, torch.nn.Module):
        path = Path(image_encoder) if image_encoder is not None else root / "image_encoder"
        if not path.is_dir():
            if image_encoder is not None:
                raise DreamVideoError(f"{path}: image encoder folder not found")
            return {"image_encoder": None, "feature_extractor": None}
        folder = path.parent / "feature_extractor" if image_encoder is None else path
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(path, **kw)
    processor = feature_extractor or _feature_extractor(folder, image_encoder)
    return {"image_encoder": image_encoder, "feature_extractor": processor}


def _feature_extractor(folder: Path | None, encoder: CLIPVisionModelWithProjection) -> CLIPImageProcessor:
    """The processor saved in ``folder``, else a CLIP processor at the encoder's image size."""
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        return CLIPImageProcessor.from_pretrained(folder)
    size = encoder.config.image_size
    return CLIPImageProcessor(size=size, crop_size=size)


def _register_with_diffusers() -> None:
    """``DiffusionPipeline.from_pretrained`` looks the ``_class_name`` of ``model_index.json`` up on the diffusers
    module; make ``"DreamVideoPipeline"`` resolve to this class."""
    import diffusers

    setattr(diffusers, DreamVideoPipeline.__name__, DreamVideoPipeline)


_register_with_diffusers()
