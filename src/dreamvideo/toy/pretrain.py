"""Pretrain the toy base model on the procedural world, in resumable phases: CLIP, the VAE, the UNet's text encoder, the UNet.

    python -m dreamvideo.toy.pretrain --out toy_train                 # about 8 minutes on one H100
    python -m dreamvideo.toy.pretrain --out toy_train --resume        # continue after an interruption
    python -m dreamvideo.toy.pretrain --out /tmp/t --device cpu --steps-scale 0.001 --workers 0  # smoke test
    python -m dreamvideo.toy.pretrain --out more --init-from toy --unet-steps 1200 --unet-batch 16  # train on

``--init-from`` warm-starts from a saved base model (``toy``: the shipped one): CLIP and the VAE are taken as they
are; the UNet's text encoder (``--text-steps``) and the UNet train further (the UNet's EMA restarts from the loaded
weights).

Writes ``OUT/model`` (the diffusers-layout base model, see :func:`dreamvideo.toy.model.save_base_model`),
``OUT/checkpoints/<phase>/step-N/`` (the shared :class:`~dreamvideo.training.Trainer`'s checkpoints: safetensors +
JSON, no pickle; the two newest are kept), ``OUT/train_log.json``, ``OUT/loss_curve.png``,
``OUT/vae_reconstruction.png`` and ``OUT/samples.png`` (generated videos, one row of frames per prompt).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dreamvideo.fileio import (
    DreamVideoError,
    load_safetensors,
    read_json,
    save_safetensors,
    write_json,
)
from dreamvideo.toy import world
from dreamvideo.toy.model import (
    TOY_MODEL_DIR,
    build_toy_tokenizer,
    clip_pixels,
    num_params,
    save_base_model,
    toy_clip,
    toy_scheduler,
    toy_unet,
    toy_vae,
    vae_pixels,
)
from dreamvideo.training import StageConfig, Trainer, latest_checkpoint, prediction_target

PHASES = ("clip", "vae", "unet", "text")  # the index seeds each phase's data: new phases go last


class PretrainError(DreamVideoError):
    pass


class StopRun(Exception):
    """Raised after the checkpoint once ``--max-steps`` or ``--time-limit`` is reached."""


# ----------------------------------------------------------------------------- data


class WorldClips(IterableDataset):
    """Endless random pretraining clips ``(frames uint8 (F,H,W,3) or one frame (H,W,3), caption)``.

    Args:
        seed: list of ints seeding the generator; the worker id is appended so workers differ.
        single_frame: yield one random frame of each clip instead of the clip.
        with_masks: yield ``(frames, sprite masks (F,H,W) bool, caption)`` (clips only); the same clips either way.
        anchor_jitter: where the sprite's path lies (:func:`dreamvideo.toy.world.fit_anchor`).
    """

    def __init__(
        self,
        seed: list[int],
        single_frame: bool = False,
        with_masks: bool = False,
        anchor_jitter: float | None = None,
    ) -> None:
        self.seed, self.single_frame, self.with_masks = seed, single_frame, with_masks
        self.anchor_jitter = anchor_jitter

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        info = get_worker_info()
        rng = np.random.default_rng([*self.seed, 0 if info is None else info.id])
        while True:
            spec = world.sample_pretraining_spec(rng, self.anchor_jitter)
            clip = world.render_clip(spec)
            frames = clip.frames
            if self.single_frame:
                frames = frames[rng.integers(len(frames))]
            if self.with_masks:
                yield torch.from_numpy(frames), torch.from_numpy(clip.masks), world.caption(spec)
            else:
                yield torch.from_numpy(np.ascontiguousarray(frames)), world.caption(spec)


def make_loader(
    seed: list[int],
    batch_size: int,
    workers: int,
    single_frame: bool,
    pin: bool,
    with_masks: bool = False,
    anchor_jitter: float | None = None,
) -> Iterator:
    extra = {"prefetch_factor": 4} if workers > 0 else {}
    clips = WorldClips(seed, single_frame, with_masks, anchor_jitter)
    loader = DataLoader(clips, batch_size=batch_size, num_workers=workers, pin_memory=pin, **extra)
    return iter(loader)


# ----------------------------------------------------------------------------- one resumable phase


def phase_trainer(
    name: str,
    args: argparse.Namespace,
    modules: dict[str, nn.Module],
    groups: list[dict[str, Any]],
    steps: int,
    lr: float,
    loss_fn: Callable[[int, torch.Generator], torch.Tensor],
    budget: Budget,
    on_step: Callable[[int], None] | None = None,
    ema: EMAModel | None = None,
) -> Trainer:
    """The shared :class:`~dreamvideo.training.Trainer` for one phase, checkpointing in ``OUT/checkpoints/<name>/``.

    AdamW (betas 0.9 / 0.99, weight decay 0.01), gradients clipped at 1, a linear warm-up then diffusers' cosine
    schedule; bf16 autocast on GPUs. The two newest ``step-N/`` checkpoints are kept.

    Args:
        name: phase name.
        args: the command line (checkpoint interval, warm-up, device, seed).
        modules: everything whose state is checkpointed, by name (e.g. ``{"unet": ...}``).
        groups: optimiser groups ``{"params": [...], "lr_scale": s}`` (lr times s).
        steps, lr: schedule length and peak learning rate.
        loss_fn: ``loss_fn(step, generator) -> loss`` of one batch.
        budget: counts the steps towards ``--max-steps``.
        on_step: e.g. clamp a parameter, after each update.
        ema: diffusers' ``EMAModel`` of the trained weights, checkpointed with them.
    """

    def save_weights(folder: Path) -> None:
        weights = {f"{m}.{k}": v for m, module in modules.items() for k, v in module.state_dict().items()}
        meta = {}
        if ema is not None:
            state = ema.state_dict()
            weights |= {f"ema.{i}": p for i, p in enumerate(state.pop("shadow_params"))}
            meta["ema"] = json.dumps(state)
        save_safetensors(weights, folder / "weights.safetensors", meta)

    def load_weights(folder: Path) -> None:
        weights, meta = load_safetensors(folder / "weights.safetensors")
        for m, module in modules.items():
            part = {k[len(m) + 1 :]: v for k, v in weights.items() if k.startswith(f"{m}.")}
            try:
                module.load_state_dict(part)
            except RuntimeError as err:
                raise PretrainError(f"{folder}: checkpoint does not fit the model ({err})") from err
        if ema is not None:
            state = json.loads(meta["ema"])
            state["shadow_params"] = [weights[f"ema.{i}"] for i in range(len(ema.shadow_params))]
            ema.load_state_dict(state)
            ema.to(args.device)

    def after_step(step: int) -> None:
        budget.steps += 1
        if on_step is not None:
            on_step(step)
        if ema is not None:
            ema.step([p for g in groups for p in g["params"]])

    config = StageConfig(
        steps=steps,
        lr=lr,
        weight_decay=0.01,
        checkpoint_every=args.checkpoint_every,
        max_grad_norm=1.0,
        seed=args.seed,
        mixed_precision="bf16" if torch.device(args.device).type == "cuda" else "no",
        warmup_steps=min(args.warmup, max(1, steps // 10)),
        base_train_mode=False,
        lr_schedule="cosine",
        adam_beta2=0.99,
    )
    return Trainer(
        name,
        groups,
        loss_fn,
        save_weights,
        load_weights,
        args.out / "checkpoints" / name,
        config,
        on_checkpoint=_keep_newest_two,
        device=args.device,
        on_step=after_step,
    )


def _keep_newest_two(step: int, folder: Path) -> None:
    for old in sorted(folder.parent.glob("step-*"))[:-2]:
        shutil.rmtree(old)


def run_phase(
    trainer: Trainer, batches: list, make_batches: Callable[[int], Iterator], budget: Budget
) -> Trainer:
    """Resume ``trainer`` and train its remaining steps on ``make_batches(step)``; ``StopRun`` when the budget ends.

    ``batches`` is the one-element list the trainer's ``loss_fn`` draws from (filled here, after resuming).
    """
    if trainer.resume() and trainer.done:
        return trainer
    batches[:] = [make_batches(trainer.step)]
    trainer.train(stop=budget.over)
    if not trainer.done:
        raise StopRun(f"{trainer.name} step {trainer.step}")
    return trainer


def checkpoint_ema_unet(run: Path) -> nn.Module:
    """The EMA UNet of the newest UNet checkpoint of the run in ``run`` (e.g. to measure a run still training).

    Args:
        run: a pretraining ``--out`` folder.
    """
    newest = latest_checkpoint(run / "checkpoints" / "unet")
    if newest is None:
        raise PretrainError(f"{run / 'checkpoints' / 'unet'}: no UNet checkpoint")
    weights, _ = load_safetensors(newest / "weights.safetensors")
    unet = toy_unet()
    unet.load_state_dict({k.removeprefix("unet."): v for k, v in weights.items() if k.startswith("unet.")})
    with torch.no_grad():  # EMAModel's shadow parameters, in the order of ``parameters()``
        for i, param in enumerate(unet.parameters()):
            param.copy_(weights[f"ema.{i}"])
    return unet


class Budget:
    """Stops a run after ``max_steps`` optimisation steps or ``time_limit`` seconds (both optional)."""

    def __init__(self, max_steps: int | None, time_limit: float | None) -> None:
        self.max_steps, self.time_limit = max_steps, time_limit
        self.steps, self.start = 0, time.perf_counter()

    def over(self) -> bool:
        if self.max_steps is not None and self.steps >= self.max_steps:
            return True
        return self.time_limit is not None and time.perf_counter() - self.start > self.time_limit


# ----------------------------------------------------------------------------- the phases


def _steps(n: int, args: argparse.Namespace) -> int:
    return max(1, round(n * args.steps_scale))


def _seed(args: argparse.Namespace, phase: str, step: int) -> list[int]:
    return [args.seed, PHASES.index(phase), step]


def _tokenize(tokenizer, captions: list[str], device: torch.device) -> torch.Tensor:
    return tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)


def train_on_frames(
    name: str,
    module: nn.Module,
    step_fn: Callable[[Any], torch.Tensor],
    args: argparse.Namespace,
    budget: Budget,
    on_step: Callable[[int], None] | None = None,
) -> Trainer:
    """Train all of ``module`` on batches of single frames with ``--{name}-steps/-lr/-batch`` (CLIP, the VAE)."""
    batches: list[Iterator] = []
    params = [{"params": list(module.parameters()), "lr_scale": 1.0}]
    steps, lr, batch = (
        _steps(getattr(args, f"{name}_steps"), args),
        getattr(args, f"{name}_lr"),
        getattr(args, f"{name}_batch"),
    )
    pin = torch.device(args.device).type == "cuda"
    trainer = phase_trainer(
        name,
        args,
        {name: module},
        params,
        steps,
        lr,
        lambda step, generator: step_fn(next(batches[0])),
        budget,
        on_step=on_step,
    )

    def loader(step: int) -> Iterator:
        return make_loader(_seed(args, name, step), batch, args.workers, True, pin)

    return run_phase(trainer, batches, loader, budget)


def train_clip(clip: nn.Module, tokenizer, args: argparse.Namespace, budget: Budget) -> Trainer:
    """Symmetric InfoNCE on (random frame, caption) pairs; identical captions in a batch count as matches."""
    device = torch.device(args.device)
    clip.train()

    def step_fn(batch) -> torch.Tensor:
        frames, captions = batch
        ids = _tokenize(tokenizer, captions, device)
        img = clip.visual_projection(
            clip.vision_model(pixel_values=clip_pixels(frames.to(device))).pooler_output
        )
        txt = clip.text_projection(clip.text_model(input_ids=ids).pooler_output)
        logits = (
            clip.logit_scale.exp() * F.normalize(img.float(), dim=-1) @ F.normalize(txt.float(), dim=-1).T
        )
        same = (ids[:, None, :] == ids[None, :, :]).all(-1).float()
        target = same / same.sum(1, keepdim=True)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    def clamp_scale(step: int) -> None:
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))

    return train_on_frames("clip", clip, step_fn, args, budget, on_step=clamp_scale)


def train_vae(vae: nn.Module, args: argparse.Namespace, budget: Budget) -> Trainer:
    """L1 + MSE reconstruction of frames plus a small KL; then ``scaling_factor`` = 1 / std of the latents.

    The latent statistics are measured once, after the last step, and kept in ``OUT/checkpoints/vae_stats.json``.
    """
    device = torch.device(args.device)
    vae.train()

    def step_fn(batch) -> torch.Tensor:
        x = vae_pixels(batch[0].to(device))
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample()).sample.float()
        mean, logvar = posterior.mean.float(), posterior.logvar.float()
        kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).flatten(1).sum(1).mean() / x[0].numel()
        return (rec - x).abs().mean() + (rec - x).square().mean() + args.kl_weight * kl

    trainer = train_on_frames("vae", vae, step_fn, args, budget)
    vae.eval()
    stats_file = args.out / "checkpoints" / "vae_stats.json"
    if not stats_file.is_file():
        write_json(measure_vae(vae, args), stats_file)
    vae.register_to_config(scaling_factor=read_json(stats_file)["scaling_factor"])
    return trainer


@torch.no_grad()
def measure_vae(vae: nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    """Latent statistics on fresh frames (-> ``scaling_factor`` = 1 / std) and the reconstruction error.

    Also writes ``OUT/vae_reconstruction.png`` (true frames above their reconstructions).
    """
    device = torch.device(args.device)
    count = min(1024, 16 * args.vae_batch)
    batches = make_loader(_seed(args, "vae", 10**9), min(64, count), 0, True, False)
    frames = torch.cat([next(batches)[0] for _ in range(max(1, count // 64))])
    latents, recs = [], []
    for chunk in frames.split(256):
        posterior = vae.encode(vae_pixels(chunk.to(device))).latent_dist
        latents.append(posterior.sample().float())
        recs.append(vae.decode(posterior.mode()).sample.float().clamp(-1, 1))
    latents, rec = torch.cat(latents), torch.cat(recs)
    std = latents.std().item()
    _save_reconstructions(frames[:8], rec[:8], args.out / "vae_reconstruction.png")
    return {
        "scaling_factor": round(1.0 / std, 6),
        "latent_std": std,
        "latent_channel_means": latents.mean((0, 2, 3)).tolist(),
        "reconstruction_l1_0_255": (rec - vae_pixels(frames.to(device))).abs().mean().item() * 127.5,
    }


def _caption_pairs(seed: list[int], batch: int) -> Iterator[tuple[list[str], list[str]]]:
    """Endless batches of (captions, the same captions with one word each swapped), the kinds taken in turn."""
    rng = np.random.default_rng(seed)
    while True:
        specs = [world.sample_pretraining_spec(rng) for _ in range(batch)]
        kinds = [world.WORD_KINDS[i % len(world.WORD_KINDS)] for i in range(batch)]
        other = [world.swap_word(s, k, rng) for s, k in zip(specs, kinds, strict=True)]
        yield [world.caption(s) for s in specs], [world.caption(s) for s in other]


def _motion_captions(seed: list[int], batch: int) -> Iterator[tuple[list[str], list[str], list[int]]]:
    """Endless batches of (captions, the same with another motion, each caption's motion index; -1 for "")."""
    rng = np.random.default_rng(seed)
    while True:
        specs = [world.sample_pretraining_spec(rng) for _ in range(batch)]
        other = [world.swap_word(s, "motion", rng) for s in specs]
        empty = rng.random(batch) < 0.1  # caption dropout's empty prompt keeps its states
        yield (
            ["" if e else world.caption(s) for s, e in zip(specs, empty, strict=True)],
            [world.caption(s) for s in other],
            [-1 if e else world.MOTIONS.index(s.motion) for s, e in zip(specs, empty, strict=True)],
        )


def motion_offsets(states: torch.Tensor, scale: float) -> torch.Tensor:
    """One fixed random direction per motion (seed 0), of ``scale`` times the mean token norm of ``states``: (11, dim)."""
    v = torch.randn(len(world.MOTIONS), states.shape[-1], generator=torch.Generator().manual_seed(0))
    return (v / v.norm(dim=-1, keepdim=True) * states.norm(dim=-1).mean().cpu() * scale).to(states.device)


def word_moves(
    states: torch.Tensor, other: torch.Tensor, ids: torch.Tensor, other_ids: torch.Tensor
) -> torch.Tensor:
    """How far a swapped word moves a caption's text states, relative to them: (batch,).

    The UNet's cross-attention spreads over all tokens (about 1/16 each), so it reads a word through the average of
    the states from the word on (the encoder is causal; end-of-text and padding states included):
    ``d = |mean over those tokens of (states - other)| / |their mean state|``.

    Args:
        states, other: (batch, tokens, dim) last hidden states of the captions and of their one-word-swapped copies.
        ids, other_ids: their (batch, tokens) token ids.
    """
    # the swapped word and every later token
    after = (ids != other_ids).int().cummax(1).values[..., None].float()
    count = after.sum(1).clamp(min=1)
    moved = ((states - other) * after).sum(1) / count
    return moved.norm(dim=-1) / ((states * after).sum(1) / count).norm(dim=-1).clamp(min=1e-6)


def word_margin_loss(
    states: torch.Tensor,
    other: torch.Tensor,
    start: torch.Tensor,
    ids: torch.Tensor,
    other_ids: torch.Tensor,
    margin: float,
    keep: float,
) -> torch.Tensor:
    """``mean(relu(margin - word_moves(...))) + keep * MSE(states, start) / mean(start^2)``.

    Every swapped word must move the states by at least ``margin`` (:func:`word_moves`), while the states change
    little from ``start``, the captions' states before this phase.
    """
    hinge = F.relu(margin - word_moves(states, other, ids, other_ids)).mean()
    return hinge + keep * F.mse_loss(states, start) / start.pow(2).mean()


def train_text(text_encoder: nn.Module, tokenizer, args: argparse.Namespace, budget: Budget) -> Trainer:
    """Teach the UNet's text encoder to let every caption word move its states.

    The toy CLIP learnt its words contrastively from single frames, where a motion word says nothing: swapping a
    motion word moves the states (:func:`word_moves`) by 14 % on average, a colour word by 121 %, and the UNet picks
    the motion word up only after about a thousand steps (``docs/toy_model/recipe.md``). Two objectives:
    ``--text-offset S`` > 0 regresses the states onto their old values plus one fixed direction per motion word
    (:func:`motion_offsets`) on the tokens from the motion word on, so that the UNet keeps what it reads and gets a
    motion signal it picks up in tens of steps; otherwise :func:`word_margin_loss`. Captions only; ``text_encoder``
    is a ``CLIPTextTransformer``, and CLIP for the metrics (``clip/``) is not changed.
    """
    device = torch.device(args.device)
    start = copy.deepcopy(text_encoder).eval().requires_grad_(False)
    text_encoder.train().requires_grad_(True)
    batches: list[Iterator] = []
    if args.text_offset > 0:  # the scale of the offsets and of the loss, from the states before the phase
        with torch.no_grad():
            probe = start(
                input_ids=_tokenize(tokenizer, next(_caption_pairs([0], 64))[0], device)
            ).last_hidden_state
        offsets, mean_square = motion_offsets(probe, args.text_offset), probe.pow(2).mean()

    def loss_fn(step: int, generator: torch.Generator) -> torch.Tensor:
        if args.text_offset > 0:
            captions, other, motion = next(batches[0])
            ids, other_ids = _tokenize(tokenizer, captions, device), _tokenize(tokenizer, other, device)
            after = (ids != other_ids).int().cummax(1).values[..., None].float()  # the motion word on
            motion = torch.tensor(motion, device=device)
            after = after * (motion >= 0).float()[:, None, None]
            with torch.no_grad():
                target = (
                    start(input_ids=ids).last_hidden_state + after * offsets[motion.clamp(min=0)][:, None]
                )
            return F.mse_loss(text_encoder(input_ids=ids).last_hidden_state, target) / mean_square
        captions, other = next(batches[0])
        ids, other_ids = _tokenize(tokenizer, captions, device), _tokenize(tokenizer, other, device)
        with torch.no_grad():
            before = start(input_ids=ids).last_hidden_state
        states, swapped = text_encoder(input_ids=torch.cat([ids, other_ids])).last_hidden_state.chunk(2)
        return word_margin_loss(states, swapped, before, ids, other_ids, args.text_margin, args.text_keep)

    groups = [{"params": list(text_encoder.parameters()), "lr_scale": 1.0}]
    trainer = phase_trainer(
        "text",
        args,
        {"text": text_encoder, "start": start},
        groups,
        _steps(args.text_steps, args),
        args.text_lr,
        loss_fn,
        budget,
    )
    captions = _motion_captions if args.text_offset > 0 else _caption_pairs
    trainer = run_phase(
        trainer, batches, lambda step: captions(_seed(args, "text", step), args.text_batch), budget
    )
    text_encoder.eval().requires_grad_(False)
    return trainer


def video_noise(shape: torch.Size, shared: float, device: torch.device) -> torch.Tensor:
    """Unit-variance noise (b, c, f, h, w), a share ``shared`` of its variance common to all frames of a clip.

    VideoFusion's decomposed noise: ``sqrt(shared) * common + sqrt(1 - shared) * per_frame``; 0 gives independent
    frames (and draws exactly what ``torch.randn`` would).
    """
    own = torch.randn(shape, device=device)
    if shared == 0:
        return own
    common = torch.randn((*shape[:2], 1, *shape[3:]), device=device)
    return shared**0.5 * common + (1 - shared) ** 0.5 * own


def timestep_weights(num_timesteps: int, portion: float, multiplier: float) -> torch.Tensor:
    """Probabilities of each training timestep: the last ``portion`` of them ``multiplier`` times as likely.

    diffusers' "later" timestep bias (its SDXL training example). Sampling starts from pure noise at t = T - 1, where
    the layout and the path are decided; a model that learnt little there reads them from the noise.
    """
    weights = torch.ones(num_timesteps)
    weights[num_timesteps - round(portion * num_timesteps) :] *= multiplier
    return weights / weights.sum()


def train_unet(
    unet: nn.Module,
    vae: nn.Module,
    text_encoder: nn.Module,
    tokenizer,
    scheduler,
    args: argparse.Namespace,
    budget: Budget,
) -> tuple[Trainer, EMAModel]:
    """Text-to-video epsilon- or v-MSE (the scheduler's prediction type) with offset noise, caption dropout and some 1-frame videos; an EMA of the weights (diffusers' ``EMAModel``).

    ``text_encoder`` (a ``CLIPTextTransformer``) is trained too when ``--text-encoder-lr`` > 0: the toy CLIP learnt
    its words from single frames, so its motion words carry little (see ``docs/toy_model/recipe.md``). The EMA
    covers the UNet's parameters, then the text encoder's when it trains.
    """
    device = torch.device(args.device)
    train_text = args.text_encoder_lr > 0
    modules = {"unet": unet} | ({"text": text_encoder} if train_text else {})
    groups = [{"params": list(unet.parameters()), "lr_scale": 1.0}]
    if train_text:
        text_encoder.train().requires_grad_(True)
        groups.append(
            {"params": list(text_encoder.parameters()), "lr_scale": args.text_encoder_lr / args.unet_lr}
        )
    ema = EMAModel([p for g in groups for p in g["params"]], decay=args.ema_decay, foreach=True)
    unet.train()
    scaling = vae.config.scaling_factor
    weighted = args.foreground_weight != 1.0
    biased = args.timestep_bias_multiplier != 1.0
    weights = timestep_weights(
        scheduler.config.num_train_timesteps, args.timestep_bias_portion, args.timestep_bias_multiplier
    )
    rng: list[
        np.random.Generator
    ] = []  # caption dropout and 1-frame batches, seeded at the step resumed from

    def step_fn(batch) -> torch.Tensor:
        frames, masks, captions = batch if weighted else (batch[0], None, batch[1])
        b, f = frames.shape[:2]
        if (
            rng[0].random() < args.image_prob
        ):  # a batch of images as 1-frame videos, as the subject stage uses
            pick = torch.arange(b), torch.from_numpy(rng[0].integers(f, size=b))
            frames, masks, f = frames[pick][:, None], None if masks is None else masks[pick][:, None], 1
        captions = ["" if rng[0].random() < args.caption_dropout else c for c in captions]
        with torch.no_grad():
            x = vae_pixels(frames.to(device, non_blocking=True).flatten(0, 1))
            latents = vae.encode(x).latent_dist.sample().float() * scaling
            latents = latents.unflatten(0, (b, f)).transpose(1, 2)  # (b, 4, f, h, w)
        with torch.set_grad_enabled(train_text and torch.is_grad_enabled()):
            text = text_encoder(input_ids=_tokenize(tokenizer, captions, device)).last_hidden_state
        offset = torch.randn(b, latents.shape[1], 1, 1, 1, device=device)  # ModelScope's offset noise
        noise = video_noise(latents.shape, args.shared_noise, device) + args.offset_noise * offset
        if biased:
            t = torch.multinomial(weights, b, replacement=True).to(device)
        else:  # exactly the plain draw (old runs reproduce)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=device)
        noisy = scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=text).sample
        target = prediction_target(scheduler, latents, noise, t)
        if not weighted:
            return F.mse_loss(pred.float(), target)
        return foreground_weighted_mse(pred.float(), target, masks.to(device), args.foreground_weight)

    batches: list[Iterator] = []
    trainer = phase_trainer(
        "unet",
        args,
        modules,
        groups,
        _steps(args.unet_steps, args),
        args.unet_lr,
        lambda step, generator: step_fn(next(batches[0])),
        budget,
        ema=ema,
    )
    if args.export_only:
        trainer.resume()
        return trainer, ema

    def loader(step: int) -> Iterator:
        rng[:] = [np.random.default_rng(_seed(args, "unet", step))]
        pin = device.type == "cuda"
        seed = _seed(args, "unet", step)
        return make_loader(seed, args.unet_batch, args.workers, False, pin, weighted, args.anchor_jitter)

    return run_phase(trainer, batches, loader, budget), ema


def foreground_weighted_mse(
    pred: torch.Tensor, target: torch.Tensor, masks: torch.Tensor, weight: float
) -> torch.Tensor:
    """MSE with latent cells that hold any sprite pixel counted ``weight`` times, normalised by the mean weight.

    Args:
        pred, target: (b, c, f, h, w) latents.
        masks: (b, f, H, W) bool sprite masks at pixel resolution (H a multiple of h).
        weight: the sprite cells' weight (1: plain MSE).
    """
    cells = F.adaptive_max_pool2d(masks.flatten(0, 1)[:, None].float(), pred.shape[-2:])  # (b*f, 1, h, w)
    w = 1 + (weight - 1) * cells.unflatten(0, masks.shape[:2]).transpose(1, 2)  # (b, 1, f, h, w)
    return ((pred - target) ** 2 * w).mean() / w.mean()


# ----------------------------------------------------------------------------- previews and plots


def _strip_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Stack videos (F,H,W,3) as rows of frames, with 2-pixel white gutters."""
    padded = [np.pad(r, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate([np.concatenate(list(r), axis=1) for r in padded], axis=0)


def _save_reconstructions(frames: torch.Tensor, rec: torch.Tensor, path: Path) -> None:
    from PIL import Image

    rec = ((rec.float().clamp(-1, 1) + 1) * 127.5).round().byte().movedim(1, -1).cpu().numpy()
    Image.fromarray(_strip_rows([frames.numpy(), rec])).save(path)


@torch.no_grad()
def generate(
    unet,
    vae,
    text_encoder,
    tokenizer,
    scheduler,
    prompts: list[str],
    num_frames: int = world.NUM_FRAMES,
    steps: int = 25,
    guidance: float = 9.0,
    seed: int = 0,
) -> np.ndarray:
    """DDIM sampling with classifier-free guidance (no pipeline needed); returns uint8 (N,F,H,W,3).

    ``text_encoder``: the UNet's text encoder (a ``CLIPTextTransformer``, e.g. ``clip.text_model``).
    """
    device = next(unet.parameters()).device
    text = text_encoder(
        input_ids=_tokenize(tokenizer, prompts + [""] * len(prompts), device)
    ).last_hidden_state
    size = unet.config.sample_size
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(prompts), unet.config.in_channels, num_frames, size, size, generator=generator).to(
        device
    )
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        eps_cond, eps_uncond = unet(torch.cat([x, x]), t, encoder_hidden_states=text).sample.chunk(2)
        x = scheduler.step(eps_uncond + guidance * (eps_cond - eps_uncond), t, x).prev_sample
    latents = x.transpose(1, 2).flatten(0, 1) / vae.config.scaling_factor
    pixels = torch.cat([vae.decode(chunk).sample for chunk in latents.split(64)])
    pixels = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().movedim(1, -1)
    return pixels.unflatten(0, (len(prompts), num_frames)).cpu().numpy()


def save_samples(
    unet, vae, text_encoder, tokenizer, scheduler, path: Path, steps: int, seed: int = 0
) -> list[str]:
    """Generate a few training-distribution and held-out prompts; save them with the true renderings."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    specs = [world.sample_pretraining_spec(rng) for _ in range(3)] + world.held_out_specs(n=3, seed=seed)
    prompts = [world.caption(s) for s in specs]
    videos = generate(unet, vae, text_encoder, tokenizer, scheduler, prompts, steps=steps, seed=seed)
    rows = [
        v for spec, video in zip(specs, videos, strict=True) for v in (world.render_clip(spec).frames, video)
    ]
    Image.fromarray(_strip_rows(rows)).save(path)
    return prompts


def save_loss_curve(phases: dict[str, Trainer], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(phases), figsize=(5 * len(phases), 3.5))
    for ax, (name, phase) in zip(np.atleast_1d(axes), phases.items(), strict=True):
        losses = np.asarray(phase.losses)
        ax.plot(losses, alpha=0.3, lw=0.8)
        if len(losses) >= 50:
            ax.plot(np.arange(24, len(losses)), np.convolve(losses, np.ones(25) / 25, mode="valid"), lw=1.5)
        ax.set(title=f"{name} ({phase.seconds:.0f} s)", xlabel="step", ylabel="loss")
        if len(losses) and losses.min() > 0:
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- driver


def warm_start(base: str, clip: nn.Module, vae: nn.Module, unet: nn.Module, text_encoder: nn.Module) -> None:
    """Load CLIP, the VAE (with its ``scaling_factor``), the UNet and its text encoder of a saved base model.

    A folder without some of them (e.g. a candidate in ``docs/toy_model/recipe/`` with only ``unet/``) takes the
    others from the shipped model. ``text_encoder`` is a ``CLIPTextTransformer`` (the UNet's, which may differ from
    ``clip``'s text tower when it was trained with the UNet).
    """
    folder = TOY_MODEL_DIR if base == "toy" else Path(base)
    parts = {
        "clip": (clip, "clip/model.safetensors"),
        "vae": (vae, "vae/diffusion_pytorch_model.safetensors"),
        "unet": (unet, "unet/diffusion_pytorch_model.safetensors"),
        "text_encoder": (text_encoder, "text_encoder/model.safetensors"),
    }
    if not (folder / parts["unet"][1]).is_file():
        raise PretrainError(f"{folder}: no {parts['unet'][1]} to warm-start from")
    for name, (module, file) in parts.items():
        source = (
            folder if (folder / file).is_file() else TOY_MODEL_DIR
        )  # a UNet-only folder: the shipped CLIP/VAE
        weights, _ = load_safetensors(source / file)
        if name == "text_encoder":  # stored as a CLIPTextModel: keys under text_model.
            weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
        try:
            module.load_state_dict(weights)
        except RuntimeError as err:
            raise PretrainError(f"{source / file}: does not fit the toy {name} ({err})") from err
    vae_config = folder / "vae" / "config.json"
    vae_config = vae_config if vae_config.is_file() else TOY_MODEL_DIR / "vae" / "config.json"
    vae.register_to_config(scaling_factor=read_json(vae_config)["scaling_factor"])


def _guidance_to_save(args: argparse.Namespace) -> float | None:
    """``--default-guidance-scale``, else that of the ``--init-from`` base (a continuation samples as its base)."""
    from dreamvideo.pipeline import folder_default_guidance

    if args.default_guidance_scale is not None or args.init_from is None:
        return args.default_guidance_scale
    return folder_default_guidance(TOY_MODEL_DIR if args.init_from == "toy" else Path(args.init_from))


def pretrain(args: argparse.Namespace) -> Path | None:
    """Run (or resume) all phases and save the base model; ``None`` when ``--max-steps``/``--time-limit`` stopped it.

    Args:
        args: the parsed command line (see :func:`build_parser`).
    """
    out: Path = args.out
    if args.export_only and latest_checkpoint(out / "checkpoints" / "unet") is None:
        raise PretrainError(f"{out / 'checkpoints' / 'unet'}: no UNet checkpoint to export")
    if (out / "checkpoints").exists() and not (args.resume or args.export_only):
        raise PretrainError(
            f"{out / 'checkpoints'} exists: pass --resume to continue that run, or choose another --out"
        )
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution kernels once
    torch.manual_seed(args.seed)
    tokenizer = build_toy_tokenizer()
    clip, vae, unet, scheduler = (
        toy_clip(tokenizer).to(device),
        toy_vae().to(device),
        toy_unet().to(device),
        toy_scheduler(args.prediction_type, args.zero_snr, args.timestep_spacing, args.snr_shift),
    )
    text_encoder = copy.deepcopy(clip.text_model)  # the UNet's; trained with it when --text-encoder-lr > 0
    if args.init_from is not None:
        warm_start(args.init_from, clip, vae, unet, text_encoder)
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.max_steps, args.time_limit)
    phases: dict[str, Trainer] = {}
    try:
        if args.init_from is None:  # finished phases only load their checkpoints
            phases["clip"] = train_clip(clip, tokenizer, args, budget)
            phases["vae"] = train_vae(vae, args, budget)
        clip.eval().requires_grad_(False)
        vae.eval().requires_grad_(False)
        if "clip" in phases:
            text_encoder.load_state_dict(clip.text_model.state_dict())
        if args.text_steps > 0:
            phases["text"] = train_text(text_encoder, tokenizer, args, budget)
        text_encoder.eval().requires_grad_(False)
        phases["unet"], ema = train_unet(unet, vae, text_encoder, tokenizer, scheduler, args, budget)
    except StopRun as stop:
        print(f"stopped after {stop} (limit reached); continue with --resume")
        return None
    for name, phase in phases.items():
        print(
            f"{name}: {phase.step} steps in {phase.seconds:.1f} s ({1000 * phase.seconds / max(1, phase.step):.1f} ms/step)"
        )
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    trained_text = list(ema_text.parameters()) if args.text_encoder_lr > 0 else []
    ema.copy_to(list(ema_unet.parameters()) + trained_text)
    model_dir = save_base_model(
        out / "model",
        ema_unet.cpu(),
        vae.cpu(),
        clip.cpu(),
        tokenizer,
        scheduler,
        text_encoder=ema_text.cpu(),
        default_guidance_scale=args.default_guidance_scale,
    )
    ema_unet.to(device), vae.to(device), clip.to(device), ema_text.to(device)
    prompts = []
    if args.preview_steps > 0:
        prompts = save_samples(
            ema_unet, vae, ema_text, tokenizer, scheduler, out / "samples.png", args.preview_steps, args.seed
        )
    save_loss_curve(phases, out / "loss_curve.png")
    log = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"},
        "parameters": {"unet": num_params(unet), "vae": num_params(vae), "clip": num_params(clip)},
        "phases": {
            name: {
                "steps": p.step,
                "seconds": round(p.seconds, 2),
                "final_loss": float(np.mean(p.losses[-100:])),
                **(read_json(out / "checkpoints" / "vae_stats.json") if name == "vae" else {}),
                "losses": p.losses,
            }
            for name, p in phases.items()
        },
        "sample_prompts": prompts,
        "model_dir": str(model_dir),
    }
    write_json(log, out / "train_log.json")
    print(f"saved the base model to {model_dir}")
    return model_dir


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The command-line options; defaults are for one H100 (about 8 minutes in all).

    Args:
        parser: a parser to add the options to (default: a new one).
    """
    p = parser or argparse.ArgumentParser(
        prog="python -m dreamvideo.toy.pretrain", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (model/, checkpoints/, logs)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out (finished phases are skipped)"
    )
    p.add_argument(
        "--steps-scale", type=float, default=1.0, help="multiply every phase's steps (e.g. 0.001: smoke test)"
    )
    p.add_argument("--clip-steps", type=int, default=800)
    p.add_argument("--vae-steps", type=int, default=2500)
    p.add_argument("--unet-steps", type=int, default=1600)
    p.add_argument("--clip-batch", type=int, default=256)
    p.add_argument("--vae-batch", type=int, default=128)
    p.add_argument(
        "--unet-batch",
        type=int,
        default=64,
        help="videos per step (on an H200, 192 ran and 256 failed with 'CUDA error: invalid argument')",
    )
    p.add_argument("--clip-lr", type=float, default=5e-4)
    p.add_argument("--vae-lr", type=float, default=5e-4)
    p.add_argument("--unet-lr", type=float, default=3e-4)
    p.add_argument(
        "--warmup", type=int, default=200, help="warmup steps of each phase (at most a tenth of it)"
    )
    p.add_argument("--kl-weight", type=float, default=1e-4, help="VAE KL weight (per-sample KL sum / pixels)")
    p.add_argument(
        "--image-prob", type=float, default=0.15, help="share of UNet batches made of 1-frame videos"
    )
    p.add_argument("--caption-dropout", type=float, default=0.1, help="share of empty prompts (guidance)")
    p.add_argument("--offset-noise", type=float, default=0.1)
    p.add_argument(
        "--shared-noise",
        type=float,
        default=0.0,
        help="share of the UNet's training noise common to all frames (decomposed noise; sample likewise)",
    )
    p.add_argument(
        "--prediction-type",
        choices=("epsilon", "v_prediction"),
        default="epsilon",
        help="what the UNet predicts",
    )
    p.add_argument(
        "--zero-snr",
        action="store_true",
        help="rescale the schedule to zero terminal SNR (needs v_prediction)",
    )
    p.add_argument(
        "--timestep-spacing", choices=("leading", "trailing"), default="leading", help="DDIM step grid"
    )
    p.add_argument(
        "--snr-shift", type=float, default=0.0, help="log-SNR shift of the schedule (< 0: noisier)"
    )
    p.add_argument(
        "--timestep-bias-multiplier",
        type=float,
        default=1.0,
        help="UNet: draw the latest --timestep-bias-portion of the timesteps this many times as often (1: uniform)",
    )
    p.add_argument(
        "--timestep-bias-portion",
        type=float,
        default=0.25,
        help="share of the timesteps, the noisiest, to bias",
    )
    p.add_argument(
        "--text-steps",
        type=int,
        default=0,
        help="steps teaching the UNet's text encoder to let every caption word move its states, before the UNet (0: none)",
    )
    p.add_argument("--text-batch", type=int, default=64, help="captions per text-encoder step")
    p.add_argument("--text-lr", type=float, default=1e-3)
    p.add_argument(
        "--text-margin",
        type=float,
        default=1.0,
        help="how far (relative) one swapped caption word must move the states of the tokens from it onwards",
    )
    p.add_argument(
        "--text-offset",
        type=float,
        default=0.0,
        help="text phase: add one fixed direction per motion word, this many token norms, to the states from the "
        "word on, keeping the rest (0: the margin objective instead)",
    )
    p.add_argument(
        "--text-keep",
        type=float,
        default=1.0,
        help="weight of staying close to the text encoder's states before that phase (relative MSE)",
    )
    p.add_argument(
        "--text-encoder-lr",
        type=float,
        default=0.0,
        help="also train the UNet's text encoder at this learning rate (0: frozen; clip/ for metrics stays as is)",
    )
    p.add_argument(
        "--foreground-weight",
        type=float,
        default=1.0,
        help="weight of the loss on latent cells the sprite covers (1: plain MSE; the world renders the masks)",
    )
    p.add_argument(
        "--anchor-jitter",
        type=float,
        help="UNet clips: the sprite's path centred in the frame up to +-PX pixels (default: anywhere it fits)",
    )
    p.add_argument("--ema-decay", type=float, default=0.995, help="EMA of the UNet weights (saved)")
    p.add_argument(
        "--workers", type=int, default=min(12, max(0, (os.cpu_count() or 1) - 2)), help="rendering processes"
    )
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument(
        "--preview-steps",
        type=int,
        default=25,
        help="DDIM steps of the sample videos in samples.png (0: none)",
    )
    p.add_argument("--max-steps", type=int, help="stop this run after this many steps in all (resume later)")
    p.add_argument(
        "--time-limit", type=float, help="stop this run after about this many seconds (resume later)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--export-only",
        action="store_true",
        help="write model/ from the run's last UNet checkpoint (EMA weights) without training the UNet; same flags",
    )
    p.add_argument(
        "--init-from", help="warm start from a saved base model ('toy' or a folder): train the UNet only"
    )
    p.add_argument(
        "--default-guidance-scale",
        type=float,
        help="written to model/model_index.json for sampling without a guidance scale "
        "(default: that of the --init-from base; none, i.e. 9.0, from scratch)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.shared_noise < 1.0:
        print(f"pretrain: error: --shared-noise must be in [0, 1), got {args.shared_noise}", file=sys.stderr)
        return 2
    if args.timestep_bias_multiplier <= 0 or not 0.0 < args.timestep_bias_portion <= 1.0:
        print(
            "pretrain: error: --timestep-bias-multiplier must be > 0 and --timestep-bias-portion in (0, 1], got "
            f"{args.timestep_bias_multiplier} and {args.timestep_bias_portion}",
            file=sys.stderr,
        )
        return 2
    if args.zero_snr and args.prediction_type != "v_prediction":
        print("pretrain: error: --zero-snr needs --prediction-type v_prediction", file=sys.stderr)
        return 2
    if args.text_offset < 0:
        print(f"pretrain: error: --text-offset must be >= 0, got {args.text_offset}", file=sys.stderr)
        return 2
    if args.default_guidance_scale is not None and not 1.0 <= args.default_guidance_scale < float("inf"):
        print(
            f"pretrain: error: --default-guidance-scale must be >= 1, got {args.default_guidance_scale}",
            file=sys.stderr,
        )
        return 2
    try:
        # before any work, so that a bad model_index.json of the --init-from base stops here
        args.default_guidance_scale = _guidance_to_save(args)
        pretrain(args)
    except DreamVideoError as err:
        print(f"pretrain: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"interrupted; the last checkpoint is in {args.out / 'checkpoints'}: continue with --resume",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
