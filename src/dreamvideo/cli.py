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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
