"""The shared training loop: the NaN guard never saves diverged weights and names a checkpoint that is finite."""

from __future__ import annotations

import json

import pytest
import torch

from dreamvideo.fileio import load_safetensors, save_safetensors
from dreamvideo.training import StageConfig, Trainer, TrainingDiverged, checkpoint_is_finite


def _trainer(tmp_path, lr=1e30, steps=6):
    p = torch.nn.Parameter(torch.ones(4))

    def loss_fn(step, generator):
        if step < 2:  # zero gradient: Adam leaves the weights where they are
            return (p * 0).sum() + 1.0
        return (p**2).sum()  # the first real update (lr 1e30) sends the weights to ~1e30, whose loss overflows

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
