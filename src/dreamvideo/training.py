"""The training loop shared by every stage, method and baseline: loss, optimiser, checkpoints, resume, NaN guard."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from dreamvideo import distributed
from dreamvideo.fileio import DreamVideoError, load_safetensors, read_json, save_safetensors, write_json


class TrainingDiverged(DreamVideoError):
    pass


# ``callback(stage, step, total, loss)`` of the running thread, set by :func:`report_progress`.
_PROGRESS: ContextVar[Callable[[str, int, int, float | None], None] | None] = ContextVar("progress", default=None)


@contextmanager
def report_progress(callback: Callable[[str, int, int, float | None], None]) -> Iterator[None]:
    """Call ``callback(stage, step, total, loss)`` at the start of every training stage run inside the block (loss
    ``None``) and after each of its steps (loss averaged over the last 20 steps), in this thread only.

    The callback may raise to stop training (e.g. a cancel button); the exception propagates out of the stage
    function with the earlier checkpoints kept. Used by the web app's progress bars.

    Args:
        callback: ``callback(stage, step, total, loss)``; ``stage`` is the trainer's name ("textual inversion").
    """
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


@dataclass
class StageConfig:
    """Settings of one training stage.

    Args:
        steps: optimisation steps.
        lr: AdamW learning rate.
        batch_size: samples per step.
        weight_decay: AdamW weight decay (authors: 0).
        offset_noise: strength of the per-channel offset added to the noise (section 4: 0.1).
        checkpoint_every: save a resumable checkpoint every this many steps (and at the end).
        max_grad_norm: gradient clipping; ``None`` disables it.
        seed: seed of every random choice of the stage.
        mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"`` autocast of the forward pass (trainables stay fp32).
        gradient_checkpointing: recompute UNet activations in the backward pass to save memory.
    """

    steps: int
    lr: float
    batch_size: int = 1
    weight_decay: float = 0.0
    offset_noise: float = 0.1
    checkpoint_every: int = 100
    max_grad_norm: float | None = 1.0
    seed: int = 0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diffusion_loss(
    unet: nn.Module,
    scheduler: Any,
    latents: torch.Tensor,
    text_embeds: torch.Tensor,
    generator: torch.Generator,
    offset_noise: float = 0.1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Epsilon-MSE denoising loss at a random timestep (section 4), optionally only inside ``mask``.

    Args:
        latents: clean latents (batch, channels, frames, h, w); images are 1-frame videos.
        text_embeds: text features (batch, tokens, dim).
        mask: optional (batch, 1, frames or 1, h, w) weights in [0, 1] at latent resolution.
    """
    b, c = latents.shape[:2]
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    if offset_noise:  # offset noise: a random constant shift per sample and channel
        noise = noise + offset_noise * torch.randn((b, c, 1, 1, 1), generator=generator).to(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=text_embeds).sample.float()
    target = scheduler.get_velocity(latents, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
    err = (pred - target.float()) ** 2
    if mask is None:
        return err.mean()
    mask = mask.expand_as(err).to(err)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)


def flatten_optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def latest_checkpoint(folder: Path) -> Path | None:
    steps = sorted(folder.glob("step-*/trainer.json"))
    return steps[-1].parent if steps else None


class Trainer:
    """Optimise ``params`` on ``loss_fn`` for ``config.steps`` steps with checkpoints that resume exactly.

    Under ``accelerate launch`` / ``torchrun`` each process draws its own batches (seed + process index), the
    gradients are averaged over processes after ``backward()`` (DDP's update), and only the main process writes
    checkpoints.

    Args:
        name: stage name (progress bar and messages).
        params: the trainable tensors; nothing else is given to the optimiser.
        loss_fn: ``loss_fn(step, generator) -> loss`` draws its own batch from ``generator``.
        save_weights: ``save_weights(folder)`` writes the stage's result files (same format as the final output).
        load_weights: ``load_weights(folder)`` restores them from a checkpoint.
        checkpoint_dir: where ``step-NNNNNN/`` checkpoints go.
        config: the :class:`StageConfig`.
        on_checkpoint: optional ``callback(step, folder)`` after each checkpoint is written.
        preview_every: call ``on_preview(step)`` every this many steps (0: never), on the main process only.
        on_preview: e.g. render a preview video; its time is not counted in :attr:`seconds`.
    """

    def __init__(
        self,
        name: str,
        params: list[nn.Parameter],
        loss_fn: Callable[[int, torch.Generator], torch.Tensor],
        save_weights: Callable[[Path], None],
        load_weights: Callable[[Path], None],
        checkpoint_dir: Path,
        config: StageConfig,
        on_checkpoint: Callable[[int, Path], None] | None = None,
        device: torch.device | str = "cpu",
        preview_every: int = 0,
        on_preview: Callable[[int], None] | None = None,
    ) -> None:
        if not params:
            raise ValueError(f"{name}: nothing to train")
        self.name, self.params, self.loss_fn, self.config = name, params, loss_fn, config
        self.save_weights, self.load_weights, self.on_checkpoint = save_weights, load_weights, on_checkpoint
        self.checkpoint_dir = Path(checkpoint_dir)
        self.preview_every, self.on_preview = preview_every, on_preview
        self.device = torch.device(device)
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.rank = distributed.process_index()
        self.generator = torch.Generator().manual_seed(config.seed + self.rank)  # each process its own batches
        distributed.broadcast_parameters(params)
        self.losses: list[float] = []
        self.step = 0
        self.seconds = 0.0

    def _autocast(self):
        precision = self.config.mixed_precision
        if precision == "no":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def resume(self) -> bool:
        """Load the latest checkpoint if any; return whether one was found."""
        folder = latest_checkpoint(self.checkpoint_dir)
        if not distributed.same_everywhere(str(folder)):
            raise DreamVideoError(f"{self.name}: the processes see different checkpoints in {self.checkpoint_dir}; "
                                  "put --out on a filesystem shared by every machine")
        if folder is None:
            return False
        info = read_json(folder / "trainer.json")
        if info.get("config", {}).get("lr") != self.config.lr or info.get("config", {}).get("seed") != self.config.seed:
            print(f"note: resuming {self.name} from {folder} with changed settings")
        self.load_weights(folder)
        tensors, meta = load_safetensors(folder / "optimizer.safetensors")
        rng = tensors.pop("generator_state")
        ranks = {k: tensors.pop(k) for k in [k for k in tensors if k.startswith("generator_state.")]}
        self.optimizer.load_state_dict(unflatten_optimizer_state(tensors, json.loads(meta["optimizer"])))
        if self.rank == 0:
            self.generator.set_state(rng)
        elif f"generator_state.rank{self.rank}" in ranks:
            self.generator.set_state(ranks[f"generator_state.rank{self.rank}"])
        else:  # saved by fewer processes: a fresh stream for this one
            self.generator.manual_seed(self.config.seed + self.rank + 7919 * info["step"])
        self.step, self.losses, self.seconds = info["step"], info["losses"], info.get("seconds", 0.0)
        return True

    def checkpoint(self) -> Path:
        folder = self.checkpoint_dir / f"step-{self.step:06d}"
        rng_states = distributed.gather_generator_states(self.generator)
        if not distributed.is_main_process():
            distributed.wait_for_everyone()  # the main process writes the (identical) weights
            return folder
        staging = self.checkpoint_dir / f".step-{self.step:06d}.partial"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        self.save_weights(staging)
        tensors, meta = flatten_optimizer_state(self.optimizer)
        tensors["generator_state"] = rng_states[0]
        tensors.update({f"generator_state.rank{r}": state for r, state in enumerate(rng_states) if r})
        save_safetensors(tensors, staging / "optimizer.safetensors", {"optimizer": json.dumps(meta)})
        write_json(
            {"step": self.step, "losses": self.losses, "seconds": self.seconds, "config": self.config.to_dict()},
            staging / "trainer.json",
        )
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.step, folder)
        distributed.wait_for_everyone()
        return folder

    def train(self, progress: bool = True) -> list[float]:
        """Run the remaining steps; raise :class:`TrainingDiverged` (keeping earlier checkpoints) on a NaN loss."""
        bar = tqdm(total=self.config.steps, initial=self.step, desc=self.name, disable=not progress or self.rank > 0,
                   dynamic_ncols=True)
        report = _PROGRESS.get()
        if report is not None:
            report(self.name, self.step, self.config.steps, None)
        while self.step < self.config.steps:
            start = time.perf_counter()
            with self._autocast():
                loss = self.loss_fn(self.step, self.generator)
            value = distributed.mean_loss(loss)  # loss.item(), averaged over processes
            if not math.isfinite(value):
                last = latest_checkpoint(self.checkpoint_dir)
                raise TrainingDiverged(
                    f"{self.name}: loss is {value} at step {self.step + 1}; stopped. Last good checkpoint: "
                    f"{last or 'none'} (try a lower learning rate, then --resume)"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(self.params)
            if self.config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
            self.optimizer.step()
            self.step += 1
            self.seconds += time.perf_counter() - start
            self.losses.append(round(value, 6))
            recent = sum(self.losses[-20:]) / len(self.losses[-20:])
            bar.update(1)
            bar.set_postfix(loss=f"{recent:.4f}")
            if self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps:
                self.checkpoint()
            if self.on_preview and self.preview_every and self.step % self.preview_every == 0 and self.rank == 0:
                self.on_preview(self.step)
            if report is not None:
                report(self.name, self.step, self.config.steps, recent)
        bar.close()
        return self.losses
