"""Subject and motion learning end to end on a tiny model: what trains, what stays frozen, files, resume, errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from dreamvideo import adapters as ad
from dreamvideo import training
from dreamvideo.fileio import DreamVideoError, load_safetensors, read_json
from dreamvideo.pipeline import DreamVideoPipeline
from dreamvideo.stages import MotionSettings, SubjectSettings, learn_motion, learn_subject
from dreamvideo.textual_inversion import TokenError
from dreamvideo.training import StageConfig, TrainingDiverged


def subject_settings(**kw) -> SubjectSettings:
    base = dict(
        token="<sks>",
        init_word="dog",
        textual_inversion=StageConfig(steps=4, lr=1e-2, batch_size=2, checkpoint_every=2),
        identity=StageConfig(steps=4, lr=1e-2, batch_size=2, checkpoint_every=2),
    )
    return SubjectSettings(**(base | kw))


def motion_settings(**kw) -> MotionSettings:
    base = dict(num_frames=4, stage=StageConfig(steps=4, lr=1e-2, batch_size=2, checkpoint_every=2))
    return MotionSettings(**(base | kw))


@pytest.fixture()
def pipe(tiny_base):
    return DreamVideoPipeline.from_pretrained(str(tiny_base))


def test_subject_trains_only_the_token_row_then_only_the_identity_adapter(pipe, tiny_base, tiny_data, tmp_path):
    table_before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    unet_before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    out = learn_subject(pipe, tiny_data["subject"], tmp_path / "dog", subject_settings(), progress=False)

    info = read_json(out / "subject.json")
    assert info["token"] == "<sks>" and info["masks_used"] is True
    assert info["training"]["textual_inversion"]["steps_done"] == 4
    fresh = DreamVideoPipeline.from_pretrained(str(tiny_base))
    token = fresh.load_subject(out)
    table = fresh.text_encoder.get_input_embeddings().weight
    token_id = fresh.tokenizer.convert_tokens_to_ids(token)
    assert token_id == table_before.shape[0]  # a new row
    assert torch.equal(table[:token_id], table_before)  # every other row bit-identical
    dog = fresh.tokenizer.convert_tokens_to_ids("dog</w>")
    assert not torch.equal(table[token_id], table_before[dog])  # the token moved away from its init word

    # the embedding was frozen in stage 2: final vector == last textual-inversion checkpoint
    final = load_safetensors(out / "learned_embeds.safetensors")[0]["<sks>"]
    ckpt = load_safetensors(out / "checkpoints/textual_inversion/step-000004/learned_embeds.safetensors")[0]["<sks>"]
    assert torch.equal(final, ckpt)
    # base UNet weights untouched; the identity adapter is non-zero after training
    for key, value in unet_before.items():
        inner = key.replace("transformer_blocks.0.", "transformer_blocks.0.block.")
        current = pipe.unet.state_dict().get(key, pipe.unet.state_dict().get(inner))
        assert torch.equal(current, value), key
    adapter = load_safetensors(out / "identity_adapter.safetensors")[0]
    assert any(k.endswith("attn2.up.weight") and v.abs().sum() > 0 for k, v in adapter.items())
    assert all(".attn2." in k for k in adapter)


def test_learned_embeds_load_with_diffusers_textual_inversion_loader(pipe, tiny_base, tiny_data, tmp_path):
    out = learn_subject(pipe, tiny_data["subject"], tmp_path / "s", subject_settings(identity_adapter=None),
                        progress=False, skip_identity=True)
    fresh = DreamVideoPipeline.from_pretrained(str(tiny_base))
    fresh.load_textual_inversion(str(out / "learned_embeds.safetensors"))
    vector = load_safetensors(out / "learned_embeds.safetensors")[0]["<sks>"][0]
    token_id = fresh.tokenizer.convert_tokens_to_ids("<sks>")
    assert torch.equal(fresh.text_encoder.get_input_embeddings().weight[token_id], vector)


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


def test_masks_are_resized_nearest_neighbour_and_stay_binary(pipe):
    from dreamvideo.data import SubjectData
    from dreamvideo.stages import SubjectBatches

    masks = torch.zeros(2, 1, 16, 16)
    masks[0, 0, 5:9, 5:8] = 1  # edges off the 2x2 latent grid: area averaging would give fractions
    data = SubjectData(torch.zeros(2, 3, 16, 16), masks, [None, None])
    mask = SubjectBatches.encode(pipe, data, use_masks=True).mask
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(mask, masks[:, :, ::2, ::2])  # nearest neighbour at scale 2: the top-left pixel of each cell


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
    training.diffusion_loss(Spy(), Sched(), latents, torch.zeros(64, 1, 1), torch.Generator().manual_seed(0), 0.0)
    training.diffusion_loss(Spy(), Sched(), latents, torch.zeros(64, 1, 1), torch.Generator().manual_seed(0), 1.0)
    plain, offset = (n.mean(dim=(3, 4)).var().item() for n in seen)
    assert plain < 0.05 and offset > 0.5  # per-(sample, channel, frame) means spread by the offset term
    frame_means = seen[1].mean(dim=(3, 4))  # one offset per frame, as the authors draw: frames differ
    assert frame_means.var(dim=2).mean() > 0.5


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

    import dreamvideo.stages as stages

    monkeypatch.setattr(stages.ad, "set_adapter_condition", spy_set)
    monkeypatch.setattr(stages, "diffusion_loss", spy_loss)
    settings = motion_settings(stage=StageConfig(steps=24, lr=1e-3, batch_size=2, checkpoint_every=24))
    out = learn_motion(pipe, tiny_data["motion"], tmp_path / "m", settings, progress=False)

    from dreamvideo.data import load_motion_videos
    from dreamvideo.stages import _frame_embeddings

    videos = load_motion_videos(tiny_data["motion"], 16).videos
    table = torch.cat([_frame_embeddings(pipe, v) for v in videos])
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
    out = learn_motion(pipe, tiny_data["motion"], tmp_path / "m", motion_settings(appearance_guidance=False),
                       progress=False)
    assert read_json(out / "motion.json")["motion_adapter"]["condition_dim"] is None


def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_base, tiny_data, tmp_path, monkeypatch):
    settings = motion_settings(stage=StageConfig(steps=4, lr=1e-2, batch_size=1, checkpoint_every=2))
    full = learn_motion(DreamVideoPipeline.from_pretrained(str(tiny_base)), tiny_data["motion"], tmp_path / "full",
                        settings, progress=False)

    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def dying_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed after the step-2 checkpoint
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        learn_motion(DreamVideoPipeline.from_pretrained(str(tiny_base)), tiny_data["motion"], tmp_path / "cut",
                     settings, progress=False)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert not (tmp_path / "cut" / "motion.json").exists()
    with pytest.raises(DreamVideoError, match="--resume"):
        learn_motion(DreamVideoPipeline.from_pretrained(str(tiny_base)), tiny_data["motion"], tmp_path / "cut",
                     settings, progress=False)
    learn_motion(DreamVideoPipeline.from_pretrained(str(tiny_base)), tiny_data["motion"], tmp_path / "cut",
                 settings, resume=True, progress=False)
    a = load_safetensors(full / "motion_adapter.safetensors")[0]
    b = load_safetensors(tmp_path / "cut" / "motion_adapter.safetensors")[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(pipe, tiny_data, tmp_path, monkeypatch):
    import dreamvideo.stages as stages

    real = stages.diffusion_loss
    calls = {"n": 0}

    def nan_after_two(*a, **k):
        calls["n"] += torch.is_grad_enabled()  # training steps only, not the no-grad check before a checkpoint
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] > 2 else loss

    monkeypatch.setattr(stages, "diffusion_loss", nan_after_two)
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


def test_bad_tokens_are_refused_before_training(pipe, tiny_data, tmp_path):
    with pytest.raises(TokenError, match="already in the tokenizer"):
        learn_subject(pipe, tiny_data["subject"], tmp_path / "a", subject_settings(token="dog"), progress=False)
    with pytest.raises(TokenError, match="single-token"):
        learn_subject(pipe, tiny_data["subject"], tmp_path / "b", subject_settings(init_word="red dog"),
                      progress=False)


def test_subject_from_another_architecture_is_refused(pipe, tiny_data, tmp_path):
    from conftest import build_tiny_base

    out = learn_subject(pipe, tiny_data["subject"], tmp_path / "s", subject_settings(), progress=False)
    other = DreamVideoPipeline.from_pretrained(str(build_tiny_base(tmp_path / "wide", width=48)))
    with pytest.raises(DreamVideoError, match="does not fit base"):
        other.load_subject(out)


def test_generate_with_subject_checkpoint_motion_and_both(pipe, tiny_base, tiny_data, tmp_path):
    subject = learn_subject(pipe, tiny_data["subject"], tmp_path / "s", subject_settings(), progress=False)
    motion = learn_motion(DreamVideoPipeline.from_pretrained(str(tiny_base)), tiny_data["motion"], tmp_path / "m",
                          motion_settings(), progress=False)
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
    both = gen("a <sks> dog", appearance_image=image, generator=torch.Generator().manual_seed(0), **kw).frames[0]
    assert both.shape == plain.shape == (4, 16, 16, 3) and both.dtype == plain.dtype
    with pytest.raises(DreamVideoError, match="no identity_adapter checkpoint at step 3"):
        gen.load_subject(subject, step=3)
    shutil.rmtree(subject / "checkpoints")
    gen.unload("motion")
    assert ad.adapter_names(gen.unet) == ["identity"]


def test_previews_are_written_every_n_steps_and_do_not_change_training(tiny_base, tiny_data, tmp_path):
    from dreamvideo.stages import PreviewSettings

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


def test_subject_previews_cover_both_stages(pipe, tiny_data, tmp_path):
    from dreamvideo.stages import PreviewSettings

    out = learn_subject(pipe, tiny_data["subject"], tmp_path / "s", subject_settings(), progress=False,
                        preview=PreviewSettings(every=4, num_frames=2, steps=2))
    names = sorted(p.name for p in (out / "previews").glob("*.gif"))
    assert names == ["identity_adapter-step-000004.gif", "textual_inversion-step-000004.gif"]


def test_motion_adapter_lowers_the_velocity_loss_on_a_v_prediction_base(tiny_vpred_base, tiny_data, tmp_path):
    from dreamvideo.data import load_motion_videos

    pipe = DreamVideoPipeline.from_pretrained(str(tiny_vpred_base))
    settings = motion_settings(stage=StageConfig(steps=30, lr=3e-3, batch_size=2, checkpoint_every=30),
                               appearance_guidance=False, caption_dropout=0.0)  # fmt: skip
    out = learn_motion(pipe, tiny_data["motion"], tmp_path / "m", settings, progress=False)
    pipe.load_motion(out)
    frames = torch.stack([v[:4] for v in load_motion_videos(tiny_data["motion"], 16).videos])
    latents = pipe.encode_video(frames, torch.Generator().manual_seed(0))
    text = pipe.encode_text(["a red star moves left", "a blue dog moves right"])

    def loss() -> float:  # the same 16 draws of noise and timesteps each time
        return sum(
            training.diffusion_loss(pipe.unet, pipe.scheduler, latents, text, torch.Generator().manual_seed(s)).item()
            for s in range(16)
        )

    trained = loss()
    ad.enable_adapter(pipe.unet, "motion", False)
    assert trained < 0.9 * loss()


def test_padded_clips_use_the_latent_of_a_black_frame(pipe, tiny_data):
    from dreamvideo.stages import MotionBatches, load_motion_data

    settings = motion_settings(num_frames=12, frame_stride=1, short_videos="pad")
    data = load_motion_data(tiny_data["motion"], 16, settings)  # 6-frame videos: 6 real frames, 6 black
    batches = MotionBatches.encode(pipe, data, settings)
    x, _, embeds = batches.sample(2, torch.Generator().manual_seed(0))
    assert x.shape[2] == 12
    assert torch.equal(x[:, :, 6:], batches.black[None, :, None].expand(2, -1, 6, -1, -1))
    assert not torch.equal(x[:, :, 5], batches.black.expand(2, -1, -1, -1))
    black = pipe.vae.encode(-torch.ones(1, 3, 16, 16)).latent_dist.mean[0] * pipe.vae.config.scaling_factor
    torch.testing.assert_close(batches.black, black)


def test_motion_adapter_trains_on_a_bf16_base_with_fp32_trainables(tiny_base, tiny_data, tmp_path):
    pipe = DreamVideoPipeline.from_pretrained(str(tiny_base), torch_dtype=torch.bfloat16)
    settings = motion_settings(stage=StageConfig(steps=3, lr=1e-3, batch_size=1, checkpoint_every=3,
                                                 mixed_precision="bf16"))  # fmt: skip
    out = learn_motion(pipe, tiny_data["motion"], tmp_path / "m", settings, progress=False)
    tensors = load_safetensors(out / "motion_adapter.safetensors")[0]
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in tensors.values())
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if ".up." in k)  # trained


def test_subject_trains_on_a_bf16_base(tiny_base, tiny_data, tmp_path):
    pipe = DreamVideoPipeline.from_pretrained(str(tiny_base), torch_dtype=torch.bfloat16)
    stage = StageConfig(steps=3, lr=1e-2, batch_size=1, checkpoint_every=3, mixed_precision="bf16")
    out = learn_subject(pipe, tiny_data["subject"] / "images", tmp_path / "s",
                        subject_settings(textual_inversion=stage, identity=stage), progress=False)  # fmt: skip
    embeds = load_safetensors(out / "learned_embeds.safetensors")[0]
    assert all(torch.isfinite(t).all() for t in embeds.values())
    fresh = DreamVideoPipeline.from_pretrained(str(tiny_base), torch_dtype=torch.bfloat16)
    token = fresh.load_subject(out)
    assert fresh(f"a {token} dog", num_frames=1, num_inference_steps=1, progress=False).frames[0].shape[0] == 1


def test_identity_adapter_none_skips_stage_two(pipe, tiny_data, tmp_path):
    assert SubjectSettings().identity_adapter is not None  # the paper's adapter by default
    out = learn_subject(pipe, tiny_data["subject"] / "images", tmp_path / "s",
                        subject_settings(identity_adapter=None), progress=False)  # fmt: skip
    assert (out / "learned_embeds.safetensors").is_file() and not (out / "identity_adapter.safetensors").exists()
    assert read_json(out / "subject.json")["identity_adapter"] is None
