"""LoRA baseline: peft ``LoraConfig`` injected with ``peft.inject_adapter_in_model`` (diffusers' UNet3D has no peft
mixin), one named adapter per learned concept, so a subject and a motion compose as two adapters.

- subject (adapter ``"subject"``): ``to_k``/``to_v`` of the cross-attention (``attn2``) of every spatial block;
  captions use DreamBooth's fixed identifier, as LoRA-DreamBooth does.
- motion (adapter ``"motion"``): ``to_k``/``to_v`` of every self-attention: spatial ``attn1`` and both temporal
  attentions (``attn1``, ``attn2``) of every temporal block.

Weights are stored with ``get_peft_model_state_dict`` in ``lora_weights.safetensors``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dreamvideo import adapters as ad
from dreamvideo.artifacts import LORA_FILE
from dreamvideo.fileio import load_safetensors, save_safetensors
from dreamvideo.methods.baseline import BaselineMotion, BaselineSubject
from dreamvideo.methods.registry import register
from dreamvideo.methods.weights import BaselineError, Trainable
from dreamvideo.training import StageConfig

DEFAULT_RANK = 4
SUMMARY = "LoRA: cross-attention k/v for a subject, self-attention k/v for a motion"


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
    lora_config = LoraConfig(
        r=config["r"],
        lora_alpha=config["lora_alpha"],
        target_modules=config["target_modules"],
        lora_dropout=0.0,
        init_lora_weights=True,
    )
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
    """The LoRA A/B matrices of ``adapter``."""
    return {n: p for n, p in unet.named_parameters() if "lora_" in n and f".{adapter}." in n}


def set_lora_scale(unet: nn.Module, adapter: str, scale: float) -> None:
    for layer in _lora_layers(unet):
        layer.set_scale(adapter, scale)


def save_lora(unet: nn.Module, adapter: str, path: Path, config: dict[str, Any]) -> None:
    from peft import get_peft_model_state_dict

    save_safetensors(get_peft_model_state_dict(unet, adapter_name=adapter), path, {"lora": config})


def load_lora(unet: nn.Module, adapter: str, path: Path) -> None:
    """Restore the tensors of an injected adapter."""
    from peft import set_peft_model_state_dict

    tensors, _ = load_safetensors(path)
    result = set_peft_model_state_dict(unet, tensors, adapter_name=adapter)
    missing = [k for k in result.missing_keys if "lora_" in k and f".{adapter}." in k]
    if result.unexpected_keys or missing:
        raise BaselineError(
            f"{path}: LoRA weights do not fit this UNet ({len(missing)} missing, "
            f"{len(result.unexpected_keys)} unexpected keys)"
        )
    _activate_all(unet)


class LoraLearner:
    """Mixed into a baseline: inject a fresh LoRA adapter named after the kind, and load one back.

    Args:
        rank: LoRA rank (``lora_alpha`` = rank, so the scale is 1).
    """

    def __init__(
        self, pipe: Any, settings: Any, stage: StageConfig | None = None, rank: int = DEFAULT_RANK
    ) -> None:
        super().__init__(pipe, settings, stage)
        self.rank = rank

    def trainable(self) -> Trainable:
        unet, adapter = self.pipe.unet, self.kind
        config = {"r": self.rank, "lora_alpha": self.rank, "target_modules": lora_targets(unet, adapter)}
        inject(unet, adapter, config, self.stage.seed)
        return Trainable(
            lora_parameters(unet, adapter),
            LORA_FILE,
            lambda path: save_lora(unet, adapter, path, config),
            lambda path: load_lora(unet, adapter, path),
            {"storage": "lora", "lora_adapter": adapter, "lora": config},
        )

    @classmethod
    def load_trained(cls, pipe: Any, file: Path, info: dict[str, Any], scale: float) -> None:
        """Add the stored LoRA adapter to the pipeline's UNet at ``scale``."""
        adapter, unet = info["lora_adapter"], pipe.unet
        if adapter in getattr(unet, "peft_config", {}):
            raise BaselineError(f"{file}: a LoRA {adapter} is already loaded; load into a fresh pipeline")
        inject(unet, adapter, info["lora"])
        load_lora(unet, adapter, file)
        set_lora_scale(unet, adapter, scale)


@register
class LoraSubject(LoraLearner, BaselineSubject):
    name = "lora"
    summary = SUMMARY
    identifier = True


@register
class LoraMotion(LoraLearner, BaselineMotion):
    name = "lora"
    summary = SUMMARY
