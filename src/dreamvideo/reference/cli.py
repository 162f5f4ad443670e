"""``dreamvideo learn-appearance-encoder`` and the appearance-encoder flags of ``dreamvideo generate``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dreamvideo.fileio import DreamVideoError


def cmd_learn_appearance_encoder(args: argparse.Namespace) -> int:
    from dreamvideo.cli_support import check_output_early, load_pipe
    from dreamvideo.reference.config import ReferenceConfig
    from dreamvideo.reference.encoder import ENCODER_INFO
    from dreamvideo.reference.training import EncoderSettings, learn_appearance_encoder
    from dreamvideo.training import StageConfig

    for name in ("steps", "batch_size", "num_frames", "toy_pairs", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise DreamVideoError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.lr <= 0:
        raise DreamVideoError(f"--lr must be > 0, got {args.lr}")
    if args.pairs is not None and not args.pairs.is_dir():
        raise DreamVideoError(f"{args.pairs}: pairs folder not found")
    try:
        reference = ReferenceConfig(blocks=tuple(args.blocks))
        stage = StageConfig(
            steps=args.steps,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            offset_noise=args.offset_noise,
            mixed_precision=args.mixed_precision,
            gradient_checkpointing=args.gradient_checkpointing,
        )
        settings = EncoderSettings(
            num_frames=args.num_frames,
            resolution=args.resolution,
            stage=stage,
            caption_dropout=args.caption_dropout,
            reference=reference,
            toy_pairs=args.toy_pairs,
        )
    except ValueError as err:
        raise DreamVideoError(str(err)) from err
    check_output_early(args.out, ENCODER_INFO, args.overwrite, args.resume)
    pipe = load_pipe(args)
    out = learn_appearance_encoder(
        pipe,
        args.out,
        settings,
        pairs=args.pairs,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.quiet,
    )
    print(
        f"appearance encoder written to {out} (generate --appearance-encoder {out} --reference-image IMAGE)"
    )
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dreamvideo learn-appearance-encoder``."""
    p = subparsers.add_parser(
        "learn-appearance-encoder", help="train an appearance encoder (reference attention) once per base"
    )
    p.add_argument("--base", default="toy", help="diffusers text-to-video folder, hub id, or 'toy' (default)")
    p.add_argument(
        "--pairs",
        type=Path,
        help="folder of pairs: <pair>/reference.png, <pair>/video.mp4, optional <pair>/caption.txt "
        "(default on the toy base: pairs rendered from the toy world)",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--blocks",
        nargs="+",
        default=["mid", "up"],
        choices=["down", "mid", "up"],
        help="levels whose spatial self-attention takes the reference (section 9: mid up)",
    )
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--num-frames", type=int, default=8, help="frames per training clip")
    p.add_argument(
        "--resolution", type=int, help="frame and reference size (default: the base's native size)"
    )
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument(
        "--toy-pairs", type=int, default=512, help="toy world pairs rendered (toy base without --pairs)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a finished result in --out")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offset-noise", type=float, default=0.1)
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    p.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_learn_appearance_encoder)


# ----------------------------------------------------------------------------- generate


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    """``--appearance-encoder DIR --reference-image IMG [--reference-strength S]`` for ``dreamvideo generate``."""
    p.add_argument("--appearance-encoder", type=Path, help="folder from learn-appearance-encoder")
    p.add_argument(
        "--reference-image", type=Path, help="subject image for the appearance encoder (zero-shot)"
    )
    p.add_argument("--reference-strength", type=float, default=1.0, help="reference attention blend, 0-1")


def apply_generate_arguments(pipe, args: argparse.Namespace) -> dict[str, Any]:
    """Load the encoder; return the keywords of ``pipe(...)`` (empty without ``--reference-image``)."""
    from PIL import Image

    encoder, image = getattr(args, "appearance_encoder", None), getattr(args, "reference_image", None)
    if (encoder is None) != (image is None):
        raise DreamVideoError("--appearance-encoder and --reference-image go together")
    if encoder is None:
        return {}
    try:
        reference = Image.open(image).convert("RGB")
    except OSError as err:
        raise DreamVideoError(f"{image}: cannot read image ({err})") from err
    pipe.load_appearance_encoder(encoder)
    return {"reference_image": reference, "reference_strength": args.reference_strength}


# ----------------------------------------------------------------------------- info


def print_encoder_info(unet) -> None:
    """``dreamvideo info``: the appearance encoder's trainable and frozen parameters and training memory."""
    from dreamvideo.reference.config import ReferenceConfig
    from dreamvideo.reference.encoder import AppearanceEncoder
    from dreamvideo.reference.model import find_reference_sites
    from dreamvideo.reference.training import encoder_memory_estimate

    config = ReferenceConfig()
    sites = find_reference_sites(unet, config)
    encoder = AppearanceEncoder.from_unet(unet, config)
    m = encoder_memory_estimate(encoder)
    m["bytes"] += 2 * sum(p.numel() for p in unet.parameters())  # the frozen main UNet in fp16
    gib = 2**30
    print(
        f"appearance encoder: copy of the UNet, reference attention in {len(sites)} spatial self-attentions "
        f"({'+'.join(config.blocks)}): {m['trainable']:,} trainable parameters (spatial path up to the last "
        f"site), {m['frozen']:,} frozen (temporal layers, unused tail); training memory without activations "
        f"~{m['bytes'] / gib:.1f} GiB (fp32 trainables + grads + AdamW, fp16 frozen parts and main UNet)"
    )
