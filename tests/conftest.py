"""Shared fixtures: a tiny random text-to-video base model in the diffusers layout, built from configs; and the
command lines the tests run on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

WORDS = [
    "a",
    "dog",
    "cat",
    "star",
    "red",
    "blue",
    "on",
    "grass",
    "moves",
    "left",
    "right",
    "playing",
    "guitar",
]


def tiny_layers(width: int) -> dict[str, int]:
    """One transformer layer with two heads, ``width`` wide (its MLP twice that): every tiny encoder's size."""
    return {
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }


def tiny_text(vocab_size: int, width: int) -> dict[str, int]:
    """A tiny CLIP text tower reading :func:`write_word_tokenizer`'s 12-token prompts."""
    return {
        "vocab_size": vocab_size,
        **tiny_layers(width),
        "max_position_embeddings": 12,
        "eos_token_id": 1,
        "bos_token_id": 0,
        "pad_token_id": 1,
    }


def tiny_vision(width: int) -> dict[str, int]:
    """A tiny vision tower of 16-pixel images in 8-pixel patches."""
    return {"image_size": 16, "patch_size": 8, **tiny_layers(width)}


def write_word_tokenizer(folder: Path, words: list[str] = WORDS, max_length: int = 12) -> CLIPTokenizer:
    """A real BPE CLIPTokenizer in which each of ``words`` is one token (merges built letter by letter)."""
    letters = sorted(set("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["<|startoftext|>", "<|endoftext|>"] + letters + [c + "</w>" for c in letters]
    merges = []
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            merges.append(f"{symbols[0]} {symbols[1]}")
            symbols = [symbols[0] + symbols[1]] + symbols[2:]
            if symbols[0] not in vocab:
                vocab.append(symbols[0])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    tok = CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        model_max_length=max_length,
        pad_token="<|endoftext|>",
    )
    tok.save_pretrained(folder)
    return tok


def build_tiny_unet(seed: int | None = 0, width: int = 32) -> UNet3DConditionModel:
    """A two-level ``UNet3DConditionModel``: 8x8 latents, 32-dim text features, one layer per block.

    ``seed=None`` draws the weights from the current random state.
    """
    if seed is not None:
        torch.manual_seed(seed)
    return UNet3DConditionModel(
        sample_size=8,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(width, 2 * width),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def build_tiny_base(
    root: Path, seed: int = 0, width: int = 32, image_encoder: bool = True, v_prediction: bool = False
) -> Path:
    """The tiny model in the diffusers layout; ``v_prediction`` gives it a v-prediction, zero-terminal-SNR,
    trailing-timestep scheduler (Lin et al., 2024) instead of ModelScope's epsilon one."""
    torch.manual_seed(seed)
    tok = write_word_tokenizer(root / "tokenizer")
    text = CLIPTextModel(CLIPTextConfig(**tiny_text(len(tok), 32)))
    text.save_pretrained(root / "text_encoder")
    build_tiny_unet(seed=None, width=width).save_pretrained(root / "unet")
    AutoencoderKL(
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    ).save_pretrained(root / "vae")
    zero_snr = {
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "timestep_spacing": "trailing",
        "steps_offset": 0,
    }
    DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        **(zero_snr if v_prediction else {"steps_offset": 1}),
    ).save_pretrained(root / "scheduler")
    if image_encoder:
        CLIPVisionModelWithProjection(CLIPVisionConfig(**tiny_vision(32), projection_dim=24)).save_pretrained(
            root / "image_encoder"
        )
        CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(
            root / "feature_extractor"
        )
    return root


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A random 16x16-pixel text-to-video model with an image encoder, in the diffusers folder layout."""
    return build_tiny_base(tmp_path_factory.mktemp("tiny_base"))


@pytest.fixture(scope="session")
def tiny_vpred_base(tmp_path_factory) -> Path:
    """The tiny model with a v-prediction, zero-terminal-SNR scheduler (same weights as ``tiny_base``)."""
    return build_tiny_base(tmp_path_factory.mktemp("tiny_vpred_base"), v_prediction=True)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """Four subject photos with masks and two short motion videos with captions."""
    import numpy as np
    from PIL import Image

    from dreamvideo.video_io import write_video

    root = tmp_path_factory.mktemp("tiny_data")
    rng = np.random.default_rng(0)
    (root / "subject" / "images").mkdir(parents=True)
    (root / "subject" / "masks").mkdir(parents=True)
    for i in range(4):
        img = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "subject" / "images" / f"{i}.png")
        mask = np.zeros((24, 24), np.uint8)
        mask[6:18, 6:18] = 255
        Image.fromarray(mask).save(root / "subject" / "masks" / f"{i}.png")
    (root / "motion").mkdir()
    for i in range(2):
        frames = np.zeros((6, 16, 16, 3), np.uint8)
        for f in range(6):
            frames[f, 4:10, 2 + f : 8 + f] = 255
        write_video(frames, root / "motion" / f"clip{i}.gif", fps=8)
    (root / "motion" / "captions.json").write_text(
        json.dumps({"clip0.gif": "a red star moves left", "clip1.gif": "a blue dog moves right"})
    )
    return {"subject": root / "subject", "motion": root / "motion"}


@pytest.fixture(scope="session")
def tiny_clip(tiny_base, tmp_path_factory) -> Path:
    """A random CLIPModel that reads the tiny base's tokenizer and 16-pixel images."""
    from transformers import CLIPConfig, CLIPModel

    folder = tmp_path_factory.mktemp("clip")
    vocab = len(json.loads((tiny_base / "tokenizer" / "vocab.json").read_text()))
    config = CLIPConfig(text_config=tiny_text(vocab, 16), vision_config=tiny_vision(16), projection_dim=8)
    CLIPModel(config).save_pretrained(folder)
    return folder


def tiny_config(tiny_base, tiny_data, tiny_clip) -> dict:
    """A benchmark grid on the tiny base: two methods, one ablation, a trade-off grid, a few steps each."""
    return {
        "base": str(tiny_base),
        "clip": {
            "model": str(tiny_clip),
            "tokenizer": str(tiny_base / "tokenizer"),
            "image_processor": str(tiny_base / "feature_extractor"),
        },
        "oracle": True,
        "subjects": [{"name": "dog", "images": str(tiny_data["subject"]), "class_word": "dog"}],
        "motions": [{"name": "slide", "videos": str(tiny_data["motion"])}],
        "prompts": {
            "subject": ["a {subject} on grass"],
            "motion": ["a red star moves on blue sky"],
            "joint": ["a {subject} moves left"],
        },
        "seeds": [0],
        "methods": ["dreamvideo", "lora"],
        "ablations": ["identity-ff"],
        "training": {
            "ti_steps": 1,
            "identity_steps": 1,
            "motion_steps": 2,
            "subject_batch_size": 1,
            "motion_batch_size": 1,
            "num_frames": 2,
        },
        "sampling": {"steps": 2, "num_frames": 2},
        "tradeoff": {"identity_steps": [1], "motion_steps": [1, 2]},
    }


# ----------------------------------------------------------------------------- command lines


def subject_steps(steps: int = 2) -> list[str]:
    """``learn-subject``'s flags for ``steps`` steps of each stage at batch size 1."""
    n = str(steps)
    return ["--ti-steps", n, "--adapter-steps", n, "--ti-batch-size", "1", "--adapter-batch-size", "1"]


def learn_subject_args(base, images, out, *extra: str, init_word: str = "dog") -> list[str]:
    """``learn-subject`` of the photos ``images`` on ``base`` into ``out``, then ``extra``."""
    return [
        "learn-subject",
        "--base",
        str(base),
        "--images",
        str(images),
        "--init-word",
        init_word,
        "--out",
        str(out),
        *extra,
    ]


def learn_motion_args(base, videos, out, *extra: str) -> list[str]:
    """``learn-motion`` of ``videos`` on ``base`` into ``out``, then ``extra``."""
    return ["learn-motion", "--base", str(base), "--videos", str(videos), "--out", str(out), *extra]


def generate_args(
    base, out, *extra: str, prompt: str = "a <sks> dog", frames: int = 2, steps: int = 1
) -> list[str]:
    """``generate`` of ``prompt`` on ``base`` (None: the default, the toy model) into ``out``, quiet; then ``extra``.

    Args:
        base: the base model folder.
        out: the video file.
        extra: more flags (``--subject``, ``--motion``, ``--device``, ...).
        prompt: the prompt.
        frames: frames to generate.
        steps: DDIM steps.
    """
    base_flags = [] if base is None else ["--base", str(base)]
    return [
        "generate",
        *base_flags,
        "--prompt",
        prompt,
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--frames",
        str(frames),
        "--quiet",
        *extra,
    ]


@pytest.fixture(scope="session")
def tiny_learned(tiny_base, tiny_data, tmp_path_factory) -> dict[str, Path]:
    """A finished subject (token ``<sks>``) and motion folder on the tiny base, two steps each."""
    from dreamvideo.cli import main

    root = tmp_path_factory.mktemp("learned")
    fast = ["--checkpoint-every", "1", "--quiet"]
    subject = learn_subject_args(tiny_base, tiny_data["subject"], root / "dog", *subject_steps(2), *fast)
    assert main(subject) == 0
    motion = learn_motion_args(
        tiny_base, tiny_data["motion"], root / "move", "--steps", "2", "--num-frames", "2"
    )
    assert main([*motion, *fast]) == 0
    return {"subject": root / "dog", "motion": root / "move"}
