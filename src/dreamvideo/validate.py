"""Checks of user input that run before any model is loaded: numeric flags (argparse types), caption templates,
subject/motion folders, appearance images and output files.

Each failure is a :class:`dreamvideo.fileio.DreamVideoError` (or an argparse error at parse time) with a one-line
message naming the flag or file.
"""

from __future__ import annotations

import argparse
import math
import os
import string
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dreamvideo.fileio import DreamVideoError, read_json


class InputError(DreamVideoError):
    """A flag value, a template or an input file is unusable; the message names it."""


# ----------------------------------------------------------------------------- argparse types


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]``.

    Args:
        low: smallest allowed value.
        high: largest allowed value (``None``: no limit).
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def float_range(
    low: float | None = None, high: float | None = None, low_open: bool = False
) -> Callable[[str], float]:
    """An argparse ``type``: a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``).

    Args:
        low: smallest allowed value (``None``: no limit).
        high: largest allowed value (``None``: no limit).
        low_open: exclude ``low`` itself (e.g. a learning rate must be > 0).
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            left = "(" if low_open else "["
            raise argparse.ArgumentTypeError(
                f"must be in {left}{low}, {high if high is not None else 'inf'}], got {value}"
            )
        return value

    parse.__name__ = "number"
    return parse


POSITIVE = int_range(1)
NON_NEGATIVE = int_range(0)
SIZE = int_range(8, 8192)
LEARNING_RATE = float_range(0.0, 1.0, low_open=True)
FRACTION = float_range(0.0, 1.0)
STRENGTH = float_range(0.0, 100.0)
GUIDANCE = float_range(0.0, 100.0)


# ----------------------------------------------------------------------------- captions and tokens


def caption_fields(template: str) -> set[str]:
    """The ``{field}`` names of a caption template; refuses malformed braces.

    Args:
        template: e.g. ``"a {token} {word}"``.
    """
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise InputError(
            f"--caption {template!r}: malformed template ({err}); use {{token}} and {{word}}"
        ) from err


def check_caption_template(template: str, needs_token: bool) -> None:
    """Allow only ``{token}`` and ``{word}``; with ``needs_token`` the caption must contain ``{token}``.

    Args:
        template: the caption template.
        needs_token: the token is trained, so a caption without it would learn nothing.
    """
    fields = caption_fields(template)
    unknown = sorted(fields - {"token", "word"})
    if unknown:
        raise InputError(
            f"--caption {template!r}: unknown field {{{unknown[0]}}}; the fields are {{token}} and {{word}}"
        )
    if needs_token and "token" not in fields:
        raise InputError(f"--caption {template!r}: has no {{token}}, so the token would learn nothing")


def check_token_in_reach(tokenizer: Any, template: str, word: str) -> None:
    """Refuse a caption whose ``{token}`` falls beyond the tokenizer's length (it would be cut off).

    Args:
        tokenizer: the base's tokenizer (before the token is added).
        template: the caption template (with ``{token}``).
        word: the init / class word.
    """
    if "{token}" not in template:
        return
    prefix = template.split("{token}")[0].format(word=word)
    used = len(tokenizer.encode(prefix, add_special_tokens=False)) + 1  # + the token itself
    room = tokenizer.model_max_length - 2  # start and end tokens
    if used > room:
        raise InputError(
            f"--caption {template!r}: the token would be token {used} of the caption but the "
            f"tokenizer keeps {room}; it would be cut off, so move {{token}} earlier"
        )


def single_token_words(tokenizer: Any, limit: int = 12) -> list[str]:
    """Words of the vocabulary that encode to one token: all of them for a small vocabulary, else a few.

    Args:
        tokenizer: a CLIP (BPE) tokenizer.
        limit: how many to list for a large vocabulary.
    """
    words = sorted(
        {
            t[:-4]
            for t in tokenizer.get_vocab()
            if t.endswith("</w>") and t[:-4].isalpha() and t[:-4].isascii() and len(t) > 5
        }
    )
    if len(words) <= 150:
        return words
    common = ["dog", "cat", "car", "person", "man", "woman", "bird", "toy", "bear", "horse", "teddy", "duck"]
    return [w for w in common if w in words][:limit] or words[:limit]


# ----------------------------------------------------------------------------- learned folders


def _require(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise InputError(f"{path}: {what}")


def check_learned_info(folder: Path, marker: str) -> dict:
    """Read a subject/motion folder's JSON and check its fields (hand edits fail here, not in a traceback).

    Args:
        folder: the ``--subject`` or ``--motion`` folder.
        marker: ``subject.json`` or ``motion.json``.

    Returns:
        The parsed JSON object.
    """
    from dreamvideo.adapters import AdapterConfig

    folder = Path(folder)
    _require(folder.is_dir(), folder, "folder not found")
    path = folder / marker
    info = read_json(path)
    _require(isinstance(info, dict), path, f"must be a JSON object, not a {type(info).__name__}")
    base = info.get("base")
    _require(
        isinstance(base, dict) and isinstance(base.get("architecture"), str),
        path,
        "has no valid 'base' entry (an object with 'architecture'); was it edited by hand?",
    )
    key = "identity_adapter" if marker == "subject.json" else "motion_adapter"
    if info.get("method", "dreamvideo") == "dreamvideo":
        adapter = info.get(key)
        _require(adapter is None or isinstance(adapter, dict), path, f"'{key}' must be an object or null")
        if marker == "motion.json":
            _require(adapter is not None, path, f"has no '{key}'")
        if adapter is not None:
            try:
                AdapterConfig.from_dict(adapter)
            except (TypeError, ValueError, KeyError) as err:
                raise InputError(f"{path}: bad '{key}' entry ({type(err).__name__}: {err})") from err
    return info


def check_tensor_file(path: Path) -> None:
    """Refuse a learned-weights file with non-float or non-finite tensors (they give black or noisy videos).

    Args:
        path: a ``.safetensors`` file of a subject or motion folder.
    """
    import torch

    from dreamvideo.fileio import load_safetensors

    tensors, _ = load_safetensors(path)
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise InputError(
                f"{path}: tensor {name!r} is {str(t.dtype).replace('torch.', '')}, not floating point"
            )
        if not bool(torch.isfinite(t).all()):
            raise InputError(f"{path}: tensor {name!r} holds NaN or infinite values")


def learned_files(folder: Path, step: int | None) -> list[Path]:
    """The ``.safetensors`` files generation will read from a learned folder (final, or those of ``step``).

    Args:
        folder: a subject or motion folder.
        step: a checkpoint step, or ``None`` for the final files.
    """
    files = sorted(folder.glob("*.safetensors"))
    if step is not None:
        files += sorted((folder / "checkpoints").glob(f"*/step-{step:06d}/*.safetensors"))
    return [f for f in files if f.name != "optimizer.safetensors"]


# ----------------------------------------------------------------------------- inputs and outputs


def open_rgb_image(path: Path):
    """Read ``--appearance-image`` as RGB; refuse unreadable files and decompression bombs by name.

    Args:
        path: the image file.
    """
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(f"{path}: image is too large to load safely ({err})") from err
    except Exception as err:  # unreadable, truncated, unsupported
        raise InputError(f"{path}: cannot read image ({type(err).__name__}: {err})") from err


def check_writable_folder(folder: Path, flag: str) -> None:
    """Fail now, not after the work, if files cannot be written into ``folder`` (created if missing).

    Args:
        folder: where output files go.
        flag: the flag naming it, for the message.
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{folder}: {flag} cannot be created, {existing} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=existing)
        os.close(fd)
        os.remove(tmp)
    except OSError as err:
        raise InputError(f"{folder}: {flag} is not writable ({err.strerror or err})") from err


def check_new_files(paths: list[Path], overwrite: bool, flag: str = "--out") -> None:
    """Refuse to replace existing files unless ``overwrite``.

    Args:
        paths: every file a command will write.
        overwrite: ``--overwrite`` was given.
        flag: the flag naming them, for the message.
    """
    for path in paths:
        if path.is_dir():
            raise InputError(f"{path}: {flag} would write this file but a folder is there")
        if path.exists() and not overwrite:
            raise InputError(f"{path}: exists; pass --overwrite to replace it")
