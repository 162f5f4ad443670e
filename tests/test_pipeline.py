"""The sampling loop on bases of either prediction type: guidance rescale, DDIM inversion, appearance condition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamvideo import adapters as ad
from dreamvideo.pipeline import DreamVideoPipeline
from dreamvideo.training import diffusion_loss


def _run(pipe, prompt="a dog", **kw):
    """A short seeded generation (2 frames, 2 steps)."""
    kw = {"num_frames": 2, "num_inference_steps": 2, "progress": False, **kw}
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return pipe(prompt, **kw) if prompt is not None else pipe(**kw)


@pytest.fixture(scope="module")
def vpipe(tiny_vpred_base):
    return DreamVideoPipeline.from_pretrained(str(tiny_vpred_base))


@pytest.fixture(scope="module")
def epipe(tiny_base):
    return DreamVideoPipeline.from_pretrained(str(tiny_base))


def test_v_prediction_base_trains_on_the_velocity(vpipe):
    latents, text = torch.randn(2, 4, 3, 8, 8), vpipe.encode_text(["a dog", "a cat"])
    loss = diffusion_loss(vpipe.unet, vpipe.scheduler, latents, text, torch.Generator().manual_seed(0), 0.1)
    g = torch.Generator().manual_seed(0)  # replay the draws of diffusion_loss
    noise = torch.randn(latents.shape, generator=g) + 0.1 * torch.randn((2, 4, 3, 1, 1), generator=g)
    t = torch.randint(0, 1000, (2,), generator=g)
    a = vpipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    velocity = a.sqrt() * noise - (1 - a).sqrt() * latents  # v = sqrt(abar) eps - sqrt(1 - abar) x0
    pred = vpipe.unet(a.sqrt() * latents + (1 - a).sqrt() * noise, t, encoder_hidden_states=text).sample
    assert loss.item() == pytest.approx((pred - velocity).pow(2).mean().item(), rel=1e-5)
    assert loss.item() != pytest.approx((pred - noise).pow(2).mean().item(), rel=1e-4)  # not the epsilon loss


def test_zero_snr_base_samples_from_t999_with_rescaled_guidance_by_default(vpipe, epipe, monkeypatch):
    assert vpipe.default_guidance_rescale == 0.7 and epipe.default_guidance_rescale == 0.0
    vpipe.scheduler.set_timesteps(4)
    assert vpipe.scheduler.timesteps[0] == 999 and vpipe.scheduler.alphas_cumprod[-1] == 0
    seen = []
    import dreamvideo.pipeline as module

    real = module.rescale_noise_cfg
    monkeypatch.setattr(module, "rescale_noise_cfg", lambda *a, **k: seen.append(k) or real(*a, **k))

    def run(pipe, **kw):
        return _run(pipe, num_inference_steps=3, **kw).frames[0]

    default, plain = run(vpipe), run(vpipe, guidance_rescale=0.0)
    assert seen == [{"guidance_rescale": 0.7}] * 3 and (default != plain).any()
    seen.clear()
    run(epipe)
    assert seen == []
    with pytest.raises(Exception, match="guidance_rescale"):
        run(vpipe, guidance_rescale=1.5)


def test_a_call_without_guidance_scale_uses_the_default_of_the_base_folder(tiny_base, epipe, tmp_path):
    import json
    import shutil

    assert epipe.config.default_guidance_scale == 9.0  # no model_index.json: the paper's
    _run(epipe)
    assert epipe.guidance_scale == 9.0
    base = shutil.copytree(tiny_base, tmp_path / "base")
    (base / "model_index.json").write_text(json.dumps({"default_guidance_scale": 3}))
    pipe = DreamVideoPipeline.from_pretrained(str(base))
    _run(pipe)
    assert pipe.guidance_scale == 3.0
    _run(pipe, guidance_scale=5.0)
    assert pipe.guidance_scale == 5.0
    pipe.save_pretrained(tmp_path / "saved")  # diffusers writes the setting back into model_index.json
    assert json.loads((tmp_path / "saved" / "model_index.json").read_text())["default_guidance_scale"] == 3.0
    (base / "model_index.json").write_text(json.dumps({"default_guidance_scale": "high"}))
    with pytest.raises(Exception, match=r"model_index.json: default_guidance_scale must be"):
        DreamVideoPipeline.from_pretrained(str(base))


@pytest.mark.parametrize("base", ["epipe", "vpipe"])
def test_ddim_inversion_round_trips(base, request):
    """Invert clean latents, sample back without guidance: close to the start, far from a random start."""
    pipe = request.getfixturevalue(base)
    clean = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.5
    inverted = pipe.invert(clean, 50, progress=False)
    assert (inverted - clean).abs().mean() > 0.5 * clean.abs().mean()  # it went somewhere: not a no-op

    def sample(start: torch.Tensor) -> torch.Tensor:
        pipe.scheduler.set_timesteps(50)
        text, x = pipe.encode_text([""]), start
        for t in pipe.scheduler.timesteps:
            x = pipe.scheduler.step(pipe.unet(x, t, encoder_hidden_states=text).sample, t, x).prev_sample
        return x

    back = sample(inverted)
    elsewhere = sample(torch.randn(clean.shape, generator=torch.Generator().manual_seed(4)))
    assert (back - clean).abs().mean() < 0.25 * (elsewhere - clean).abs().mean()


def test_inversion_has_no_appearance_condition_and_keeps_the_callers(epipe, monkeypatch):
    ad.attach_adapter(epipe.unet, ad.motion_adapter_config(epipe.condition_dim), seed=0)
    try:
        for p in ad.adapter_parameters(epipe.unet, "motion"):
            torch.nn.init.normal_(p, std=0.2)
        clean = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(3))
        plain = epipe.invert(clean, 5, progress=False)
        condition = torch.randn(2, epipe.condition_dim)
        ad.set_adapter_condition(epipe.unet, "motion", condition, 1.0)  # e.g. the 2 x batch of guidance
        assert torch.equal(epipe.invert(clean, 5, progress=False), plain)
        assert ad.get_adapter_condition(epipe.unet, "motion").embeds is condition
    finally:
        ad.detach_adapter(epipe.unet, "motion")


def test_no_appearance_image_means_no_condition_term(epipe):
    ad.attach_adapter(epipe.unet, ad.motion_adapter_config(epipe.condition_dim), seed=0)
    try:
        for p in ad.adapter_parameters(epipe.unet, "motion"):
            torch.nn.init.normal_(p, std=0.2)

        def run(**kw):
            return _run(epipe, **kw).frames[0]

        without = run()
        with torch.no_grad():
            for name, p in epipe.unet.named_parameters():
                if ".cond." in name:
                    p.add_(1.0)  # W_cond changes: without an image nothing may change
        assert (run() == without).all()
        image = (torch.rand(16, 16, 3) * 255).to(torch.uint8).numpy()
        assert (run(appearance_image=image) != without).any()
        assert ad.get_adapter_condition(epipe.unet, "motion") is None  # cleared after sampling
    finally:
        ad.detach_adapter(epipe.unet, "motion")


def test_offset_noise_at_inference_shifts_each_frame_and_defaults_off(epipe, monkeypatch):
    starts = []
    real = epipe.scheduler.step

    def spy(noise, t, latents, **kw):
        if not starts:
            starts.append(latents.clone())
        return real(noise, t, latents, **kw)

    monkeypatch.setattr(epipe.scheduler, "step", spy)

    def start(**kw) -> torch.Tensor:
        starts.clear()
        epipe(
            "a dog",
            num_frames=3,
            num_inference_steps=1,
            progress=False,
            guidance_scale=1.0,
            generator=torch.Generator().manual_seed(0),
            **kw,
        )
        return starts[0]

    plain, shifted = start(), start(offset_noise=0.5)
    g = torch.Generator().manual_seed(0)
    torch.randn(plain.shape, generator=g)  # the same draw first
    offset = torch.randn((*plain.shape[:3], 1, 1), generator=g)
    torch.testing.assert_close(shifted, plain + 0.5 * offset)
    assert offset[0, 0].flatten().unique().numel() == 3  # one offset per frame


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_half_precision_base_generates_with_both_adapters(tiny_base, dtype):
    pipe = DreamVideoPipeline.from_pretrained(str(tiny_base), torch_dtype=dtype)
    ad.attach_identity_adapter(pipe.unet)
    ad.attach_adapter(pipe.unet, ad.motion_adapter_config(pipe.condition_dim), seed=0)
    for name in ("identity", "motion"):
        for p in ad.adapter_parameters(pipe.unet, name):
            torch.nn.init.normal_(p, std=0.05)
    image = (torch.rand(16, 16, 3) * 255).to(torch.uint8).numpy()
    frames = pipe(
        "a dog",
        num_frames=2,
        num_inference_steps=2,
        appearance_image=image,
        progress=False,
        generator=torch.Generator().manual_seed(0),
    ).frames[0]
    assert frames.shape == (2, 16, 16, 3) and frames.std() > 0
    assert pipe.unet.dtype == dtype


def test_guidance_branches_get_lam_u_with_zero_vector_and_lam_c_with_the_image(epipe, monkeypatch):
    import dreamvideo.pipeline as module

    ad.attach_adapter(epipe.unet, ad.motion_adapter_config(epipe.condition_dim), seed=0)
    seen, texts = [], []
    real_set = module.ad.set_adapter_condition
    monkeypatch.setattr(
        module.ad,
        "set_adapter_condition",
        lambda unet, name, e, s: seen.append((e.clone(), s.clone())) or real_set(unet, name, e, s),
    )
    real_forward = epipe.unet.forward

    def spy(sample, t, encoder_hidden_states=None, **kw):
        texts.append(encoder_hidden_states.clone())
        return real_forward(sample, t, encoder_hidden_states=encoder_hidden_states, **kw)

    monkeypatch.setattr(epipe.unet, "forward", spy)
    try:
        image = (torch.rand(16, 16, 3) * 255).to(torch.uint8).numpy()
        epipe(
            "a dog",
            negative_prompt="a cat",
            num_frames=2,
            num_inference_steps=1,
            appearance_image=image,
            appearance_strength=0.8,
            appearance_strength_uncond=0.3,
            progress=False,
        )
    finally:
        ad.detach_adapter(epipe.unet, "motion")
    ((embeds, strength),) = seen
    assert strength.tolist() == pytest.approx([0.3, 0.8])  # [unconditional, conditional]
    assert embeds[0].abs().sum() == 0 and torch.allclose(embeds[1], epipe.encode_image([image])[0])
    # the unconditional branch is the negative prompt, the conditional one the prompt
    torch.testing.assert_close(texts[0][0], epipe.encode_text(["a cat"])[0])
    torch.testing.assert_close(texts[0][1], epipe.encode_text(["a dog"])[0])


# ---------------------------------------------------------------------------------------------- diffusers conformance
def test_diffusion_pipeline_from_pretrained_loads_a_saved_pipeline(epipe, tmp_path):
    from diffusers import DiffusionPipeline

    epipe.save_pretrained(tmp_path / "saved")
    again = DiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert type(again) is DreamVideoPipeline and again.image_encoder is not None
    assert again.base_name == str(tmp_path / "saved")
    assert (_run(again).frames[0] == _run(epipe).frames[0]).all()
    ours = DreamVideoPipeline.from_pretrained(tmp_path / "saved")  # the folder is also a base for our loader
    assert (_run(ours).frames[0] == _run(epipe).frames[0]).all()


def test_image_encoder_and_feature_extractor_are_optional_components(epipe, tmp_path):
    from diffusers import DiffusionPipeline

    bare = DreamVideoPipeline(**{**epipe.components, "image_encoder": None, "feature_extractor": None})
    bare.save_pretrained(tmp_path / "bare")
    assert not (tmp_path / "bare" / "image_encoder").exists()
    again = DiffusionPipeline.from_pretrained(tmp_path / "bare")
    assert again.image_encoder is None and again.feature_extractor is None and again.condition_dim is None
    assert _run(again).frames[0].shape == (2, 16, 16, 3)


def test_toy_is_a_name_from_pretrained_understands_and_its_folder_loads_with_diffusers():
    from diffusers import DiffusionPipeline

    from dreamvideo.base import toy_model_dir

    assert DreamVideoPipeline.from_pretrained("toy").base_name == "toy"
    assert type(DiffusionPipeline.from_pretrained(toy_model_dir())) is DreamVideoPipeline


def test_from_pretrained_takes_components_as_diffusers_does(tiny_base, epipe):
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler.from_config(epipe.scheduler.config)
    pipe = DreamVideoPipeline.from_pretrained(
        tiny_base, scheduler=scheduler, image_encoder=epipe.image_encoder
    )
    assert pipe.scheduler is scheduler and pipe.image_encoder is epipe.image_encoder
    assert pipe.feature_extractor.crop_size == {"height": 16, "width": 16}
    with pytest.raises(TypeError, match="schedular"):
        DreamVideoPipeline.from_pretrained(tiny_base, schedular=scheduler)


def test_output_types_agree_with_each_other(epipe):
    import PIL.Image

    uint8 = _run(epipe, num_videos_per_prompt=2).frames
    as_np = _run(epipe, num_videos_per_prompt=2, output_type="np").frames
    as_pt = _run(epipe, num_videos_per_prompt=2, output_type="pt").frames
    as_pil = _run(epipe, num_videos_per_prompt=2, output_type="pil").frames
    latent = _run(epipe, num_videos_per_prompt=2, output_type="latent").frames
    assert len(uint8) == 2 and uint8[0].dtype == np.uint8 and uint8[0].shape == (2, 16, 16, 3)
    assert (
        as_np.shape == (2, 2, 16, 16, 3)
        and as_np.dtype == np.float32
        and 0 <= as_np.min() <= as_np.max() <= 1
    )
    assert np.abs(np.rint(as_np * 255) - np.stack(uint8)).max() <= 1  # the same pixels, diffusers' range
    assert as_pt.shape == (2, 2, 3, 16, 16) and torch.allclose(
        as_pt.permute(0, 1, 3, 4, 2), torch.from_numpy(as_np)
    )
    assert len(as_pil) == 2 and len(as_pil[0]) == 2 and isinstance(as_pil[0][0], PIL.Image.Image)
    assert np.array_equal(np.asarray(as_pil[1][1]), np.rint(as_np[1, 1] * 255).astype(np.uint8))
    assert latent.shape == (2, 4, 2, 8, 8)  # the final latents: they decode to the video
    decoded = (
        ((epipe.decode_latents(latent) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
    )
    assert np.array_equal(decoded, np.stack(uint8))


def test_return_dict_false_gives_a_tuple_and_the_output_is_a_base_output(epipe):
    from diffusers.utils import BaseOutput

    out = _run(epipe)
    (frames,) = _run(epipe, return_dict=False)
    assert isinstance(out, BaseOutput) and np.array_equal(out[0][0], out.frames[0])
    assert np.array_equal(frames[0], out.frames[0])


def test_num_videos_per_prompt_gives_each_prompt_its_own_noise(epipe):
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3, 4)]
    batch = _run(epipe, ["a dog", "a cat"], num_videos_per_prompt=2, generator=gens, output_type="np").frames
    for i, (prompt, seed) in enumerate([("a dog", 1), ("a dog", 2), ("a cat", 3), ("a cat", 4)]):
        one = _run(epipe, prompt, generator=torch.Generator().manual_seed(seed), output_type="np").frames[0]
        np.testing.assert_allclose(batch[i], one, atol=2e-5)
    assert not np.allclose(batch[0], batch[1], atol=1e-3)


def test_prompt_embeds_replace_the_prompts(epipe):
    text = _run(epipe, "a dog", negative_prompt="a cat").frames[0]
    embeds = _run(
        epipe,
        None,
        prompt_embeds=epipe.encode_text(["a dog"]),
        negative_prompt_embeds=epipe.encode_text(["a cat"]),
    ).frames[0]
    assert np.array_equal(text, embeds) and not np.array_equal(text, _run(epipe, "a dog").frames[0])


def test_encode_prompt_returns_diffusers_pair(epipe):
    cond, uncond = epipe.encode_prompt(
        ["a dog", "a cat"], num_videos_per_prompt=2, do_classifier_free_guidance=True
    )
    assert cond.shape[0] == uncond.shape[0] == 4
    torch.testing.assert_close(cond[1], epipe.encode_text(["a dog"])[0])
    torch.testing.assert_close(cond[2], epipe.encode_text(["a cat"])[0])
    torch.testing.assert_close(uncond[3], epipe.encode_text([""])[0])  # the paper's empty negative prompt
    assert epipe.encode_prompt("a dog")[1] is None


def test_eta_reaches_the_scheduler(epipe):
    plain, noisy = (
        _run(epipe, num_inference_steps=3).frames[0],
        _run(epipe, num_inference_steps=3, eta=1.0).frames[0],
    )
    assert not np.array_equal(plain, noisy)
    assert np.array_equal(
        noisy, _run(epipe, num_inference_steps=3, eta=1.0).frames[0]
    )  # seeded: reproducible


def test_callback_on_step_end_sees_and_replaces_tensors(epipe):
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append((i, int(t), {k: tuple(v.shape) for k, v in tensors.items()}))
        return {"latents": torch.zeros_like(tensors["latents"])} if i == 2 else {}

    out = _run(
        epipe,
        num_inference_steps=3,
        output_type="latent",
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
    ).frames
    epipe.scheduler.set_timesteps(3)
    assert [(i, t) for i, t, _ in seen] == list(enumerate(epipe.scheduler.timesteps.tolist()))
    assert seen[0][2] == {"latents": (1, 4, 2, 8, 8), "prompt_embeds": (2, 12, 32)}  # both guidance branches
    assert out.abs().max() == 0  # the last step's replacement is the output
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        _run(epipe, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["noise"])


def test_callback_can_interrupt_sampling(epipe, monkeypatch):
    calls = []
    real = epipe.unet.forward
    monkeypatch.setattr(epipe.unet, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))

    def stop(pipe, i, t, tensors):
        pipe._interrupt = True
        return {}

    _run(epipe, num_inference_steps=4, callback_on_step_end=stop)
    assert len(calls) == 1 and epipe.num_timesteps == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt_embeds": torch.zeros(1, 12, 32)}, "exactly one of `prompt` and `prompt_embeds`"),
        ({"prompt": None}, "exactly one of `prompt` and `prompt_embeds`"),
        ({"prompt": 3}, "must be a str or a list"),
        ({"negative_prompt": ["a", "b"]}, "2 negative prompts for 1 prompts"),
        ({"negative_prompt": "a", "negative_prompt_embeds": torch.zeros(1, 12, 32)}, "at most one of"),
        ({"height": 15}, "multiples of 2"),
        ({"num_frames": 0}, "num_frames must be at least 1"),
        ({"num_videos_per_prompt": 0}, "num_videos_per_prompt must be at least 1"),
        (
            {"init_strength": 0.7, "init_video": torch.zeros(2, 3, 16, 16)},
            r"init_strength must be in \[0, 0.5\]",
        ),
        ({"init_strength": 0.3}, "needs an init_video"),
        ({"init_strength": 0.3, "init_video": torch.zeros(3, 3, 16, 16)}, "init_video must be"),
        ({"guidance_rescale": -0.1}, "guidance_rescale must be in"),
        ({"eta": -1.0}, "eta must be"),
        ({"output_type": "gif"}, "output_type must be one of"),
        ({"latents": torch.zeros(1, 4, 3, 8, 8)}, "latents must have shape"),
        ({"generator": [torch.Generator()] * 2}, "2 generators for a batch of 1"),
    ],
)
def test_check_inputs_raises_clear_errors(epipe, kwargs, message):
    from dreamvideo.fileio import DreamVideoError

    kwargs = {"prompt": "a dog", **kwargs}
    with pytest.raises(ValueError, match=message) as err:
        _run(epipe, **kwargs)
    assert isinstance(err.value, DreamVideoError)  # the CLI reports it without a traceback


# ---------------------------------------------------------------------------------------------- inversion
@pytest.mark.parametrize("base", ["epipe", "vpipe"])
def test_inversion_is_ddim_inverse_scheduler_plus_a_last_step_to_pure_noise(base, request):
    """Our inversion's steps are diffusers' DDIMInverseScheduler's when it is told the level it steps to; its last
    step, from T - k, lands on the predicted noise (alpha_bar = 0), which DDIMInverseScheduler cannot reach."""
    from diffusers import DDIMInverseScheduler

    pipe = request.getfixturevalue(base)
    clean = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.5
    steps, total = 5, pipe.scheduler.config.num_train_timesteps
    stride = total // steps
    inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    inverse.set_timesteps(steps)
    text, x = pipe.encode_text([""]), clean
    for t in range(0, total - stride, stride):  # the model at t with the input at its own level t
        x = inverse.step(pipe.unet(x, t, encoder_hidden_states=text).sample, t + stride, x).prev_sample
    out = pipe.unet(x, total - stride, encoder_hidden_states=text).sample
    a = pipe.scheduler.alphas_cumprod[total - stride]
    eps = out if pipe.scheduler.config.prediction_type == "epsilon" else a.sqrt() * out + (1 - a).sqrt() * x
    torch.testing.assert_close(pipe.invert(clean, steps, progress=False), eps, atol=1e-4, rtol=1e-4)


def test_init_video_is_inverted_and_mixed_with_the_noise(epipe, monkeypatch):
    video = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    starts, real = [], epipe.scheduler.step

    def spy(noise, t, latents, **kw):
        starts.append(latents.clone())
        return real(noise, t, latents, **kw)

    monkeypatch.setattr(epipe.scheduler, "step", spy)
    _run(epipe, num_inference_steps=1, guidance_scale=1.0, init_video=video, init_strength=0.3)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(
        1, 4, 2, 8, 8, generator=g
    )  # drawn first, then the VAE samples with the same generator
    inverted = epipe.invert(epipe.encode_video(video[None], g), 1, progress=False)
    torch.testing.assert_close(starts[0], 0.3**0.5 * inverted + 0.7**0.5 * noise)


# ---------------------------------------------------------------------------------------------- devices
class _Stop(Exception):
    pass


def test_noise_and_features_go_to_the_execution_device_not_the_unets(epipe, monkeypatch):
    """Under cpu offload the UNet sits on the CPU while it runs on the GPU: tensors follow ``_execution_device``."""
    target = torch.device("meta")  # any device that is not the UNet's
    monkeypatch.setattr(DreamVideoPipeline, "_execution_device", property(lambda self: target))
    seen = {}

    def prepare(batch, frames, height, width, device, generator, latents=None, offset_noise=0.0):
        seen["device"] = device
        raise _Stop

    monkeypatch.setattr(epipe, "prepare_latents", prepare)
    with pytest.raises(_Stop):
        epipe(prompt_embeds=torch.zeros(1, 12, 32), guidance_scale=1.0, num_frames=2, progress=False)
    assert seen["device"] == target
    assert (
        DreamVideoPipeline.prepare_latents(epipe, 1, 2, 16, 16, target, torch.Generator()).device == target
    )  # a CPU generator too
    assert epipe.encode_prompt(None, prompt_embeds=torch.zeros(1, 12, 32))[0].device == target


def test_model_cpu_offload_generates_the_same_video(tiny_base):
    pipe = DreamVideoPipeline.from_pretrained(str(tiny_base))
    ad.attach_adapter(pipe.unet, ad.motion_adapter_config(pipe.condition_dim), seed=0)
    for p in ad.adapter_parameters(pipe.unet, "motion"):
        torch.nn.init.normal_(p, std=0.1)
    image = (torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    before = _run(pipe, appearance_image=image).frames[0]
    pipe.enable_model_cpu_offload(device="cpu")  # the hooks of the GPU path, with the CPU as accelerator
    assert hasattr(pipe.unet, "_hf_hook") and hasattr(pipe.image_encoder, "_hf_hook")
    assert (_run(pipe, appearance_image=image).frames[0] == before).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_half_precision_offload_and_cuda_generator(tiny_base, dtype):
    pipe = DreamVideoPipeline.from_pretrained(str(tiny_base), torch_dtype=dtype)
    ad.attach_identity_adapter(pipe.unet)
    ad.attach_adapter(pipe.unet, ad.motion_adapter_config(pipe.condition_dim), seed=0)
    pipe.enable_model_cpu_offload()
    image = (torch.rand(16, 16, 3) * 255).to(torch.uint8).numpy()
    for generator in (torch.Generator("cuda").manual_seed(0), torch.Generator().manual_seed(0)):
        frames = _run(pipe, appearance_image=image, generator=generator).frames[0]
        assert frames.shape == (2, 16, 16, 3)
