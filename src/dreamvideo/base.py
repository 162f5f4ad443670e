"""Finding and describing a base text-to-video model: a diffusers-format folder, a hub id, or the built-in toy model."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from dreamvideo.fileio import DreamVideoError

TOY_NAMES = ("toy", "dreamvideo-toy")
REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class BaseModelError(DreamVideoError):
    pass


def toy_model_dir() -> Path:
    """The built-in toy model's folder (``dreamvideo/toy/weights``; found without importing the toy package)."""
    return Path(__file__).resolve().parent / "toy" / "weights"


def resolve_base(base: str | os.PathLike | None) -> Path:
    """Return the local folder of a base model given a path, a hub id or ``"toy"`` (``None`` means the toy model).

    A hub id is downloaded with ``huggingface_hub.snapshot_download`` (only where a hub is reachable).
    """
    if base is None or str(base) in TOY_NAMES:
        path = toy_model_dir()
        if not (path / "unet").is_dir():
            raise BaseModelError(
                f"the built-in toy model is missing at {path}; reinstall dreamvideo or rebuild it with "
                "`python -m dreamvideo.toy.pretrain`"
            )
        return path
    path = Path(base).expanduser()
    if path.exists():
        missing = [c for c in REQUIRED_COMPONENTS if not (path / c).is_dir()]
        if missing:
            raise BaseModelError(
                f"{path}: not a diffusers text-to-video folder, missing {', '.join(m + '/' for m in missing)} "
                f"(expected the layout of damo-vilab/text-to-video-ms-1.7b: {', '.join(REQUIRED_COMPONENTS)})"
            )
        return path
    if str(base).count("/") != 1 or looks_like_path(str(base)):
        raise BaseModelError(f"{base}: no such folder, and not a hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                str(base),
                allow_patterns=["*.json", "*.txt", "*.safetensors", "tokenizer/*", "*.model"],
            )
        )
    except Exception as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise BaseModelError(
            f"{base}: no such folder, and not a hub id the hub could provide ({type(err).__name__}: {first})"
        ) from err


def looks_like_path(text: str) -> bool:
    """Whether ``text`` reads as a local path rather than a hub id: ``./x``, ``/x``, ``~/x``, ``x\\y``, or a first
    component that exists here.

    Args:
        text: the ``--base`` value.
    """
    if text.startswith((".", "/", "~")) or "\\" in text or text.endswith("/"):
        return True
    first = text.split("/", 1)[0]
    return Path(first).exists()


def native_size(root: Path) -> int:
    """The pixel side a base generates natively, read from its config files (no weights loaded).

    Args:
        root: the base's folder.
    """
    unet, vae = _config(root / "unet" / "config.json"), _config(root / "vae" / "config.json")
    sample = unet.get("sample_size", 32)
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    return int(sample) * 2 ** (len(vae.get("block_out_channels", [0])) - 1)


def _config(path: Path) -> dict[str, Any]:
    from dreamvideo.fileio import read_json

    data = read_json(path)
    if not isinstance(data, dict):
        raise BaseModelError(f"{path}: must be a JSON object")
    return data


def architecture_fingerprint(unet_config: dict[str, Any], text_hidden_size: int) -> str:
    """A short hash of the UNet architecture and text width: adapters and tokens fit exactly the bases sharing it."""
    keys = sorted(k for k in unet_config if not k.startswith("_") and k not in ("sample_size",))
    payload = json.dumps(
        {k: unet_config[k] for k in keys} | {"text_hidden_size": text_hidden_size}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def describe_base(name: str, unet_config: dict[str, Any], text_hidden_size: int) -> dict[str, Any]:
    return {
        "name": name,
        "architecture": architecture_fingerprint(dict(unet_config), text_hidden_size),
        "block_out_channels": list(unet_config.get("block_out_channels", [])),
        "cross_attention_dim": unet_config.get("cross_attention_dim"),
    }


def check_same_architecture(saved: dict[str, Any], current: dict[str, Any], what: str) -> None:
    if saved.get("architecture") != current.get("architecture"):
        raise BaseModelError(
            f"{what} was trained on base {saved.get('name')!r} (architecture {saved.get('architecture')}, "
            f"channels {saved.get('block_out_channels')}, text width {saved.get('cross_attention_dim')}) and does not fit "
            f"base {current.get('name')!r} (architecture {current.get('architecture')}, channels "
            f"{current.get('block_out_channels')}, text width {current.get('cross_attention_dim')})"
        )


# ModelScopeT2V-1.7B UNet (damo-vilab/text-to-video-ms-1.7b, unet/config.json): built on the meta device for counts.
MODELSCOPE_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": [
        "CrossAttnDownBlock3D",
        "CrossAttnDownBlock3D",
        "CrossAttnDownBlock3D",
        "DownBlock3D",
    ],
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 1024,
    "attention_head_dim": 64,
    "norm_num_groups": 32,
}
MODELSCOPE_IMAGE_EMBED_DIM = 1024  # OpenCLIP ViT-H/14 image embedding


def modelscope_unet_on_meta():
    """The full ModelScope-1.7B UNet architecture without weights (no memory, no download)."""
    import torch
    from diffusers import UNet3DConditionModel

    with torch.device("meta"):
        return UNet3DConditionModel(**MODELSCOPE_UNET_CONFIG)
