"""``dreamvideo app``: a local web app (Gradio) over the library: learn subjects and motions, generate, compare.

Gradio is an optional extra (``pip install -e ".[app]"``); it is imported only when the app starts, so the core
library and CLI work without it. The page is a thin layer: training and sampling are the library's functions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dreamvideo.fileio import DreamVideoError


def cmd_app(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ModuleNotFoundError as err:
        raise DreamVideoError(
            'the app needs Gradio: pip install -e ".[app]" (or pip install "gradio>=6")'
        ) from err
    from dreamvideo.app.server import serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach this machine can use the app")
    serve(base=args.base, host=args.host, port=args.port, workspace=args.workspace, device=args.device)
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "app", help="serve the local web app (Gradio): learn, generate and compare in a browser"
    )
    p.add_argument("--base", default="toy", help="diffusers text-to-video folder, hub id, or 'toy' (default)")
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=7860, help="TCP port (default 7860)")
    p.add_argument(
        "--workspace",
        type=Path,
        default=Path("dreamvideo_app"),
        help="folder of the library, uploads and videos (default ./dreamvideo_app)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.set_defaults(func=cmd_app)
