"""The shared training loop: the NaN guard never saves diverged weights and names a checkpoint that is finite;
the diffusion loss (mask loss, offset noise)."""

from __future__ import annotations

import json

import pytest
import torch

from dreamvideo import training
from dreamvideo.fileio import load_safetensors, save_safetensors
from dreamvideo.training import StageConfig, Trainer, TrainingDiverged, checkpoint_is_finite


def _trainer(tmp_path, lr=1e30, steps=6):
    p = torch.nn.Parameter(torch.ones(4))

    def loss_fn(step, generator):
        if step < 2:  # zero gradient: Adam leaves the weights where they are
            return (p * 0).sum() + 1.0
        return (
            p**2
        ).sum()  # the first real update (lr 1e30) sends the weights to ~1e30, whose loss overflows

    def save(folder):
        save_safetensors({"p": p.detach()}, folder / "w.safetensors")

    def load(folder):
        with torch.no_grad():
            p.copy_(load_safetensors(folder / "w.safetensors")[0]["p"])

    config = StageConfig(steps=steps, lr=lr, checkpoint_every=1, max_grad_norm=None)
    return Trainer("toy", [p], loss_fn, save, load, tmp_path / "ckpt", config, run_id="r1"), p


def test_diverged_weights_are_never_saved_and_the_named_checkpoint_is_finite(tmp_path):
    trainer, _ = _trainer(tmp_path)
    with pytest.raises(TrainingDiverged) as info:
        trainer.train(progress=False)
    message = str(info.value)
    assert "step-000002" in message and "--resume" in message
    for folder in (tmp_path / "ckpt").glob("step-*"):
        w = load_safetensors(folder / "w.safetensors")[0]["p"]
        assert torch.isfinite(w).all() and bool((w.float() ** 2).sum().isfinite()), folder
    assert not (tmp_path / "ckpt" / "step-000003").exists()


def test_resume_from_the_named_checkpoint_with_a_lower_lr_succeeds(tmp_path):
    trainer, _ = _trainer(tmp_path)
    with pytest.raises(TrainingDiverged):
        trainer.train(progress=False)
    again, p = _trainer(tmp_path, lr=1e-2)
    assert again.resume() and again.step == 2
    again.train(progress=False)
    assert again.step == 6 and torch.isfinite(p).all()


def test_non_finite_weights_after_an_update_stop_at_once(tmp_path):
    p = torch.nn.Parameter(torch.ones(2))

    def loss_fn(step, generator):
        return p.sum()

    config = StageConfig(steps=3, lr=float("inf"), checkpoint_every=100, max_grad_norm=None)
    trainer = Trainer("toy", [p], loss_fn, lambda f: None, lambda f: None, tmp_path / "c", config)
    with pytest.raises(TrainingDiverged, match="weights are not finite after the update of step 1"):
        trainer.train(progress=False)


def test_checkpoint_records_run_id_and_resume_refuses_another_run(tmp_path):
    trainer, _ = _trainer(tmp_path, lr=1e-3, steps=2)
    trainer.train(progress=False)
    saved = json.loads((tmp_path / "ckpt" / "step-000002" / "trainer.json").read_text())
    assert saved["run_id"] == "r1"
    assert checkpoint_is_finite(tmp_path / "ckpt" / "step-000002")
    other, _ = _trainer(tmp_path, lr=1e-3, steps=2)
    other.run_id = "r2"
    with pytest.raises(Exception, match="checkpoint of run r1"):
        other.resume()


def _probe_trainer(tmp_path, config: StageConfig, modules=()):
    """A one-parameter trainer that records the lr, the gradient norm and the modules' mode at every step."""
    p = torch.nn.Parameter(torch.full((4,), 10.0))
    seen = []

    def loss_fn(step, generator):
        if torch.is_grad_enabled():
            seen.append(
                {"lr": trainer.optimizer.param_groups[0]["lr"], "train": [m.training for m in modules]}
            )
        return (p**2).sum()  # gradient norm 40: clipping at 1.0 would be visible

    trainer = Trainer(
        "probe",
        [p],
        loss_fn,
        lambda f: None,
        lambda f: None,
        tmp_path / "c",
        config,
        train_mode=tuple(modules),
    )
    return trainer, p, seen


def test_authors_regime_warm_up_then_constant_lr_no_clipping_base_in_train_mode(tmp_path):
    base = torch.nn.Dropout(0.1).eval()
    trainer, p, seen = _probe_trainer(tmp_path, StageConfig(steps=14, lr=1e-2, checkpoint_every=100), [base])
    trainer.train(progress=False)
    lrs = [s["lr"] for s in seen]
    assert lrs[:11] == pytest.approx([1e-2 * k / 10 for k in range(11)]) and lrs[11:] == pytest.approx(
        [1e-2] * 3
    )
    assert (
        all(s["train"] == [True] for s in seen) and not base.training
    )  # train mode while training, then back


def test_gradients_are_clipped_only_when_asked(tmp_path, monkeypatch):
    calls = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(
        torch.nn.utils, "clip_grad_norm_", lambda params, norm: calls.append(norm) or real(params, norm)
    )
    _probe_trainer(tmp_path / "a", StageConfig(steps=3, lr=1e-2))[0].train(progress=False)
    assert calls == []  # the authors' default: no clipping
    _probe_trainer(tmp_path / "b", StageConfig(steps=3, lr=1e-2, max_grad_norm=1.0))[0].train(progress=False)
    assert calls == [1.0] * 3


def test_resume_continues_the_warm_up(tmp_path):
    config = StageConfig(steps=6, lr=1e-2, checkpoint_every=3, warmup_steps=10)
    first, _, _ = _probe_trainer(tmp_path, StageConfig(**{**config.to_dict(), "steps": 3}))
    first.train(progress=False)
    second, _, seen = _probe_trainer(tmp_path, config)
    assert second.resume() and second.step == 3
    second.train(progress=False)
    assert [s["lr"] for s in seen] == pytest.approx([1e-2 * k / 10 for k in (3, 4, 5)])


def test_mixed_precision_auto_is_fp16_on_gpus_and_none_on_cpus():
    from dreamvideo.training import resolve_precision

    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert resolve_precision("auto", torch.device("cpu")) == "no"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(Exception, match="mixed_precision"):
        resolve_precision("fp8", torch.device("cpu"))


def test_mask_loss_counts_only_inside_the_mask():
    class Echo(torch.nn.Module):  # predicts a fixed field so the loss is checkable by hand
        def forward(self, x, t, encoder_hidden_states):
            return type("Out", (), {"sample": torch.ones_like(x)})()

    from diffusers import DDIMScheduler

    latents = torch.zeros(1, 1, 1, 2, 2)
    mask = torch.tensor([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 2, 2)
    g = torch.Generator().manual_seed(0)
    loss = training.diffusion_loss(Echo(), DDIMScheduler(), latents, torch.zeros(1, 1, 1), g, 0.0, mask)
    noise = torch.randn((1, 1, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    # the authors' normalisation: the masked squared error averaged over all 4 elements of the sample
    assert loss.item() == pytest.approx(((1 - noise.flatten()[0]) ** 2).item() / 4, rel=1e-5)


def test_offset_noise_adds_a_constant_per_sample_channel_and_frame(monkeypatch):
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, t, encoder_hidden_states):
            return type("Out", (), {"sample": x})()

    from diffusers import DDIMScheduler

    class Sched(DDIMScheduler):
        def add_noise(self, original, noise, timesteps):
            seen.append(noise)
            return noise

    latents = torch.zeros(64, 2, 4, 8, 8)
    training.diffusion_loss(
        Spy(), Sched(), latents, torch.zeros(64, 1, 1), torch.Generator().manual_seed(0), 0.0
    )
    training.diffusion_loss(
        Spy(), Sched(), latents, torch.zeros(64, 1, 1), torch.Generator().manual_seed(0), 1.0
    )
    plain, offset = (n.mean(dim=(3, 4)).var().item() for n in seen)
    assert plain < 0.05 and offset > 0.5  # per-(sample, channel, frame) means spread by the offset term
    frame_means = seen[1].mean(dim=(3, 4))  # one offset per frame, as the authors draw: frames differ
    assert frame_means.var(dim=2).mean() > 0.5


def _grouped_trainer(tmp_path, lrs: list):
    """A cosine-schedule trainer with two parameter groups (the second at half the lr) recording its lrs."""
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))

    def save(folder):
        save_safetensors({"a": a.detach(), "b": b.detach()}, folder / "w.safetensors")

    def load(folder):
        w = load_safetensors(folder / "w.safetensors")[0]
        with torch.no_grad():
            a.copy_(w["a"]), b.copy_(w["b"])

    config = StageConfig(
        steps=8, lr=0.1, checkpoint_every=100, warmup_steps=2, lr_schedule="cosine", adam_beta2=0.99
    )
    groups = [{"params": [a], "lr_scale": 1.0}, {"params": [b], "lr_scale": 0.5}]
    trainer = Trainer(
        "toy",
        groups,
        lambda step, generator: (a**2).sum() + (b**2).sum(),
        save,
        load,
        tmp_path / "ckpt",
        config,
        on_step=lambda step: lrs.append([g["lr"] for g in trainer.optimizer.param_groups]),
    )
    return trainer


def test_cosine_schedule_groups_on_step_and_an_early_stop_that_resumes(tmp_path):
    whole: list = []
    _grouped_trainer(tmp_path / "whole", whole).train(progress=False)
    # the lr of the next step, after each update: diffusers' warm-up (step 1 at 0, step 2 at half), the full lr,
    # then cosine decay to 0 at the last step; the second group at half
    assert [round(x[0], 6) for x in whole[:2]] == [0.05, 0.1] and whole[-1][0] == pytest.approx(0.0)
    assert all(x[0] > y[0] for x, y in zip(whole[1:], whole[2:], strict=False))
    assert all(abs(lb - la / 2) < 1e-12 for la, lb in whole)
    stopped: list = []
    first = _grouped_trainer(tmp_path / "split", stopped)
    first.train(progress=False, stop=lambda: first.step >= 3)
    assert first.step == 3 and not first.done and (tmp_path / "split/ckpt/step-000003").is_dir()
    second = _grouped_trainer(tmp_path / "split", stopped)
    assert second.resume() and second.step == 3
    assert second.optimizer.param_groups[0]["betas"] == (0.9, 0.99)
    second.train(progress=False)
    assert second.done and sum(stopped, []) == pytest.approx(sum(whole, []))  # the schedule continues
