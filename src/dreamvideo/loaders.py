"""Loading learned subjects and motions into a pipeline: ``load_subject``, ``load_motion``, ``unload``.

A subject folder holds ``subject.json``, the learned word (``learned_embeds.safetensors``, diffusers' textual-inversion
format) and the identity adapter; a motion folder ``motion.json`` and the motion adapter. Both may hold
``checkpoints/<stage>/step-NNNNNN/`` copies. Which learner reads a folder is the method its JSON names, looked up in
the registry (:func:`dreamvideo.methods.load_into`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from dreamvideo import adapters as ad
from dreamvideo import methods
from dreamvideo.artifacts import (  # noqa: F401  (re-exported: the folder layout's file names)
    EMBEDS_FILE,
    IDENTITY_FILE,
    MOTION_ADAPTER_FILE,
    MOTION_FILE,
    SUBJECT_FILE,
)
from dreamvideo.artifacts import checkpoint_file as _checkpoint_file  # noqa: F401
from dreamvideo.textual_inversion import check_learned_token, load_learned_embeds


class DreamVideoLoaderMixin:
    """Adds ``load_subject``, ``load_motion``, ``unload`` and ``load_learned_token`` to a pipeline with ``unet``,
    ``tokenizer`` and ``text_encoder`` (and diffusers' ``TextualInversionLoaderMixin``)."""

    subject: dict[str, Any] | None = None
    motion: dict[str, Any] | None = None

    def load_subject(
        self, path: str | os.PathLike, step: int | None = None, scale: float = 1.0
    ) -> str | None:
        """Add a learned subject of any method: its word and what its method trained (e.g. the identity adapter).

        Args:
            path: the subject folder.
            step: use the training checkpoint of this step (``checkpoints/``) instead of the final result.
            scale: weight of what was learned (adapter or LoRA scale; 0 disables it).

        Returns:
            The word to use in prompts (``"<sks>"``, or the class word of a baseline without one); ``None`` for a
            subject without a learned word (an identity adapter converted without its embedding).
        """
        return methods.load_into(self, path, "subject", step, scale)

    def load_motion(self, path: str | os.PathLike, step: int | None = None, scale: float = 1.0) -> None:
        """Add a learned motion of any method.

        Args:
            path: the motion folder.
            step: use the training checkpoint of this step (``checkpoints/``) instead of the final result.
            scale: weight of what was learned (0 disables it).
        """
        methods.load_into(self, path, "motion", step, scale)

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


@contextlib.contextmanager
def _random_state_kept(device: torch.device) -> Iterator[None]:
    """Run a block without changing the global random state (CPU, and ``device`` if it is a GPU)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
