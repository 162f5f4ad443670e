"""Atomic, pickle-free file writing: safetensors with metadata, JSON, and whole folders."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file


class DreamVideoError(Exception):
    """Base class for errors reported to users with a clear message (no traceback in the CLI)."""


@contextmanager
def atomic_path(path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only if the block succeeds.

    Args:
        path: the file to write.
        keep_suffix: give the temporary file ``path``'s ending (for writers that choose the format by it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem, suffix = (path.stem, path.suffix) if keep_suffix else (path.name, ".tmp")
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the result ordinary permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, Any] | None = None
) -> None:
    """Write ``tensors`` atomically; non-string metadata values are JSON-encoded."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata=meta)


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors and metadata; a missing or corrupt file raises :class:`DreamVideoError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DreamVideoError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several exception types for damaged files
        raise DreamVideoError(f"{path}: not a readable safetensors file ({err})") from err
    return tensors, metadata


def copy_exactly(
    own: dict[str, torch.Tensor],
    tensors: dict[str, torch.Tensor],
    keys_error: Callable[[list[str], list[str]], Exception],
    shape_error: Callable[[str, tuple[int, ...], tuple[int, ...]], Exception],
) -> None:
    """Copy saved ``tensors`` into the parameters ``own`` of the same names; every name and shape must match.

    Args:
        own: the parameters to fill, by name.
        tensors: the saved tensors, by name.
        keys_error: the error for the ``(missing, unexpected)`` names (each sorted), raised before any copy.
        shape_error: the error for ``(name, saved shape, expected shape)``.
    """
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise keys_error(missing, unexpected)
    with torch.no_grad():
        for name, p in own.items():
            if p.shape != tensors[name].shape:
                raise shape_error(name, tuple(tensors[name].shape), tuple(p.shape))
            p.copy_(tensors[name])


def write_json(data: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DreamVideoError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DreamVideoError(f"{path}: not valid JSON ({err})") from err


def replace_dir(staging: Path, final: Path) -> None:
    """Move a fully written ``staging`` folder to ``final``, replacing an older ``final`` only at the end."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old)
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, final)
