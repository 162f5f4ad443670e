"""LoRA baseline: peft ``LoraConfig`` injected with ``peft.inject_adapter_in_model`` (diffusers' UNet3D has no peft
mixin), one named adapter per learned concept, so a subject and a motion compose as two adapters.

- subject (adapter ``"subject"``): ``to_k``/``to_v`` of the cross-attention (``attn2``) of every spatial block;
  captions use DreamBooth's fixed identifier, as LoRA-DreamBooth does.
- motion (adapter ``"motion"``): ``to_k``/``to_v`` of every self-attention: spatial ``attn1`` and both temporal
  attentions (``attn1``, ``attn2``) of every temporal block.

Weights are stored with ``get_peft_model_state_dict`` in ``lora_weights.safetensors``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dreamvideo import adapters as ad
from dreamvideo.baselines.common import BaselineError, Trainable, run_motion, run_subject
from dreamvideo.fileio import load_safetensors, save_safetensors
from dreamvideo.pipeline import DreamVideoPipeline
from dreamvideo.stages import MotionSettings, SubjectSettings
from dreamvideo.training import StageConfig

LORA_FILE = "lora_weights.safetensors"
DEFAULT_RANK = 4


def lora_targets(unet: nn.Module, kind: str) -> list[str]:
    """Full module paths of the projections LoRA adapts for a ``"subject"`` or a ``"motion"``."""
    if kind == "subject":
        sites = [(p, "attn2") for p, _ in ad.find_transformer_blocks(unet, "spatial")]
    else:
        sites = [(p, "attn1") for p, _ in ad.find_transformer_blocks(unet, "spatial")]
        sites += [(p, a) for p, _ in ad.find_transformer_blocks(unet, "temporal") for a in ("attn1", "attn2")]
    return [f"{path}.{attn}.{proj}" for path, attn in sites for proj in ("to_k", "to_v")]


def inject(unet: nn.Module, adapter: str, config: dict[str, Any], seed: int = 0) -> None:
    """Add LoRA adapter ``adapter`` described by ``config`` (``r``, ``lora_alpha``, ``target_modules``)."""
    from peft import LoraConfig, inject_adapter_in_model

    if adapter in getattr(unet, "peft_config", {}):
        raise BaselineError(f"a LoRA adapter named {adapter!r} is already in this UNet")
    lora_config = LoraConfig(r=config["r"], lora_alpha=config["lora_alpha"], target_modules=config["target_modules"],
                             lora_dropout=0.0, init_lora_weights=True)
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # a second named adapter
        torch.manual_seed(seed)  # lora_A's random initialisation
        inject_adapter_in_model(lora_config, unet, adapter_name=adapter)
    _activate_all(unet)


def _lora_layers(unet: nn.Module) -> list[nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [m for m in unet.modules() if isinstance(m, LoraLayer)]


def _activate_all(unet: nn.Module) -> None:
    """Every adapter of every LoRA layer active (composition), none trainable until a trainer says so."""
    for layer in _lora_layers(unet):
        layer.set_adapter(list(layer.lora_A.keys()), inference_mode=True)


def lora_parameters(unet: nn.Module, adapter: str) -> dict[str, nn.Parameter]:
    return {n: p for n, p in unet.named_parameters() if "lora_" in n and f".{adapter}." in n}


def set_lora_scale(unet: nn.Module, adapter: str, scale: float) -> None:
    for layer in _lora_layers(unet):
        layer.set_scale(adapter, scale)


def save_lora(unet: nn.Module, adapter: str, path: Path, config: dict[str, Any]) -> None:
    from peft import get_peft_model_state_dict

    save_safetensors(get_peft_model_state_dict(unet, adapter_name=adapter), path, {"lora": config})


def load_lora(unet: nn.Module, adapter: str, path: Path) -> None:
    from peft import set_peft_model_state_dict

    tensors, _ = load_safetensors(path)
    result = set_peft_model_state_dict(unet, tensors, adapter_name=adapter)
    missing = [k for k in result.missing_keys if "lora_" in k and f".{adapter}." in k]
    if result.unexpected_keys or missing:
        raise BaselineError(f"{path}: LoRA weights do not fit this UNet ({len(missing)} missing, "
                            f"{len(result.unexpected_keys)} unexpected keys)")
    _activate_all(unet)


def lora_trainable(kind: str, rank: int):
    """A ``make_trainable(pipe, seed)`` that injects a fresh LoRA adapter named ``kind``."""

    def make(pipe: DreamVideoPipeline, seed: int) -> Trainable:
        unet = pipe.unet
        config = {"r": rank, "lora_alpha": rank, "target_modules": lora_targets(unet, kind)}
        inject(unet, kind, config, seed)
        return Trainable(lora_parameters(unet, kind), LORA_FILE, lambda path: save_lora(unet, kind, path, config),
                         lambda path: load_lora(unet, kind, path),
                         {"storage": "lora", "lora_adapter": kind, "lora": config})

    return make


def load(pipe: DreamVideoPipeline, info: dict[str, Any], file: Path, scale: float) -> None:
    """Add a stored LoRA adapter to the pipeline's UNet at ``scale``."""
    adapter = info["lora_adapter"]
    unet = pipe.unet
    if adapter in getattr(unet, "peft_config", {}):
        raise BaselineError(f"{file}: a LoRA {adapter} is already loaded; load into a fresh pipeline")
    inject(unet, adapter, info["lora"])
    load_lora(unet, adapter, file)
    set_lora_scale(unet, adapter, scale)


def learn_subject(pipe: DreamVideoPipeline, images: str | os.PathLike, out: str | os.PathLike,
                  settings: SubjectSettings, stage: StageConfig, masks: str | os.PathLike | None = None,
                  overwrite: bool = False, resume: bool = False, progress: bool = True,
                  rank: int = DEFAULT_RANK) -> Path:
    """LoRA on the cross-attention keys/values of a subject (see :func:`dreamvideo.baselines.common.run_subject`).

    Args:
        rank: LoRA rank (``lora_alpha`` = rank, so the scale is 1).
    """
    return run_subject("lora", pipe, images, out, settings, stage, lora_trainable("subject", rank), identifier=True,
                       masks=masks, overwrite=overwrite, resume=resume, progress=progress)


def learn_motion(pipe: DreamVideoPipeline, videos: str | os.PathLike, out: str | os.PathLike,
                 settings: MotionSettings, captions: str | dict[str, str] | None = None, overwrite: bool = False,
                 resume: bool = False, progress: bool = True, rank: int = DEFAULT_RANK) -> Path:
    """LoRA on the self-attention keys/values of a motion (see :func:`dreamvideo.baselines.common.run_motion`).

    Args:
        rank: LoRA rank (``lora_alpha`` = rank).
    """
    return run_motion("lora", pipe, videos, out, settings, lora_trainable("motion", rank), captions=captions,
                      overwrite=overwrite, resume=resume, progress=progress)
