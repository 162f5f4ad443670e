"""Loading learned subjects and motions into a pipeline: ``load_subject``, ``load_motion``, ``unload``.

A subject folder holds ``subject.json``, the learned word (``learned_embeds.safetensors``, diffusers' textual-inversion
format) and the identity adapter; a motion folder ``motion.json`` and the motion adapter. Both may hold
``checkpoints/<stage>/step-NNNNNN/`` copies. Folders written by a baseline name their method in the JSON and are
loaded by :func:`dreamvideo.baselines.load_learned`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from dreamvideo import adapters as ad
from dreamvideo.base import check_same_architecture
from dreamvideo.fileio import DreamVideoError, load_safetensors, read_json
from dreamvideo.textual_inversion import check_learned_token, load_learned_embeds

SUBJECT_FILE = "subject.json"
MOTION_FILE = "motion.json"
EMBEDS_FILE = "learned_embeds.safetensors"
IDENTITY_FILE = "identity_adapter.safetensors"
MOTION_ADAPTER_FILE = "motion_adapter.safetensors"

# a loader: (folder, its JSON, checkpoint step, scale) -> the subject's prompt word (None for motions)
Loader = Callable[[Path, dict[str, Any], int | None, float], str | None]


class DreamVideoLoaderMixin:
    """Adds ``load_subject``, ``load_motion``, ``unload`` and ``load_learned_token`` to a pipeline with ``unet``,
    ``tokenizer`` and ``text_encoder`` (and diffusers' ``TextualInversionLoaderMixin``)."""

    subject: dict[str, Any] | None = None
    motion: dict[str, Any] | None = None

    def load_subject(
        self, path: str | os.PathLike, step: int | None = None, scale: float = 1.0
    ) -> str | None:
        """Add a learned subject: its word and identity adapter.

        Args:
            path: the subject folder.
            step: use the training checkpoint of this step (``checkpoints/``) instead of the final result.
            scale: weight of the identity adapter (0 disables it).

        Returns:
            The word to use in prompts (``"<sks>"``); ``None`` for a subject without a learned word (an identity
            adapter converted without its embedding: prompt with the class word).
        """
        folder, info = self._read_learned(path, SUBJECT_FILE, "subject")
        return self._loader(info, "subject")(folder, info, step, scale)

    def load_motion(self, path: str | os.PathLike, step: int | None = None, scale: float = 1.0) -> None:
        """Add a learned motion adapter.

        Args:
            path: the motion folder.
            step: use the training checkpoint of this step (``checkpoints/``) instead of the final result.
            scale: weight of the motion adapter (0 disables it).
        """
        folder, info = self._read_learned(path, MOTION_FILE, "motion")
        self._loader(info, "motion")(folder, info, step, scale)

    def unload(self, name: str) -> None:
        """Remove the ``"identity"`` or ``"motion"`` adapter (the learned word stays in the vocabulary).

        Args:
            name: the adapter's name.
        """
        ad.detach_adapter(self.unet, name)
        if name == "motion":
            self.motion = None

    def load_learned_token(self, file: str | os.PathLike) -> str:
        """Add the word of a ``learned_embeds.safetensors`` with diffusers' ``load_textual_inversion``; return it.

        Loading a word this pipeline already learned (the same subject again, another checkpoint) replaces it.
        The global random state is left as it was (transformers draws the new row's initial value from it).

        Args:
            file: ``{token: tensor (1, dim)}``, as written by textual inversion.
        """
        token, vector = load_learned_embeds(file)
        check_learned_token(self.tokenizer, self.text_encoder, token, vector, str(file))
        if token in self.tokenizer.get_added_vocab():
            self.unload_textual_inversion(token)
        with _random_state_kept(self.text_encoder.device):
            self.load_textual_inversion({token: vector.reshape(1, -1)})
        return token

    # ------------------------------------------------------------------ per method
    def _read_learned(self, path: str | os.PathLike, marker: str, kind: str) -> tuple[Path, dict[str, Any]]:
        folder = Path(path)
        info = read_json(folder / marker)
        check_same_architecture(info["base"], self.base_description(), f"{kind} {folder}")
        return folder, info

    def _loader(self, info: dict[str, Any], kind: str) -> Loader:
        """The function that loads a folder of ``info["method"]`` (the place of a method registry)."""
        if info.get("method", "dreamvideo") == "dreamvideo":
            return self._load_dreamvideo_subject if kind == "subject" else self._load_dreamvideo_motion
        from dreamvideo.baselines import load_learned

        return lambda folder, info, step, scale: load_learned(self, folder, info, kind, step, scale)

    def _load_dreamvideo_subject(
        self, folder: Path, info: dict[str, Any], step: int | None, scale: float
    ) -> str | None:
        token = None
        if (folder / EMBEDS_FILE).is_file() or info.get("token", "") is not None:
            token = self.load_learned_token(folder / EMBEDS_FILE)
        if info.get("identity_adapter") is not None:
            file = _checkpoint_file(folder, "identity_adapter", step, IDENTITY_FILE)
            self._load_adapter(ad.AdapterConfig.from_dict(info["identity_adapter"]), file, scale)
        self.subject = info | {"path": str(folder)}
        return token

    def _load_dreamvideo_motion(
        self, folder: Path, info: dict[str, Any], step: int | None, scale: float
    ) -> None:
        file = _checkpoint_file(folder, "motion_adapter", step, MOTION_ADAPTER_FILE)
        self._load_adapter(ad.AdapterConfig.from_dict(info["motion_adapter"]), file, scale)
        self.motion = info | {"path": str(folder)}

    def _load_adapter(self, config: ad.AdapterConfig, file: Path, scale: float) -> None:
        if config.name in ad.adapter_names(self.unet):
            ad.detach_adapter(self.unet, config.name)
        tensors, _ = load_safetensors(file)
        ad.attach_adapter(self.unet, config)
        try:
            ad.load_adapter_state_dict(self.unet, config.name, tensors)
        except ValueError as err:
            ad.detach_adapter(self.unet, config.name)
            raise DreamVideoError(f"{file}: {err}") from err
        ad.set_adapter_scale(self.unet, config.name, scale)
        self.unet.to(self.device)


def _checkpoint_file(folder: Path, stage: str, step: int | None, name: str) -> Path:
    """``folder/name``, or its copy in ``checkpoints/<stage>/step-NNNNNN/`` for ``step``."""
    if step is None:
        return folder / name
    file = folder / "checkpoints" / stage / f"step-{step:06d}" / name
    if not file.is_file():
        available = sorted(p.name for p in (folder / "checkpoints" / stage).glob("step-*"))
        raise DreamVideoError(
            f"{folder}: no {stage} checkpoint at step {step} (available: {', '.join(available) or 'none'})"
        )
    return file


@contextlib.contextmanager
def _random_state_kept(device: torch.device) -> Iterator[None]:
    """Run a block without changing the global random state (CPU, and ``device`` if it is a GPU)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
