"""Experiments on why the toy base ignores its motion words (docs/toy_model/recipe.md, "Motion words").

Two changes that ``dreamvideo.toy.pretrain`` does not offer, applied by patching before it runs (experiments only;
no shipped model uses them):

- ``--temporal-positions``: sinusoidal frame positions in every temporal transformer block (diffusers'
  ``BasicTransformerBlock.pos_embed``, as AnimateDiff's motion modules have). ``UNet3DConditionModel`` has none: a
  frame's place in the clip reaches it only through the zero padding of the temporal convolutions.
- ``--motions``: pretraining clips restricted to some motions (e.g. ``"moves left,moves right"``).
- ``--anchor-jitter PX`` (probe only): the word use on clips drawn as ``pretrain --anchor-jitter PX`` draws them.

Train (every other flag goes to ``dreamvideo.toy.pretrain``), then measure the word use of the result::

    python benchmarks/toy_motion_word_arms.py train --motions "moves left,moves right" -- --out RUN \\
        --init-from docs/toy_model/recipe/vzero_shift_800 --unet-steps 100 ...
    python benchmarks/toy_motion_word_arms.py probe --motions "moves left,moves right" RUN/model
"""

from __future__ import annotations

import argparse
import sys

from diffusers.models.embeddings import SinusoidalPositionalEmbedding

import dreamvideo.toy.model as toy_model
import dreamvideo.toy.pretrain as toy_pretrain
from dreamvideo.toy import world


def with_temporal_positions(make_unet):
    """Wrap a toy-UNet factory so that every temporal transformer block adds sinusoidal frame positions."""

    def make(*args, **kwargs):
        unet = make_unet(*args, **kwargs)
        for module in unet.modules():
            if type(module).__name__ == "TransformerTemporalModel":
                for block in module.transformer_blocks:
                    pe = SinusoidalPositionalEmbedding(block.norm1.normalized_shape[0], max_seq_length=32)
                    table = pe._buffers.pop("pe")
                    pe.register_buffer("pe", table, persistent=False)  # the saved weights stay UNet3D's
                    block.pos_embed = pe
        return unet

    return make


def restrict_motions(motions: list[str]) -> None:
    """Make ``world.sample_pretraining_spec`` (and so the pretraining clips and the probe's clips) draw only ``motions``."""
    unknown = set(motions) - set(world.MOTIONS)
    if unknown:
        raise SystemExit(f"unknown motions {sorted(unknown)}; choose from {world.MOTIONS}")
    draw = world.sample_pretraining_spec

    def restricted(rng, anchor_jitter=None):
        while (spec := draw(rng, anchor_jitter)).motion not in motions:
            pass
        return spec

    world.sample_pretraining_spec = restricted


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("action", choices=("train", "probe"))
    p.add_argument("--temporal-positions", action="store_true")
    p.add_argument("--motions", help="comma-separated vocabulary motions (default: all)")
    p.add_argument(
        "--anchor-jitter", type=float, help="probe: clips as `pretrain --anchor-jitter PX` draws them"
    )
    p.add_argument(
        "rest", nargs=argparse.REMAINDER, help="train: pretrain flags after --; probe: model folders"
    )
    args = p.parse_args(argv)
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    if args.temporal_positions:
        toy_model.toy_unet = toy_pretrain.toy_unet = with_temporal_positions(toy_model.toy_unet)
    if args.motions:
        restrict_motions([m.strip() for m in args.motions.split(",")])
    if args.action == "train":
        return toy_pretrain.main(rest)
    from toy_temporal_probe import model_pipe, word_use

    for folder in rest:
        pipe = model_pipe(folder)
        if args.temporal_positions:  # the patched architecture, then the weights again
            weights = pipe.unet.state_dict()
            pipe.unet = toy_model.toy_unet()
            pipe.unet.load_state_dict(weights)
        for t, row in word_use(pipe, anchor_jitter=args.anchor_jitter).items():
            print(folder, f"t={t} loss rise when swapped:", {k: f"{v:+.1%}" for k, v in row.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
