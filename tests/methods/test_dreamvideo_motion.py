"""DreamVideo's motion learner end to end on a tiny model: what trains, files, resume, previews, errors."""

from __future__ import annotations

import shutil

import pytest
import torch
from learning_helpers import dreamvideo_motion_settings as motion_settings
from learning_helpers import dreamvideo_subject_settings as subject_settings

from dreamvideo import adapters as ad
from dreamvideo import training
from dreamvideo.fileio import DreamVideoError, load_safetensors, read_json
from dreamvideo.methods import learn_motion, learn_subject
from dreamvideo.methods import motion as motion_learning
from dreamvideo.pipeline import DreamVideoPipeline
from dreamvideo.training import StageConfig, TrainingDiverged


@pytest.fixture()
def pipe(tiny_base):
    return DreamVideoPipeline.from_pretrained(str(tiny_base))


def test_motion_uses_frame_embeddings_and_dropouts(pipe, tiny_data, tmp_path, monkeypatch):
    recorded, texts = [], []
    real_set = ad.set_adapter_condition

    def spy_set(unet, name, embeds, strength=1.0):
        recorded.append(embeds.clone())
        real_set(unet, name, embeds, strength)

    real_loss = training.diffusion_loss

    def spy_loss(unet, scheduler, latents, text, *a, **k):
        texts.append(text.clone())
        assert latents.shape[2] == 4  # all frames of the clip
        return real_loss(unet, scheduler, latents, text, *a, **k)

    monkeypatch.setattr(ad, "set_adapter_condition", spy_set)
    monkeypatch.setattr(motion_learning, "diffusion_loss", spy_loss)
    settings = motion_settings(stage=StageConfig(steps=24, lr=1e-3, batch_size=2, checkpoint_every=24))
    out = learn_motion(pipe, tiny_data["motion"], tmp_path / "m", settings, progress=False)

    from dreamvideo.data import load_motion_videos
    from dreamvideo.methods.motion import frame_embeddings

    videos = load_motion_videos(tiny_data["motion"], 16).videos
    table = torch.cat([frame_embeddings(pipe, v) for v in videos])
    embeds = torch.cat(recorded)
    zero = embeds.abs().sum(1) == 0
    assert 0.25 < zero.float().mean() < 0.75  # appearance dropout 0.5
    for e in embeds[~zero]:
        assert (table - e).abs().amax(1).min() < 1e-6  # each is the embedding of a training frame
    empty = pipe.encode_text([""])[0]
    dropped = torch.tensor([torch.equal(t, empty) for batch in texts for t in batch])
    assert 0.25 < dropped.float().mean() < 0.75  # caption dropout 0.5
    info = read_json(out / "motion.json")
    assert info["motion_adapter"]["sites"] == ["attn1", "attn2", "ff"]
    assert info["motion_adapter"]["condition_dim"] == pipe.condition_dim


def test_motion_without_image_encoder_is_a_clear_error(tiny_data, tmp_path):
    from conftest import build_tiny_base

    base = build_tiny_base(tmp_path / "noenc", image_encoder=False)
    pipe = DreamVideoPipeline.from_pretrained(str(base))
    with pytest.raises(DreamVideoError, match="image encoder"):
        learn_motion(pipe, tiny_data["motion"], tmp_path / "m", motion_settings(), progress=False)
    assert not (tmp_path / "m").exists()
    out = learn_motion(
        pipe, tiny_data["motion"], tmp_path / "m", motion_settings(appearance_guidance=False), progress=False
    )
    assert read_json(out / "motion.json")["motion_adapter"]["condition_dim"] is None


def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_base, tiny_data, tmp_path, monkeypatch):
    settings = motion_settings(stage=StageConfig(steps=4, lr=1e-2, batch_size=1, checkpoint_every=2))

    def learn(out, resume=False):
        pipe = DreamVideoPipeline.from_pretrained(str(tiny_base))
        return learn_motion(pipe, tiny_data["motion"], out, settings, resume=resume, progress=False)

    full = learn(tmp_path / "full")

    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed after the step-2 checkpoint
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        learn(tmp_path / "cut")
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert not (tmp_path / "cut" / "motion.json").exists()
    with pytest.raises(DreamVideoError, match="--resume"):
        learn(tmp_path / "cut")
    learn(tmp_path / "cut", resume=True)
    a = load_safetensors(full / "motion_adapter.safetensors")[0]
    b = load_safetensors(tmp_path / "cut" / "motion_adapter.safetensors")[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(pipe, tiny_data, tmp_path, monkeypatch):
    real = motion_learning.diffusion_loss
    calls = {"n": 0}

    def nan_after_two(*a, **k):
        calls["n"] += (
            torch.is_grad_enabled()
        )  # training steps only, not the no-grad check before a checkpoint
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] > 2 else loss

    monkeypatch.setattr(motion_learning, "diffusion_loss", nan_after_two)
    with pytest.raises(TrainingDiverged, match="step-000002"):
        learn_motion(pipe, tiny_data["motion"], tmp_path / "m", motion_settings(), progress=False)
    assert (tmp_path / "m" / "checkpoints/motion_adapter/step-000002/motion_adapter.safetensors").is_file()
    assert not (tmp_path / "m" / "motion.json").exists()


def test_finished_output_is_never_clobbered(pipe, tiny_data, tmp_path):
    out = learn_motion(pipe, tiny_data["motion"], tmp_path / "m", motion_settings(), progress=False)
    before = (out / "motion_adapter.safetensors").read_bytes()
    with pytest.raises(DreamVideoError, match="--overwrite"):
        learn_motion(pipe, tiny_data["motion"], out, motion_settings(), progress=False)
    assert (out / "motion_adapter.safetensors").read_bytes() == before
    with pytest.raises(DreamVideoError, match="no videos|not found"):
        learn_motion(pipe, tmp_path / "missing", tmp_path / "m2", motion_settings(), progress=False)
    assert not (tmp_path / "m2").exists()


def test_generate_with_subject_checkpoint_motion_and_both(pipe, tiny_base, tiny_data, tmp_path):
    subject = learn_subject(pipe, tiny_data["subject"], tmp_path / "s", subject_settings(), progress=False)
    motion = learn_motion(
        DreamVideoPipeline.from_pretrained(str(tiny_base)),
        tiny_data["motion"],
        tmp_path / "m",
        motion_settings(),
        progress=False,
    )
    gen = DreamVideoPipeline.from_pretrained(str(tiny_base))
    kw = dict(num_frames=4, num_inference_steps=3, progress=False)
    plain = gen("a dog", generator=torch.Generator().manual_seed(0), **kw).frames[0]
    gen.load_subject(subject, step=2)
    early = ad.adapter_state_dict(gen.unet, "identity")
    gen.load_subject(subject)
    assert any(not torch.equal(early[k], v) for k, v in ad.adapter_state_dict(gen.unet, "identity").items())
    gen.load_motion(motion)
    from PIL import Image

    image = Image.open(next((tiny_data["subject"] / "images").iterdir()))
    both = gen(
        "a <sks> dog", appearance_image=image, generator=torch.Generator().manual_seed(0), **kw
    ).frames[0]
    assert both.shape == plain.shape == (4, 16, 16, 3) and both.dtype == plain.dtype
    with pytest.raises(DreamVideoError, match="no identity_adapter checkpoint at step 3"):
        gen.load_subject(subject, step=3)
    shutil.rmtree(subject / "checkpoints")
    gen.unload("motion")
    assert ad.adapter_names(gen.unet) == ["identity"]


def test_previews_are_written_every_n_steps_and_do_not_change_training(tiny_base, tiny_data, tmp_path):
    from dreamvideo.methods import PreviewSettings

    def run(out, preview):
        pipe = DreamVideoPipeline.from_pretrained(str(tiny_base))
        learn_motion(pipe, tiny_data["motion"], out, motion_settings(), progress=False, preview=preview)
        return load_safetensors(out / "motion_adapter.safetensors")[0]

    plain = run(tmp_path / "plain", None)
    previewed = run(tmp_path / "previewed", PreviewSettings(every=2, prompt="a ball", num_frames=4, steps=2))
    assert sorted(p.name for p in (tmp_path / "previewed" / "previews").iterdir()) == [
        f"motion_adapter-step-00000{s}.{ext}" for s in (2, 4) for ext in ("gif", "mp4")
    ]
    assert not (tmp_path / "plain" / "previews").exists()
    assert plain.keys() == previewed.keys()
    assert all(torch.equal(plain[k], previewed[k]) for k in plain)  # previews draw no training randomness


def test_motion_adapter_lowers_the_velocity_loss_on_a_v_prediction_base(tiny_vpred_base, tiny_data, tmp_path):
    from dreamvideo.data import load_motion_videos

    pipe = DreamVideoPipeline.from_pretrained(str(tiny_vpred_base))
    settings = motion_settings(
        stage=StageConfig(steps=30, lr=3e-3, batch_size=2, checkpoint_every=30),
        appearance_guidance=False,
        caption_dropout=0.0,
    )
    out = learn_motion(pipe, tiny_data["motion"], tmp_path / "m", settings, progress=False)
    pipe.load_motion(out)
    frames = torch.stack([v[:4] for v in load_motion_videos(tiny_data["motion"], 16).videos])
    latents = pipe.encode_video(frames, torch.Generator().manual_seed(0))
    text = pipe.encode_text(["a red star moves left", "a blue dog moves right"])

    def loss() -> float:  # the same 16 draws of noise and timesteps each time
        return sum(
            training.diffusion_loss(
                pipe.unet, pipe.scheduler, latents, text, torch.Generator().manual_seed(s)
            ).item()
            for s in range(16)
        )

    trained = loss()
    ad.enable_adapter(pipe.unet, "motion", False)
    assert trained < 0.9 * loss()


def test_motion_adapter_trains_on_a_bf16_base_with_fp32_trainables(tiny_base, tiny_data, tmp_path):
    pipe = DreamVideoPipeline.from_pretrained(str(tiny_base), torch_dtype=torch.bfloat16)
    settings = motion_settings(
        stage=StageConfig(steps=3, lr=1e-3, batch_size=1, checkpoint_every=3, mixed_precision="bf16")
    )
    out = learn_motion(pipe, tiny_data["motion"], tmp_path / "m", settings, progress=False)
    tensors = load_safetensors(out / "motion_adapter.safetensors")[0]
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in tensors.values())
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if ".up." in k)  # trained
