"""The toy base model: tiny configs of ModelScope's components, a word-level CLIP tokenizer, and the saved layout.

The toy model has the folder layout of ``damo-vilab/text-to-video-ms-1.7b`` (``unet/ vae/ text_encoder/
tokenizer/ scheduler/``) plus ``image_encoder/`` and ``feature_extractor/`` for appearance guidance and ``clip/``
(the full ``CLIPModel``, for metrics), so the same code loads it and a real ModelScope snapshot.
Its weights are trained by :mod:`dreamvideo.toy.pretrain` on the procedural world of :mod:`dreamvideo.toy.world`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from safetensors.torch import load_file
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from dreamvideo.fileio import DreamVideoError, replace_dir, save_safetensors, write_json
from dreamvideo.toy import world

TOY_MODEL_DIR = Path(__file__).parent / "weights"

TEXT_DIM = 64  # CLIP text hidden size = UNet cross_attention_dim
EMBED_DIM = 64  # CLIP projection size = appearance-embedding size of the motion adapters
MAX_LENGTH = 16  # tokens per prompt, start and end tokens included
LATENT_SIZE = world.IMAGE_SIZE // 4
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_MEAN = (
    0.48145466,
    0.4578275,
    0.40821073,
)  # OpenAI CLIP's normalisation, as CLIPImageProcessor's default
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Function words of the captions, plus a few common prompt words.
EXTRA_WORDS = ["a", "an", "on", "the", "of", "in", "and", "with", "video", "photo", "image"]


def toy_vocabulary() -> list[str]:
    """Every word of the toy world's captions (each becomes a single token), in a fixed order."""
    phrases = [*world.COLORS, *world.SHAPES, *world.PATTERNS, *world.BACKGROUNDS, *world.MOTIONS]
    words = [w for phrase in phrases + [world.GENERIC_MOTION_WORD] for w in phrase.split()] + EXTRA_WORDS
    return list(dict.fromkeys(words))


# ----------------------------------------------------------------------------- tokenizer


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's printable stand-in character of each byte, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _apply_bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE of one lowercase word: always merge the best-ranked adjacent pair, every occurrence of it."""
    symbols = [*word[:-1], word[-1] + "</w>"]
    while len(symbols) > 1:
        pairs = [(symbols[i], symbols[i + 1]) for i in range(len(symbols) - 1)]
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(symbols):
            if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def _bpe_tables(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges making each word one token; single characters keep any other word encodable.

    Each new merge joins the first two symbols the current merges leave in a word and ranks after all earlier
    merges, so it can never change how an earlier word is split.
    """
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars]
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        while len(symbols := _apply_bpe(word, ranks)) > 1:
            ranks[(symbols[0], symbols[1])] = len(ranks)
            tokens.append(symbols[0] + symbols[1])
    tokens = list(dict.fromkeys(tokens + [BOS, EOS]))
    return {t: i for i, t in enumerate(tokens)}, list(ranks)


def build_toy_tokenizer(save_dir: str | os.PathLike | None = None) -> CLIPTokenizer:
    """A CLIP BPE tokenizer in which every word of :func:`toy_vocabulary` is a single token.

    Args:
        save_dir: if given, the tokenizer is saved there (``vocab.json``, ``merges.txt``, configs).
    """
    vocab, merges = _bpe_tables(toy_vocabulary())
    with tempfile.TemporaryDirectory() as tmp:
        _write_bpe_files(Path(tmp), vocab, merges)
        tokenizer = CLIPTokenizer.from_pretrained(
            tmp, model_max_length=MAX_LENGTH, bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
        )
    bad = [w for w in toy_vocabulary() if len(tokenizer.encode(w, add_special_tokens=False)) != 1]
    if bad:  # would mean the BPE simulation above differs from the tokenizer's
        raise DreamVideoError(f"toy tokenizer: words not encoded as one token: {bad}")
    if save_dir is not None:
        save_tokenizer(tokenizer, save_dir)
    return tokenizer


def _write_bpe_files(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def save_tokenizer(tokenizer: CLIPTokenizer, folder: str | os.PathLike) -> None:
    """``save_pretrained`` plus ``vocab.json``/``merges.txt``, which transformers 5 no longer writes itself.

    The two files let transformers 4's slow ``CLIPTokenizer`` load the folder too.

    Args:
        tokenizer: a CLIP tokenizer backed by the tokenizers library.
        folder: output folder.
    """
    tokenizer.save_pretrained(str(folder))
    folder = Path(folder)
    if not (folder / "merges.txt").is_file() and hasattr(tokenizer, "backend_tokenizer"):
        bpe = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]
        _write_bpe_files(folder, bpe["vocab"], merges)


# ----------------------------------------------------------------------------- models


def toy_clip(tokenizer: CLIPTokenizer | None = None) -> CLIPModel:
    """A small CLIP: 3-layer text and vision towers of width 64, 64x64 images in 8x8 patches.

    Args:
        tokenizer: sets the vocabulary size and special-token ids (default: :func:`build_toy_tokenizer`).
    """
    tokenizer = tokenizer or build_toy_tokenizer()
    tower = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config={
            **tower,
            "hidden_size": TEXT_DIM,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": MAX_LENGTH,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "projection_dim": EMBED_DIM,
        },
        vision_config={**tower, "image_size": world.IMAGE_SIZE, "patch_size": 8, "projection_dim": EMBED_DIM},
        projection_dim=EMBED_DIM,
    )
    return CLIPModel(config)


def toy_unet() -> UNet3DConditionModel:
    """ModelScope's UNet3D at toy size: 3 levels (32, 64, 64 channels), one layer each, 16x16 latents."""
    return UNet3DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,  # diffusers' UNet3D reads this as the number of heads
        norm_num_groups=8,
    )


def toy_vae(scaling_factor: float = 1.0) -> AutoencoderKL:
    """A small KL autoencoder: 64x64 RGB <-> 4x16x16 latents (two downsamplings).

    Args:
        scaling_factor: multiplies latents before diffusion (set from the trained latents' std).
    """
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=world.IMAGE_SIZE,
        scaling_factor=scaling_factor,
    )


def shifted_betas(shift: float, num_train_timesteps: int = 1000) -> list[float]:
    """ModelScope's scaled-linear betas with every log-SNR moved by ``shift`` nats ("simple diffusion", section 3).

    A negative ``shift`` adds noise at every step, for small latents whose global content (background, layout)
    stays readable at the usual noise levels.
    """
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    log_snr = torch.logit(torch.cumprod(1 - betas, 0)) + shift  # log(abar / (1 - abar)) + shift
    alphas_cumprod = torch.sigmoid(log_snr)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    return (1 - alphas_cumprod / previous).tolist()


def toy_scheduler(
    prediction_type: str = "epsilon",
    zero_snr: bool = False,
    timestep_spacing: str = "leading",
    snr_shift: float = 0.0,
) -> DDIMScheduler:
    """DDIM with ModelScope-1.7B's settings (scaled-linear betas 0.00085-0.012, epsilon prediction) by default.

    Args:
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` (needed with ``zero_snr``).
        zero_snr: rescale the betas to zero terminal SNR (Lin et al. 2024, section 3.1).
        timestep_spacing: ``"leading"`` (ModelScope) or ``"trailing"`` (Lin et al., section 3.3: start at t = 999).
        snr_shift: log-SNR shift of the schedule (see :func:`shifted_betas`); 0 keeps ModelScope's.
    """
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        trained_betas=shifted_betas(snr_shift) if snr_shift else None,
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type=prediction_type,
        rescale_betas_zero_snr=zero_snr,
        timestep_spacing=timestep_spacing,
        steps_offset=0 if timestep_spacing == "trailing" else 1,
    )


def toy_feature_extractor() -> CLIPImageProcessor:
    """The image preprocessing of the toy CLIP: 64x64, CLIP mean/std (see :func:`clip_pixels`)."""
    size = world.IMAGE_SIZE
    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )


def clip_pixels(frames: torch.Tensor) -> torch.Tensor:
    """CLIP inputs from 64x64 uint8 frames (..., H, W, 3) -> float (..., 3, H, W), as the feature extractor does."""
    mean = torch.tensor(CLIP_MEAN, device=frames.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, device=frames.device).view(3, 1, 1)
    return (frames.movedim(-1, -3).float() / 255.0 - mean) / std


def vae_pixels(frames: torch.Tensor) -> torch.Tensor:
    """VAE inputs from uint8 frames (..., H, W, 3) -> float in [-1, 1] (..., 3, H, W)."""
    return frames.movedim(-1, -3).float() / 127.5 - 1.0


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- saving


def split_clip(clip: CLIPModel) -> tuple[CLIPTextModel, CLIPVisionModelWithProjection]:
    """The text tower as a ``CLIPTextModel`` and the vision tower + projection as ``CLIPVisionModelWithProjection``.

    Args:
        clip: a (trained) ``CLIPModel``; its weights are copied.
    """
    text = CLIPTextModel(clip.config.text_config)
    getattr(text, "text_model", text).load_state_dict(clip.text_model.state_dict())  # transformers 4 nests it
    vision = CLIPVisionModelWithProjection(clip.config.vision_config)
    vision.vision_model.load_state_dict(clip.vision_model.state_dict())
    vision.visual_projection.load_state_dict(clip.visual_projection.state_dict())
    return text.eval(), vision.eval()


def _nest_text_keys(path: Path) -> None:
    """Store text-encoder weights under ``text_model.`` as real snapshots do (transformers 5 drops the prefix).

    Transformers 5 reads both spellings; transformers 4 only the nested one.
    """
    tensors = load_file(str(path))
    if not all(k.startswith("text_model.") for k in tensors):
        save_safetensors({f"text_model.{k}": v for k, v in tensors.items()}, path, {"format": "pt"})


def save_base_model(
    directory: str | os.PathLike,
    unet: UNet3DConditionModel,
    vae: AutoencoderKL,
    clip: CLIPModel,
    tokenizer: CLIPTokenizer,
    scheduler: DDIMScheduler,
    text_encoder: torch.nn.Module | None = None,
    default_guidance_scale: float | None = None,
) -> Path:
    """Write a diffusers-layout base model (safetensors); an existing folder is replaced only once all is written.

    Args:
        directory: output folder.
        unet, vae, clip, tokenizer, scheduler: the trained components.
        text_encoder: the UNet's text encoder (a ``CLIPTextTransformer``) when it was trained apart from ``clip``'s
            text tower; ``clip/`` (for metrics) keeps the contrastive one.
        default_guidance_scale: written to ``model_index.json`` for the pipeline's calls without a guidance scale
            (``None``: not written, so the pipeline uses the paper's 9.0).

    Returns:
        The folder.
    """
    final = Path(directory)
    staging = final.with_name(f".{final.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    text, vision = split_clip(clip)
    if text_encoder is not None:
        getattr(text, "text_model", text).load_state_dict(text_encoder.state_dict())
    unet.save_pretrained(staging / "unet")
    vae.save_pretrained(staging / "vae")
    text.save_pretrained(staging / "text_encoder")
    _nest_text_keys(staging / "text_encoder" / "model.safetensors")
    vision.save_pretrained(staging / "image_encoder")
    clip.save_pretrained(staging / "clip")
    save_tokenizer(tokenizer, staging / "tokenizer")
    scheduler.save_pretrained(staging / "scheduler")
    toy_feature_extractor().save_pretrained(str(staging / "feature_extractor"))
    write_json(
        {
            "_class_name": "DreamVideoPipeline",
            "_diffusers_version": diffusers.__version__,
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet3DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        | ({} if default_guidance_scale is None else {"default_guidance_scale": default_guidance_scale}),
        staging / "model_index.json",
    )
    replace_dir(staging, final)
    return final
