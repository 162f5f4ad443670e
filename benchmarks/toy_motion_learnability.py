"""Can the toy UNet learn to read "moves left" / "moves right" at all? A focused diagnostic (docs/toy_model/recipe.md).

Trains a base's UNet only where a motion word matters (timesteps ``--t-min``..999, where the layout is decided), on
two motions with their paths centred in the frame (``--anchor-jitter``), at a high learning rate, and prints the
motion-word use (``toy_temporal_probe.word_use`` on the same kind of clips) every 50 steps. ``--variance`` instead
prints how much of the clips' latent variance the motion word explains, by anchor jitter.

    python benchmarks/toy_motion_learnability.py MODEL [--temporal-positions] [--steps 150]
    python benchmarks/toy_motion_learnability.py MODEL --motion-vector 1.0 --steps 50
    python benchmarks/toy_motion_learnability.py toy --variance 2 4 8

``--motion-vector S`` asks how strong the text signal must be: it adds +v to the text states of every "moves left"
caption and -v to every "moves right" one, at every token, v a fixed random direction of S times the mean token
norm (so the two captions' states differ by 2 S norms where the text encoder alone separates them by a tenth).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from toy_motion_word_arms import restrict_motions, with_temporal_positions
from toy_temporal_probe import model_pipe, probe_latents, word_use

from dreamvideo.toy import world
from dreamvideo.toy.model import toy_unet
from dreamvideo.training import prediction_target


def explained_variance(pipe, jitter: float | None, per_motion: int = 40) -> float:
    """Share of the latent variance (per frame and cell, across clips) that the 11 motion classes' means explain.

    With ``per_motion`` clips a class, about 1 / ``per_motion`` of it is sampling noise.
    """
    rng = np.random.default_rng(0)
    latents = []
    for motion in world.MOTIONS:
        sprites = [
            world.Sprite(str(rng.choice(world.SHAPES)), str(rng.choice(list(world.COLORS))))
            for _ in range(per_motion)
        ]
        specs = [
            world._random_spec(rng, s, str(rng.choice(world.BACKGROUNDS)), motion, anchor_jitter=jitter)
            for s in sprites
        ]
        latents.append(probe_latents(pipe, specs, sample=True))
    total = torch.cat(latents).var(0, unbiased=False).sum()
    within = sum(((z - z.mean(0)) ** 2).mean(0).sum() for z in latents) / len(latents)
    return float(1 - within / total)


def frame_difference_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE of the frame-to-frame differences of prediction and target (b, c, f, h, w): the motion's error alone.

    What every frame shares (background, colour, shape) cancels; at high noise the v-target is about -x0, so the
    differences are the sprite's moves (the appearance-debiased temporal losses of MotionDirector and VMC).
    """
    return F.mse_loss(pred.diff(dim=2), target.diff(dim=2))


def with_motion_vector(pipe, scale: float) -> None:
    """Make ``pipe.encode_text`` add +v ("moves left") or -v ("moves right") to every token's state.

    v: a fixed random direction (seed 0) with ``scale`` times the mean token norm of the first captions encoded.
    """
    encode, vector = pipe.encode_text, []

    def encode_with_vector(prompts, device=None):
        states = encode(prompts, device)
        if not vector:
            v = torch.randn(states.shape[-1], generator=torch.Generator().manual_seed(0))
            vector.append(v / v.norm() * states.norm(dim=-1).mean() * scale)
        sign = [1.0 if "moves left" in p else -1.0 if "moves right" in p else 0.0 for p in prompts]
        return states + torch.tensor(sign).view(-1, 1, 1) * vector[0]

    pipe.encode_text = encode_with_vector


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="'toy' or a base-model folder (its unet/, scheduler/, text_encoder/)")
    p.add_argument(
        "--variance", type=float, nargs="*", help="only print the explained variance at these jitters"
    )
    p.add_argument("--anchor-jitter", type=float, default=0.0)
    p.add_argument("--t-min", type=int, default=900)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--temporal-positions", action="store_true", help="the model was trained with them")
    p.add_argument(
        "--motion-vector", type=float, default=0.0, help="add +-S token norms to left / right text states"
    )
    p.add_argument(
        "--motion-loss-weight",
        type=float,
        default=0.0,
        help="add this times the frame-difference MSE (pretrain --motion-loss-weight)",
    )
    args = p.parse_args(argv)
    pipe = model_pipe(args.model)
    if args.variance is not None:
        for jitter in [None, *args.variance]:
            print(
                f"anchor jitter {jitter}: motion explains {explained_variance(pipe, jitter):.1%} of the variance"
            )
        return 0
    if args.temporal_positions:
        weights = pipe.unet.state_dict()
        pipe.unet = with_temporal_positions(toy_unet)()
        pipe.unet.load_state_dict(weights)
    restrict_motions(["moves left", "moves right"])
    if args.motion_vector:
        with_motion_vector(pipe, args.motion_vector)
    unet, scheduler = pipe.unet.requires_grad_(True), pipe.scheduler
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    rng, losses = np.random.default_rng(5), []
    torch.manual_seed(5)
    for step in range(args.steps + 1):
        if step % 50 == 0:
            unet.eval()
            use = word_use(pipe, 32, anchor_jitter=args.anchor_jitter)
            motion = {t: f"{row['motion']:+.1%}" for t, row in use.items()}
            print(
                f"step {step}: motion-word use {motion}, colour at t=999 {use[999]['color']:+.1%}", flush=True
            )
            if losses:
                print(f"  loss, last 50 steps: {np.mean(losses[-50:]):.4f}", flush=True)
            unet.train()
        if step == args.steps:
            break
        specs = [world.sample_pretraining_spec(rng, args.anchor_jitter) for _ in range(args.batch)]
        latents, text = (
            probe_latents(pipe, specs, sample=True),
            pipe.encode_text([world.caption(s) for s in specs]),
        )
        noise = torch.randn_like(latents)
        t = torch.randint(args.t_min, scheduler.config.num_train_timesteps, (args.batch,))
        pred = unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=text).sample
        target = prediction_target(scheduler, latents, noise, t)
        loss = F.mse_loss(pred, target) + args.motion_loss_weight * frame_difference_mse(pred, target)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
