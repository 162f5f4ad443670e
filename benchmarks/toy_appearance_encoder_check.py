"""Does a trained appearance encoder bring the reference subject into the video? (toy base, README section 9)

Trains an encoder (or reuses one in ``--encoder``), then generates each novel subject's class-word prompts with the
subject's first photo as the reference and without it (same seed), and prints the oracle's subject fidelity,
paired, as JSON (also written to ``ENCODER/check_s<strength>_seed<seed>.json``)::

    python benchmarks/toy_appearance_encoder_check.py --encoder runs/enc --steps 600 --lr 1e-3 --strength 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dreamvideo.metrics import paired_difference
from dreamvideo.pipeline import DreamVideoPipeline
from dreamvideo.reference.training import EncoderSettings, learn_appearance_encoder
from dreamvideo.toy import oracle, world
from dreamvideo.training import StageConfig

PROMPTS = (
    "a {w} moves right on blue sky",
    "a {w} stays still on yellow sand",
    "a {w} moves up on green grass",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", type=Path, required=True, help="encoder folder (trained here if it has none)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--strength", type=float, default=1.0, help="reference_strength at generation")
    p.add_argument("--sample-steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0, help="sampling seed of every video")
    args = p.parse_args(argv)
    if not (args.encoder / "appearance_encoder.json").is_file():
        stage = StageConfig(steps=args.steps, lr=args.lr, batch_size=2, checkpoint_every=args.steps)
        learn_appearance_encoder(
            DreamVideoPipeline.from_pretrained("toy"), args.encoder, EncoderSettings(stage=stage)
        )
    pipe = DreamVideoPipeline.from_pretrained("toy")
    pipe.set_progress_bar_config(disable=True)
    pipe.load_appearance_encoder(args.encoder)
    with_ref, without = [], []
    for name, subject in world.NOVEL_SUBJECTS.items():
        photos = world.subject_images(name, n=5)
        images, masks = [i for i, _ in photos], [m for _, m in photos]
        for template in PROMPTS:
            prompt = template.format(w=subject.class_word)
            scores = []
            for ref in (images[0], None):
                extra = (
                    {"reference_image": ref, "reference_strength": args.strength} if ref is not None else {}
                )
                generator = torch.Generator().manual_seed(args.seed)
                frames = pipe(
                    prompt, num_frames=8, num_inference_steps=args.sample_steps, generator=generator, **extra
                ).frames[0]
                scores.append(oracle.subject_fidelity(frames, images, masks))
            with_ref.append(scores[0])
            without.append(scores[1])
            print(f"{name}: {prompt}: with reference {scores[0]:.3f}, base {scores[1]:.3f}", flush=True)
    result = {
        "encoder": str(args.encoder),
        "strength": args.strength,
        "seed": args.seed,
        "with_reference": float(np.mean(with_ref)),
        "base": float(np.mean(without)),
        **paired_difference(with_ref, without),
    }
    print(json.dumps(result))
    (args.encoder / f"check_s{args.strength:g}_seed{args.seed}.json").write_text(
        json.dumps(result, indent=1) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
