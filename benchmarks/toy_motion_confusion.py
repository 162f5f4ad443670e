"""Which motions does a toy base tell apart? Text-state distances and a same-seed confusion matrix.

The quality bar gives one motion accuracy; this says where it goes wrong. For one caption (sprite and background
fixed) and each of the 11 vocabulary motions:

- ``text_moves``: the 11 x 11 matrix of ``pretrain.word_moves`` between the captions' text states (how far the
  UNet's input moves when only the motion words change);
- ``x0_shares``: how much of the UNet's x0 prediction at the first sampling step (pure noise) comes from the noise
  and how much from the motion word, over all motions and over the four slides (``moves left/right/up/down``);
- ``confusion``: for ``--seeds`` seeds, one video per motion from the *same* starting noise, and the oracle's
  motion class of each; a model that ignores a motion word draws the same path for it as for its neighbours.

    python benchmarks/toy_motion_confusion.py MODEL --seeds 3 --out confusion.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from dreamvideo.fileio import write_json
from dreamvideo.toy import oracle, world
from dreamvideo.toy.pretrain import word_moves


def captions(template: str) -> list[str]:
    return [template.format(motion=m) for m in world.MOTIONS]


def text_moves(pipe, template: str) -> np.ndarray:
    """(11, 11) ``word_moves`` between the captions of every pair of motions (row: the caption, column: its swap)."""
    ids = pipe.tokenizer(
        captions(template),
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        states = pipe.text_encoder(ids).last_hidden_state
    n = len(world.MOTIONS)
    out = np.zeros((n, n))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        moved = word_moves(states[[i] * (n - 1)], states[others], ids[[i] * (n - 1)], ids[others])
        out[i, others] = moved.numpy()
    return out


def x0_shares(
    pipe, template: str, motions: list[str], seeds: int = 4, t: int | None = None
) -> dict[str, float]:
    """Shares of the variance of the UNet's x0 prediction on pure noise due to the noise and to the motion word.

    At the first sampling step (``t`` = the last training timestep, pure noise under zero terminal SNR) the input holds
    nothing about the clip, so a well-trained model's x0 depends on the prompt alone (noise share 0); a model that
    reads a path from the noise there draws the same path whatever the motion word says.
    """
    t = pipe.scheduler.config.num_train_timesteps - 1 if t is None else t
    alpha_bar = pipe.scheduler.alphas_cumprod[t]
    text = pipe.encode_text([template.format(motion=m) for m in motions]).repeat(seeds, 1, 1)
    shape = (seeds, 1, pipe.unet.config.in_channels, world.NUM_FRAMES, *[pipe.unet.config.sample_size] * 2)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0)).expand(
        -1, len(motions), *shape[2:]
    )
    sample = (1 - alpha_bar).sqrt() * noise.flatten(0, 1)  # no signal, only the noise at level t
    with torch.no_grad():
        out = pipe.unet(sample, torch.tensor(t), encoder_hidden_states=text).sample
    x0 = pipe.predicted_x0_and_noise(out, sample, alpha_bar)[0].reshape(seeds, len(motions), -1)
    total = x0.var((0, 1), unbiased=False).sum()
    from_noise = x0.var(0, unbiased=False).mean(0).sum()  # across seeds, within a motion
    from_text = x0.mean(0).var(0, unbiased=False).sum()  # across motions, of the mean over seeds
    return {"t": t, "noise": float(from_noise / total), "text": float(from_text / total)}


def confusion(pipe, template: str, seeds: int, steps: int, guidance: float) -> tuple[np.ndarray, list]:
    """Counts (prompted motion, oracle's class) over ``seeds`` same-noise draws, and every clip's track."""
    n = len(world.MOTIONS)
    counts, tracks = np.zeros((n, n), dtype=int), []
    for seed in range(seeds):
        for i, prompt in enumerate(captions(template)):
            frames = pipe(
                prompt,
                num_frames=world.NUM_FRAMES,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=torch.Generator().manual_seed(seed),
                progress=False,
            ).frames[0]
            masks = oracle.segment_foreground(frames)
            counts[i, world.MOTIONS.index(oracle.motion_class(frames, masks))] += 1
            tracks.append(
                {"seed": seed, "motion": world.MOTIONS[i], "track": oracle.track(masks)[0].round(1).tolist()}
            )
    return counts, tracks


def print_matrix(title: str, matrix: np.ndarray, fmt: str) -> None:
    names = [m.replace("moves ", "")[:6] for m in world.MOTIONS]
    print(title)
    print(" " * 8 + " ".join(f"{n:>6s}" for n in names))
    for name, row in zip(names, matrix, strict=True):
        print(f"{name:8s}" + " ".join(format(v, fmt) for v in row))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="'toy' or a base-model folder")
    p.add_argument("--template", default="a red dotted circle {motion} on blue sky")
    p.add_argument("--seeds", type=int, default=3, help="same-noise draws per motion (0: text states only)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=9.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from dreamvideo.pipeline import DreamVideoPipeline

    pipe = DreamVideoPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    moves = text_moves(pipe, args.template)
    print_matrix("text states moved by swapping the motion words (%):", 100 * moves, "6.0f")
    off = moves[~np.eye(len(moves), dtype=bool)]
    result = {"model": args.model, "template": args.template, "motions": list(world.MOTIONS)}
    result["text_moves"] = {
        "matrix": moves.round(4).tolist(),
        "min": float(off.min()),
        "mean": float(off.mean()),
    }
    print(f"min {off.min():.0%}, mean {off.mean():.0%}")
    slides = [m for m in world.MOTIONS if m.startswith("moves ")]
    result["x0_shares"] = {"all": x0_shares(pipe, args.template, list(world.MOTIONS))}
    result["x0_shares"]["slides"] = x0_shares(pipe, args.template, slides)
    for group, shares in result["x0_shares"].items():
        print(
            f"x0 on pure noise (t={shares['t']}), {group} motions: {shares['noise']:.0%} from the noise, "
            f"{shares['text']:.0%} from the motion word"
        )
    if args.seeds:
        counts, tracks = confusion(pipe, args.template, args.seeds, args.steps, args.guidance)
        print_matrix(
            f"oracle's class (columns) of each prompted motion (rows), {args.seeds} seeds:", counts, "6d"
        )
        accuracy = float(np.trace(counts) / counts.sum())
        print(f"accuracy {accuracy:.0%} ({np.trace(counts)}/{counts.sum()})")
        result |= {"seeds": args.seeds, "confusion": counts.tolist(), "accuracy": accuracy, "tracks": tracks}
    write_json(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
