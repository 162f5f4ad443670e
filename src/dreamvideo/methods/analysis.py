"""The paper's model analysis (method.md section 3): which layers move when the whole model is fine-tuned.

Fine-tune *all* spatial weights on a subject's photos, then (from the base again) *all* temporal weights on motion
videos, and report the relative weight change ``||W1 - W0||_F / ||W0||_F`` per layer type (weight matrices and
convolution kernels only; biases and norms excluded). The paper finds the cross-attention changing most on
subjects and all temporal layer types changing about equally on motions.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from dreamvideo.fileio import write_json
from dreamvideo.methods.finetune import FinetuneMotion, FinetuneSubject
from dreamvideo.methods.motion import MotionSettings
from dreamvideo.methods.subject import SubjectSettings
from dreamvideo.methods.weights import unet_parameters
from dreamvideo.training import StageConfig

# (group, layer type, pattern on the canonical parameter name); the first match wins.
LAYER_TYPES: list[tuple[str, str, str]] = [
    ("temporal", "attn1", r"(temp_attentions|transformer_in).*\.attn1\."),
    ("temporal", "attn2", r"(temp_attentions|transformer_in).*\.attn2\."),
    ("temporal", "FFN", r"(temp_attentions|transformer_in).*\.ff\."),
    ("temporal", "conv", r"temp_convs\..*\.weight$"),
    ("spatial", "self-attn", r"\.attentions\.\d+\.transformer_blocks\.\d+\.attn1\."),
    ("spatial", "cross-attn", r"\.attentions\.\d+\.transformer_blocks\.\d+\.attn2\."),
    ("spatial", "FFN", r"\.attentions\.\d+\.transformer_blocks\.\d+\.ff\."),
    ("spatial", "conv", r"(resnets\.\d+\.conv|samplers\.\d+\.conv|^conv_in|^conv_out)"),
]


def layer_type(name: str, tensor: torch.Tensor) -> tuple[str, str] | None:
    """``(group, type)`` of a weight matrix or kernel, ``None`` for biases, norms and unlisted layers."""
    if not name.endswith(".weight") or tensor.ndim < 2:
        return None
    for group, kind, pattern in LAYER_TYPES:
        if re.search(pattern, name):
            return group, kind
    return None


def relative_change(
    before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], group: str
) -> dict[str, float]:
    """``||W1 - W0|| / ||W0||`` over all weights of each layer type of ``group``."""
    num: dict[str, float] = {}
    den: dict[str, float] = {}
    for name, w0 in before.items():
        found = layer_type(name, w0)
        if found is None or found[0] != group:
            continue
        kind = found[1]
        num[kind] = num.get(kind, 0.0) + float((after[name].float() - w0.float()).pow(2).sum())
        den[kind] = den.get(kind, 0.0) + float(w0.float().pow(2).sum())
    order = [k for g, k, _ in LAYER_TYPES if g == group]
    return {k: (num[k] / den[k]) ** 0.5 if den[k] > 0 else 0.0 for k in order if k in den}


def analyze_weight_change(
    pipe: Any,
    images: str | os.PathLike,
    videos: str | os.PathLike,
    steps: int,
    class_word: str = "dog",
    lr: float = 1e-4,
    batch_size: int = 1,
    num_frames: int = 8,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Relative weight change per layer type after fully fine-tuning spatial (subject) and temporal (motion) weights.

    The pipeline's UNet is restored to its original weights afterwards.

    Args:
        pipe: the base model.
        images: a subject's photo folder (captioned "a {class_word}").
        videos: a motion's video folder (with its captions).
        steps: fine-tuning steps of each run.
        class_word: the subject's class word.
        lr, batch_size, seed: optimisation settings (AdamW); ``num_frames``: clip length of the motion run.
        out: optional folder for ``weight_change.json`` and ``weight_change.png``.
        progress: show progress bars.

    Returns:
        ``{"spatial": {type: change}, "temporal": {type: change}, "settings": {...}}``.
    """
    params = unet_parameters(pipe.unet)
    w0 = {n: p.detach().clone() for n, p in params.items()}

    def restore() -> None:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(w0[n])

    stage = StageConfig(steps=steps, lr=lr, batch_size=batch_size, checkpoint_every=max(1, steps), seed=seed)
    result: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            subject = SubjectSettings(init_word=class_word, caption="a {word}", use_masks=False)
            FinetuneSubject(pipe, subject, stage).learn(images, Path(tmp) / "subject", progress=progress)
            result["spatial"] = relative_change(w0, {n: p.detach() for n, p in params.items()}, "spatial")
            restore()
            motion = MotionSettings(num_frames=num_frames, stage=stage)
            FinetuneMotion(pipe, motion).learn(videos, Path(tmp) / "motion", progress=progress)
            result["temporal"] = relative_change(w0, {n: p.detach() for n, p in params.items()}, "temporal")
    finally:
        restore()
    result["settings"] = {
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "num_frames": num_frames,
        "seed": seed,
        "class_word": class_word,
        "images": str(images),
        "videos": str(videos),
    }
    if out is not None:
        out = Path(out)
        write_json(result, out / "weight_change.json")
        plot_weight_change(result, out / "weight_change.png")
    return result


def plot_weight_change(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Bar chart of the relative weight change per layer type, spatial (subject) and temporal (motion) side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    titles = {
        "spatial": "spatial weights, fine-tuned on a subject",
        "temporal": "temporal weights, on a motion",
    }
    for ax, group in zip(axes, ("spatial", "temporal"), strict=True):
        changes = result.get(group, {})
        ax.bar(
            list(changes), list(changes.values()), color="tab:blue" if group == "spatial" else "tab:orange"
        )
        ax.set_title(titles[group], fontsize=9)
        ax.set_ylabel("||W1 - W0|| / ||W0||")
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
