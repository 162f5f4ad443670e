"""The adapter of section 3: shape, zero init, placement, conditioning, attach/scale/disable/detach, counts."""

import pytest
import torch
from conftest import build_tiny_unet
from diffusers import UNet3DConditionModel
from diffusers.models.attention import BasicTransformerBlock

from dreamvideo import adapters as ad
from dreamvideo.base import modelscope_unet_on_meta


def tiny_unet() -> UNet3DConditionModel:
    return build_tiny_unet().eval()


def run(unet, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 3, 8, 8, generator=g)
    text = torch.randn(2, 5, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), encoder_hidden_states=text).sample


def randomize(unet, name):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in ad.adapter_parameters(unet, name):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_adapter_equation_and_zero_init():
    a = ad.Adapter(16, 8, condition_dim=4)
    assert a.down.out_features == 8 and a.up.out_features == 16
    assert torch.count_nonzero(a.up.weight) == 0 and torch.count_nonzero(a.up.bias) == 0
    h, e = torch.randn(3, 5, 16), torch.randn(3, 1, 4)
    assert torch.equal(a(h, e), h)  # zero init: identity
    with torch.no_grad():
        a.up.weight.normal_()
        a.up.bias.normal_()
    lam = 0.7
    expected = h + a.up(torch.nn.functional.gelu(a.down(h + lam * a.cond(e))))
    torch.testing.assert_close(h + a.delta(h, e, lam), expected)
    # no condition means no condition term (the authors' code); the zero vector adds lam * W_cond(0) = lam * bias
    gelu = torch.nn.functional.gelu
    torch.testing.assert_close(a.delta(h, None, lam), a.up(gelu(a.down(h))))
    torch.testing.assert_close(
        a.delta(h, torch.zeros(3, 1, 4), lam), a.up(gelu(a.down(h + lam * a.cond.bias)))
    )


def test_attach_leaves_output_bit_identical_and_detach_restores():
    unet = tiny_unet()
    before = run(unet)
    keys = list(unet.state_dict())
    ad.attach_identity_adapter(unet)
    ad.attach_motion_adapter(unet, condition_dim=6)
    ad.set_adapter_condition(unet, "motion", torch.randn(2, 6), 0.5)
    assert torch.equal(run(unet), before)
    randomize(unet, "motion")
    assert not torch.allclose(run(unet), before)
    ad.detach_adapter(unet, "motion")
    ad.detach_adapter(unet, "identity")
    assert torch.equal(run(unet), before)
    assert list(unet.state_dict()) == keys
    assert not any(isinstance(m, (ad.AdaptedSublayer, ad.DeferredNorm)) for m in unet.modules())


def test_sites_match_the_paper():
    unet = tiny_unet()
    identity = ad.attach_identity_adapter(unet)
    motion = ad.attach_motion_adapter(unet, condition_dim=6)
    spatial = [p for p, _ in ad.find_transformer_blocks(unet, "spatial")]
    temporal = [p for p, _ in ad.find_transformer_blocks(unet, "temporal")]
    assert all(".attentions." in p for p in spatial)
    assert "transformer_in.transformer_blocks.0" in temporal
    assert all(".temp_attentions." in p or p.startswith("transformer_in") for p in temporal)
    assert len(identity) == len(spatial) and all(list(s) == ["attn2"] for s in identity.values())
    assert len(motion) == len(temporal) and all(list(s) == ["attn1", "attn2", "ff"] for s in motion.values())
    assert all(a.cond is not None and a.cond.in_features == 6 for s in motion.values() for a in s.values())
    assert all(a.cond is None for s in identity.values() for a in s.values())


def test_parallel_adapter_sees_raw_prenorm_hidden_state():
    block = BasicTransformerBlock(16, 2, 8, cross_attention_dim=12).eval()
    attn2, norm2 = block.attn2, block.norm2  # the original sub-layer and norm
    adapter = ad.Adapter(16, 8)
    ad.wrap_sublayer(block, "attn2", "norm2", "b").add_adapter("x", adapter, "parallel")
    with torch.no_grad():
        adapter.up.weight.normal_()
    h, text = torch.randn(2, 5, 16), torch.randn(2, 3, 12)
    with torch.no_grad():
        h1 = block.attn1(block.norm1(h)) + h
        expected = attn2(norm2(h1), encoder_hidden_states=text) + adapter(h1)  # f(n(h)) + A(h)
        expected = block.ff(block.norm3(expected)) + expected
        got = block(h, encoder_hidden_states=text)
    torch.testing.assert_close(got, expected)


def test_serial_placement():
    block = BasicTransformerBlock(16, 2, 8, double_self_attention=True).eval()  # a temporal-style block
    ff, norm3 = block.ff, block.norm3
    adapter = ad.Adapter(16, 8)
    ad.wrap_sublayer(block, "ff", "norm3", "b").add_adapter("x", adapter, "serial")
    with torch.no_grad():
        adapter.up.weight.normal_()
        h = torch.randn(2, 5, 16)
        h1 = block.attn1(block.norm1(h)) + h
        h2 = block.attn2(block.norm2(h1)) + h1
        expected = adapter(ff(norm3(h2)) + h2)  # h = A(f(n(h)) + h)
        torch.testing.assert_close(block(h), expected)


def test_condition_is_broadcast_per_sample_over_frames_and_positions():
    unet = tiny_unet()
    ad.attach_motion_adapter(unet, condition_dim=6)
    randomize(unet, "motion")
    e = torch.randn(2, 6)
    ad.set_adapter_condition(unet, "motion", e, 1.0)
    both = run(unet)
    # sample 0 alone with its own embedding must match sample 0 of the pair: no cross-sample leakage
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 8, 8, generator=g)
    text = torch.randn(2, 5, 32, generator=g)
    ad.set_adapter_condition(unet, "motion", e[:1], 1.0)
    with torch.no_grad():
        single = unet(x[:1], torch.tensor([10]), encoder_hidden_states=text[:1]).sample
    torch.testing.assert_close(single, both[:1], atol=1e-5, rtol=1e-4)
    ad.set_adapter_condition(unet, "motion", torch.stack([e[1], e[1]]), 1.0)
    assert not torch.allclose(run(unet)[0], both[0])


def test_scale_disable_and_state_dict_roundtrip():
    unet = tiny_unet()
    base = run(unet)
    ad.attach_identity_adapter(unet)
    randomize(unet, "identity")
    adapted = run(unet)
    ad.set_adapter_scale(unet, "identity", 0.0)
    assert torch.equal(run(unet), base)
    ad.set_adapter_scale(unet, "identity", 1.0)
    ad.enable_adapter(unet, "identity", False)
    assert torch.equal(run(unet), base)
    ad.enable_adapter(unet, "identity", True)
    state = ad.adapter_state_dict(unet, "identity")
    assert all(k.split(".")[-3] == "attn2" for k in state)
    other = tiny_unet()
    ad.attach_identity_adapter(other)
    ad.load_adapter_state_dict(other, "identity", state)
    torch.testing.assert_close(run(other), adapted)
    with pytest.raises(ValueError, match="missing"):
        ad.load_adapter_state_dict(other, "identity", {k: v for k, v in list(state.items())[1:]})


def test_only_adapter_parameters_get_gradients():
    unet = tiny_unet()
    unet.requires_grad_(False)
    ad.attach_motion_adapter(unet, condition_dim=6)
    params = ad.adapter_parameters(unet, "motion")
    for p in params:
        p.requires_grad_(True)
    ad.set_adapter_condition(unet, "motion", torch.randn(2, 6), 1.0)
    x = torch.randn(2, 4, 3, 8, 8)
    unet(
        x, torch.tensor([1, 2]), encoder_hidden_states=torch.randn(2, 5, 32)
    ).sample.square().mean().backward()
    assert sum(p.grad.abs().sum() for p in params if p.grad is not None) > 0
    assert all(p.grad is None for n, p in unet.named_parameters() if ".adapters." not in n)


def test_parameter_counts_on_full_modelscope_architecture():
    unet = modelscope_unet_on_meta()
    assert sum(p.numel() for p in unet.parameters()) == 1_411_233_860  # 1.41 B, section 2
    spatial = ad.find_transformer_blocks(unet, "spatial")
    temporal = ad.find_transformer_blocks(unet, "temporal")
    assert (len(spatial), len(temporal)) == (16, 17)

    def per_site(d, cond=0):  # section 3: d^2 + 1.5 d, plus cond*d + d
        return d * d + 3 * d // 2 + (cond * d + d if cond else 0)

    widths_s = [b.norm1.normalized_shape[0] for _, b in spatial]
    widths_t = [b.norm1.normalized_shape[0] for _, b in temporal]
    ad.attach_identity_adapter(unet)
    ad.attach_motion_adapter(unet, condition_dim=1024)
    assert ad.count_adapter_parameters(unet, "identity") == sum(per_site(d) for d in widths_s)
    assert ad.count_adapter_parameters(unet, "motion") == 3 * sum(per_site(d, 1024) for d in widths_t)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="sites"):
        ad.AdapterConfig(name="x", target="spatial", sites=("attn3",))
    unet = tiny_unet()
    ad.attach_identity_adapter(unet)
    with pytest.raises(ValueError, match="already attached"):
        ad.attach_identity_adapter(unet)
    with pytest.raises(KeyError):
        ad.detach_adapter(unet, "motion")
