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
from diffusers.optimization import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup
from torch import nn
from tqdm.auto import tqdm

from dreamvideo import distributed
from dreamvideo.fileio import DreamVideoError, load_safetensors, read_json, save_safetensors, write_json


class TrainingDiverged(DreamVideoError):
    pass


# ``callback(stage, step, total, loss)`` of the running thread, set by :func:`report_progress`.
_PROGRESS: ContextVar[Callable[[str, int, int, float | None], None] | None] = ContextVar(
    "progress", default=None
)


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
        offset_noise: strength of the offset added to the noise, per sample, channel and frame (section 4: 0.1).
        checkpoint_every: save a resumable checkpoint every this many steps (and at the end).
        max_grad_norm: gradient clipping; ``None`` (the authors') disables it.
        seed: seed of every random choice of the stage.
        mixed_precision: ``"auto"`` (the authors': fp16 on GPUs, none on CPUs), ``"no"``, ``"bf16"`` or ``"fp16"``
            autocast of the forward pass; trainables stay fp32, and fp16 uses a gradient scaler.
        gradient_checkpointing: recompute UNet activations in the backward pass to save memory.
        warmup_steps: linear learning-rate warm-up (the authors': 10).
        lr_schedule: after the warm-up, ``"constant"`` (the authors') or ``"cosine"`` decay to 0 at ``steps``.
        adam_beta2: AdamW's second-moment decay.
        base_train_mode: keep the frozen base in train mode while training, so its dropout is active (the authors').
    """

    steps: int
    lr: float
    batch_size: int = 1
    weight_decay: float = 0.0
    offset_noise: float = 0.1
    checkpoint_every: int = 100
    max_grad_norm: float | None = None
    seed: int = 0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    warmup_steps: int = 10
    base_train_mode: bool = True
    lr_schedule: str = "constant"
    adam_beta2: float = 0.999

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
    """Denoising loss at a random timestep (section 4), optionally only inside ``mask``.

    The target is what the base's scheduler says the UNet predicts: the noise (``epsilon``), the velocity
    (``v_prediction``) or the clean latents (``sample``).

    Args:
        latents: clean latents (batch, channels, frames, h, w); images are 1-frame videos.
        text_embeds: text features (batch, tokens, dim).
        offset_noise: strength of the offset noise, one draw per sample, channel and frame (the authors' code).
        mask: optional (batch, 1, frames or 1, h, w) binary mask at latent resolution; the masked squared error is
            averaged over all elements of each sample, as the authors do.
    """
    b, c, f = latents.shape[:3]
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    if offset_noise:  # offset noise: a random constant shift per sample, channel and frame
        noise = noise + offset_noise * torch.randn((b, c, f, 1, 1), generator=generator).to(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=text_embeds).sample.float()
    err = (pred - prediction_target(scheduler, latents, noise, t).float()) ** 2
    if mask is not None:
        err = err * mask.to(err)
    return err.mean()


def prediction_target(
    scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The UNet's regression target under the scheduler's ``prediction_type``."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":  # v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho, 2022)
        return scheduler.get_velocity(latents, noise, t)
    if kind == "sample":
        return latents
    raise DreamVideoError(f"unsupported prediction_type {kind!r} in the base's scheduler config")


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


def resolve_precision(mixed_precision: str, device: torch.device) -> str:
    """``"auto"`` is the authors' choice: fp16 autocast on GPUs, full precision on CPUs."""
    if mixed_precision == "auto":
        return "fp16" if device.type == "cuda" else "no"
    if mixed_precision not in ("no", "bf16", "fp16"):
        raise DreamVideoError(f"mixed_precision must be auto, no, bf16 or fp16, got {mixed_precision!r}")
    return mixed_precision


def latest_checkpoint(folder: Path) -> Path | None:
    steps = sorted(folder.glob("step-*/trainer.json"))
    return steps[-1].parent if steps else None


def tensors_finite(tensors: list[torch.Tensor] | Any) -> bool:
    """Whether every tensor holds only finite values.

    Args:
        tensors: an iterable of tensors.
    """
    return all(bool(torch.isfinite(t.detach()).all()) for t in tensors)


def checkpoint_is_finite(folder: Path) -> bool:
    """Whether every tensor of every ``.safetensors`` file of a checkpoint folder is finite.

    Args:
        folder: a ``step-NNNNNN`` folder.
    """
    for file in folder.glob("*.safetensors"):
        try:
            tensors, _ = load_safetensors(file)
        except DreamVideoError:
            return False
        if not tensors_finite(t for t in tensors.values() if t.is_floating_point()):
            return False
    return True


def last_good_checkpoint(folder: Path) -> Path | None:
    """The latest checkpoint whose weights are all finite (older releases could save diverged ones).

    Args:
        folder: a stage's checkpoint folder.
    """
    for trainer_json in sorted(folder.glob("step-*/trainer.json"), reverse=True):
        if checkpoint_is_finite(trainer_json.parent):
            return trainer_json.parent
    return None


class Trainer:
    """Optimise ``params`` on ``loss_fn`` for ``config.steps`` steps with checkpoints that resume exactly.

    Under ``accelerate launch`` / ``torchrun`` each process draws its own batches (seed + process index), the
    gradients are averaged over processes after ``backward()`` (DDP's update), and only the main process writes
    checkpoints.

    Args:
        name: stage name (progress bar and messages).
        params: the trainable tensors; nothing else is given to the optimiser. Or optimiser groups
            ``{"params": [...], "lr_scale": s}``, each trained at ``s`` times ``config.lr``.
        loss_fn: ``loss_fn(step, generator) -> loss`` draws its own batch from ``generator``.
        save_weights: ``save_weights(folder)`` writes the stage's result files (same format as the final output).
        load_weights: ``load_weights(folder)`` restores them from a checkpoint.
        checkpoint_dir: where ``step-NNNNNN/`` checkpoints go.
        config: the :class:`StageConfig`.
        on_checkpoint: optional ``callback(step, folder)`` after each checkpoint is written.
        preview_every: call ``on_preview(step)`` every this many steps (0: never), on the main process only.
        on_preview: e.g. render a preview video; its time is not counted in :attr:`seconds`.
        run_id: recorded in every checkpoint; resuming refuses a checkpoint of another run.
        on_step: optional ``callback(step)`` after each optimiser update (e.g. an EMA of the weights).
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
        run_id: str | None = None,
        train_mode: tuple[nn.Module, ...] = (),
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        groups = params if params and isinstance(params[0], dict) else [{"params": params, "lr_scale": 1.0}]
        params = [p for g in groups for p in g["params"]]
        if not params:
            raise ValueError(f"{name}: nothing to train")
        self.name, self.params, self.loss_fn, self.config = name, params, loss_fn, config
        self.on_step = on_step
        self.group_lrs = [config.lr * g.get("lr_scale", 1.0) for g in groups]
        self.save_weights, self.load_weights, self.on_checkpoint = save_weights, load_weights, on_checkpoint
        self.checkpoint_dir = Path(checkpoint_dir)
        self.preview_every, self.on_preview = preview_every, on_preview
        self.run_id = run_id
        self.device = torch.device(device)
        self.optimizer = torch.optim.AdamW(
            [{"params": g["params"], "lr": lr} for g, lr in zip(groups, self.group_lrs, strict=True)],
            lr=config.lr,
            betas=(0.9, config.adam_beta2),
            weight_decay=config.weight_decay,
        )
        self.lr_schedule = self._schedule()
        self.precision = resolve_precision(config.mixed_precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.train_mode = train_mode if config.base_train_mode else ()
        self.rank = distributed.process_index()
        self.generator = torch.Generator().manual_seed(
            config.seed + self.rank
        )  # each process its own batches
        distributed.broadcast_parameters(params)
        self.losses: list[float] = []
        self.step = 0
        self.seconds = 0.0

    def _schedule(self, last_step: int = -1) -> torch.optim.lr_scheduler.LambdaLR:
        """diffusers' warm-up schedule of ``config.lr_schedule``, positioned after ``last_step``."""
        c = self.config
        if c.lr_schedule == "cosine":
            return get_cosine_schedule_with_warmup(
                self.optimizer, c.warmup_steps, c.steps, last_epoch=last_step
            )
        if c.lr_schedule == "constant":
            return get_constant_schedule_with_warmup(self.optimizer, c.warmup_steps, last_step)
        raise ValueError(f"{self.name}: unknown lr_schedule {c.lr_schedule!r} (choose constant or cosine)")

    def _autocast(self):
        if self.precision == "no":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def resume(self) -> bool:
        """Load the latest checkpoint if any; return whether one was found."""
        folder = latest_checkpoint(self.checkpoint_dir)
        if not distributed.same_everywhere(str(folder)):
            raise DreamVideoError(
                f"{self.name}: the processes see different checkpoints in {self.checkpoint_dir}; "
                "put --out on a filesystem shared by every machine"
            )
        if folder is None:
            return False
        info = read_json(folder / "trainer.json")
        saved_run = info.get("run_id")
        if self.run_id and saved_run and saved_run != self.run_id:
            raise DreamVideoError(
                f"{folder}: checkpoint of run {saved_run}, not of this run ({self.run_id}); "
                "pass --overwrite to start again"
            )
        if (
            info.get("config", {}).get("lr") != self.config.lr
            or info.get("config", {}).get("seed") != self.config.seed
        ):
            print(f"note: resuming {self.name} from {folder} with changed settings")
        self.load_weights(folder)
        tensors, meta = load_safetensors(folder / "optimizer.safetensors")
        rng = tensors.pop("generator_state")
        ranks = {k: tensors.pop(k) for k in [k for k in tensors if k.startswith("generator_state.")]}
        self.optimizer.load_state_dict(unflatten_optimizer_state(tensors, json.loads(meta["optimizer"])))
        for group, lr in zip(self.optimizer.param_groups, self.group_lrs, strict=True):
            group["lr"] = group["initial_lr"] = lr  # the saved groups carry the old lr: --lr of this run wins
            group["weight_decay"], group["betas"] = self.config.weight_decay, (0.9, self.config.adam_beta2)
        if self.rank == 0:
            self.generator.set_state(rng)
        elif f"generator_state.rank{self.rank}" in ranks:
            self.generator.set_state(ranks[f"generator_state.rank{self.rank}"])
        else:  # saved by fewer processes: a fresh stream for this one
            self.generator.manual_seed(self.config.seed + self.rank + 7919 * info["step"])
        self.step, self.losses, self.seconds = info["step"], info["losses"], info.get("seconds", 0.0)
        self.lr_schedule = self._schedule(self.step - 1)
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
            {
                "step": self.step,
                "losses": self.losses,
                "seconds": self.seconds,
                "config": self.config.to_dict(),
                "run_id": self.run_id,
                "finite": True,
            },
            staging / "trainer.json",
        )
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.step, folder)
        distributed.wait_for_everyone()
        return folder

    @property
    def done(self) -> bool:
        return self.step >= self.config.steps

    def train(self, progress: bool = True, stop: Callable[[], bool] | None = None) -> list[float]:
        """Run the remaining steps; raise :class:`TrainingDiverged` (keeping earlier checkpoints) on a NaN loss.

        Args:
            progress: show a progress bar.
            stop: checked after every step; when it says so, a checkpoint is written and training returns early
                (``done`` stays false; ``resume`` continues).
        """
        bar = tqdm(
            total=self.config.steps,
            initial=self.step,
            desc=self.name,
            disable=not progress or self.rank > 0,
            dynamic_ncols=True,
        )
        modes = [m.training for m in self.train_mode]
        report = _PROGRESS.get()  # the web app's progress callback, if one is set (see ``report_progress``)
        if report is not None:
            report(self.name, self.step, self.config.steps, None)
        try:
            for module in self.train_mode:  # the frozen base in train mode: its dropout is active
                module.train()
            while self.step < self.config.steps:
                self._one_step()
                recent = sum(self.losses[-20:]) / len(self.losses[-20:])
                bar.update(1)
                bar.set_postfix(loss=f"{recent:.4f}")
                halt = stop is not None and stop() and not self.done
                if self.step % self.config.checkpoint_every == 0 or self.done or halt:
                    self._check_after_update()
                    self.checkpoint()
                if (
                    self.on_preview
                    and self.preview_every
                    and self.step % self.preview_every == 0
                    and self.rank == 0
                ):
                    self._preview()
                if report is not None:
                    report(self.name, self.step, self.config.steps, recent)
                if halt:
                    break
        finally:
            for module, mode in zip(self.train_mode, modes, strict=True):
                module.train(mode)
            bar.close()
        return self.losses

    def _one_step(self) -> None:
        start = time.perf_counter()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(
            devices=devices
        ):  # the base's dropout: one seed per step, so resume is exact
            torch.manual_seed(self.config.seed * 1_000_003 + 7919 * self.rank + self.step)
            self._forward_backward()
        self.scaler.step(self.optimizer)  # an fp16 step with inf gradients is skipped and the scale lowered
        self.scaler.update()
        self.lr_schedule.step()
        if not tensors_finite(self.params):
            self._diverged(f"weights are not finite after the update of step {self.step + 1}")
        if self.on_step is not None:
            self.on_step(self.step)
        self.step += 1
        self.seconds += time.perf_counter() - start

    def _forward_backward(self) -> None:
        with self._autocast():
            loss = self.loss_fn(self.step, self.generator)
        value = distributed.mean_loss(loss)  # loss.item(), averaged over processes
        if not math.isfinite(value):
            self._diverged(f"loss is {value} at step {self.step + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        distributed.average_gradients(self.params)
        if self.config.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.losses.append(round(value, 6))

    def _preview(self) -> None:
        for module in self.train_mode:
            module.eval()
        try:
            self.on_preview(self.step)
        finally:
            for module in self.train_mode:
                module.train()

    def _check_after_update(self) -> None:
        """Before saving: the loss at the updated weights must be finite (diverged weights are never saved).

        The probe draws its batch from a separate generator, so training's random stream is unchanged.
        """
        probe = torch.Generator().manual_seed(self.config.seed + 104729 * (self.step + 1))
        with torch.no_grad(), self._autocast():
            value = distributed.mean_loss(self.loss_fn(self.step, probe))
        if not math.isfinite(value):
            self._diverged(f"the loss at the weights of step {self.step} is {value}")

    def _diverged(self, what: str) -> None:
        """Stop with :class:`TrainingDiverged`, naming a checkpoint whose weights really are finite."""
        last = last_good_checkpoint(self.checkpoint_dir)
        hint = "then --resume" if last else "then run again"
        raise TrainingDiverged(
            f"{self.name}: {what}; stopped. Last good checkpoint: {last or 'none'} (try a lower learning rate, "
            f"{hint})"
        )
