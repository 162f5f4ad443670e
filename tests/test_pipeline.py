"""The sampling loop on bases of either prediction type: guidance rescale, DDIM inversion, appearance condition."""

from __future__ import annotations

import pytest
import torch

from dreamvideo import adapters as ad
from dreamvideo.pipeline import DreamVideoPipeline
from dreamvideo.training import diffusion_loss


@pytest.fixture(scope="module")
def vpipe(tiny_vpred_base):
    return DreamVideoPipeline.from_pretrained(str(tiny_vpred_base))


@pytest.fixture(scope="module")
def epipe(tiny_base):
    return DreamVideoPipeline.from_pretrained(str(tiny_base))


def test_v_prediction_base_trains_on_the_velocity(vpipe):
    latents, text = torch.randn(2, 4, 3, 8, 8), vpipe.encode_prompt(["a dog", "a cat"])
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
    run = lambda pipe, **kw: pipe("a dog", num_frames=2, num_inference_steps=3, progress=False,  # noqa: E731
                                  generator=torch.Generator().manual_seed(0), **kw).frames[0]  # fmt: skip
    default, plain = run(vpipe), run(vpipe, guidance_rescale=0.0)
    assert seen == [{"guidance_rescale": 0.7}] * 3 and (default != plain).any()
    seen.clear()
    run(epipe)
    assert seen == []
    with pytest.raises(Exception, match="guidance_rescale"):
        run(vpipe, guidance_rescale=1.5)


@pytest.mark.parametrize("base", ["epipe", "vpipe"])
def test_ddim_inversion_round_trips(base, request):
    """Invert clean latents, sample back without guidance: close to the start, far from a random start."""
    pipe = request.getfixturevalue(base)
    clean = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.5
    inverted = pipe.invert(clean, 50, progress=False)
    assert (inverted - clean).abs().mean() > 0.5 * clean.abs().mean()  # it went somewhere: not a no-op

    def sample(start: torch.Tensor) -> torch.Tensor:
        pipe.scheduler.set_timesteps(50)
        text, x = pipe.encode_prompt([""]), start
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
        run = lambda **kw: epipe("a dog", num_frames=2, num_inference_steps=2, progress=False,  # noqa: E731
                                 generator=torch.Generator().manual_seed(0), **kw).frames[0]  # fmt: skip
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
        epipe("a dog", num_frames=3, num_inference_steps=1, progress=False, guidance_scale=1.0,
              generator=torch.Generator().manual_seed(0), **kw)  # fmt: skip
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
    frames = pipe("a dog", num_frames=2, num_inference_steps=2, appearance_image=image, progress=False,
                  generator=torch.Generator().manual_seed(0)).frames[0]  # fmt: skip
    assert frames.shape == (2, 16, 16, 3) and frames.std() > 0
    assert pipe.unet.dtype == dtype


def test_guidance_branches_get_lam_u_with_zero_vector_and_lam_c_with_the_image(epipe, monkeypatch):
    import dreamvideo.pipeline as module

    ad.attach_adapter(epipe.unet, ad.motion_adapter_config(epipe.condition_dim), seed=0)
    seen, texts = [], []
    real_set = module.ad.set_adapter_condition
    monkeypatch.setattr(module.ad, "set_adapter_condition",
                        lambda unet, name, e, s: seen.append((e.clone(), s.clone())) or real_set(unet, name, e, s))
    real_forward = epipe.unet.forward

    def spy(sample, t, encoder_hidden_states=None, **kw):
        texts.append(encoder_hidden_states.clone())
        return real_forward(sample, t, encoder_hidden_states=encoder_hidden_states, **kw)

    monkeypatch.setattr(epipe.unet, "forward", spy)
    try:
        image = (torch.rand(16, 16, 3) * 255).to(torch.uint8).numpy()
        epipe("a dog", negative_prompt="a cat", num_frames=2, num_inference_steps=1, appearance_image=image,
              appearance_strength=0.8, appearance_strength_uncond=0.3, progress=False)  # fmt: skip
    finally:
        ad.detach_adapter(epipe.unet, "motion")
    (embeds, strength), = seen
    assert strength.tolist() == pytest.approx([0.3, 0.8])  # [unconditional, conditional]
    assert embeds[0].abs().sum() == 0 and torch.allclose(embeds[1], epipe.encode_image([image])[0])
    # the unconditional branch is the negative prompt, the conditional one the prompt
    torch.testing.assert_close(texts[0][0], epipe.encode_prompt(["a cat"])[0])
    torch.testing.assert_close(texts[0][1], epipe.encode_prompt(["a dog"])[0])
