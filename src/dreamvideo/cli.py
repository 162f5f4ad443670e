"""The ``dreamvideo`` command. Each sub-command lives next to the code it drives and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import sys

from dreamvideo.fileio import DreamVideoError

# Modules that define ``register_cli(subparsers)``; each adds its sub-commands with ``set_defaults(func=...)``.
COMMAND_MODULES = [
    "dreamvideo.commands",
    "dreamvideo.toy.demo",
    "dreamvideo.metrics",
    "dreamvideo.convert",
    "dreamvideo.benchmark",
    "dreamvideo.app",
    "dreamvideo.reference.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dreamvideo",
        description="Customized text-to-video generation (DreamVideo): learn a subject and a motion, then compose them.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                continue
            raise
        module.register_cli(subparsers)
    _add_threads(subparsers)
    return parser


def _add_threads(subparsers: argparse._SubParsersAction) -> None:
    """Give every sub-command ``--threads`` (CPU threads of torch; see :mod:`dreamvideo.threads`)."""
    from dreamvideo.validate import POSITIVE

    for sub in subparsers.choices.values():
        nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:  # e.g. ``convert vgen-base``: the option goes to the leaf commands
            for action in nested:
                _add_threads(action)
        elif not any("--threads" in a.option_strings for a in sub._actions):
            sub.add_argument(
                "--threads",
                type=POSITIVE,
                default=None,
                help="CPU threads of torch (default: half the cores, at most 8; OMP_NUM_THREADS wins)",
            )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dreamvideo.threads import apply_threads

    apply_threads(getattr(args, "threads", None))
    try:
        result = args.func(args)
    except DreamVideoError as err:
        print(f"dreamvideo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
