"""What the training and generation sub-commands share: loading the base from ``--base``/``--device``, and refusing
an output folder before any model is loaded."""

from __future__ import annotations

import argparse
from pathlib import Path

from dreamvideo import artifacts
from dreamvideo import validate as v
from dreamvideo.fileio import DreamVideoError

DEVICE_HELP = "cpu, cuda, cuda:1, ... (default: cuda if available)"


def load_pipe(args: argparse.Namespace):
    """The base model of ``--base`` (and ``--image-encoder``) on ``--device``, compiled with ``--compile``.

    Args:
        args: the parsed flags.

    Raises:
        BaseModelError: the base cannot be loaded (a one-line reason, no traceback).
    """
    from dreamvideo.base import BaseModelError
    from dreamvideo.distributed import local_device
    from dreamvideo.pipeline import DreamVideoPipeline

    device = local_device(getattr(args, "device", None))  # under accelerate launch: this process's GPU
    try:
        pipe = DreamVideoPipeline.from_pretrained(
            args.base, image_encoder=getattr(args, "image_encoder", None), device=device
        )
    except DreamVideoError:
        raise
    except (
        OSError,
        ValueError,
        RuntimeError,
        KeyError,
        TypeError,
    ) as err:  # e.g. a config that misfits its weights
        first = (str(err).strip().splitlines() or [""])[0][:240]
        raise BaseModelError(
            f"{args.base}: cannot load this base model ({type(err).__name__}: {first})"
        ) from err
    if getattr(args, "compile", False):
        pipe.unet.compile()  # in place: module names and adapter attachment unchanged; traced at the first call
    return pipe


def check_output_early(out: Path, marker: str, overwrite: bool, resume: bool) -> None:
    """Fail before loading any model when the output folder would be refused anyway (nothing is created).

    Args:
        out: the ``--out`` folder.
        marker: the result's JSON file name.
        overwrite, resume: the run's flags.
    """
    artifacts.check_can_train(out, marker, overwrite, resume)
    v.check_writable_folder(out, "--out")
