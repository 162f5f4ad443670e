"""Reference attention (section 9): the formula, bit-identity when off, block choice, and the encoder copy."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build_tiny_unet

from dreamvideo import reference as ref
from dreamvideo.adapters import find_transformer_blocks


def _features(unet, samples=2, tokens=5, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for path, attn in ref.find_reference_sites(unet, ref.ReferenceConfig(blocks=("down", "mid", "up"))):
        out[path] = torch.randn(samples, tokens, attn.to_k.in_features, generator=g, dtype=dtype)
    return out


def _by_hand(attn, z, y):
    """Section 9 written out: Q = W_Q z, K' = W_K [z, y_a], V' = W_V [z, y_a], per head softmax, then W_O."""
    lin = torch.nn.functional.linear
    ctx = torch.cat([z, y], dim=1)
    q, k, v = (
        lin(z, attn.to_q.weight, attn.to_q.bias),
        lin(ctx, attn.to_k.weight, attn.to_k.bias),
        lin(ctx, attn.to_v.weight, attn.to_v.bias),
    )
    h, d = attn.heads, q.shape[-1] // attn.heads
    split = lambda x: x.reshape(x.shape[0], x.shape[1], h, d).permute(0, 2, 1, 3)  # noqa: E731
    w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d), dim=-1)
    o = (w @ split(v)).permute(0, 2, 1, 3).reshape(z.shape[0], z.shape[1], h * d)
    return lin(o, attn.to_out[0].weight, attn.to_out[0].bias)


def test_hooked_attention_is_the_formula_with_features_repeated_per_frame():
    unet = build_tiny_unet().double().eval()
    ref.attach_reference_attention(unet)
    feats = _features(unet)
    ref.set_reference_features(unet, {p: f for p, f in feats.items() if p in ref.reference_paths(unet)})
    path, attn = ref.find_reference_sites(unet, ref.ReferenceConfig())[0]
    frames, tokens = 3, 7
    z = torch.randn(
        2 * frames, tokens, attn.to_q.in_features, dtype=torch.float64
    )  # rows = sample * frames + frame
    out = attn(z)
    y = feats[path].repeat_interleave(frames, dim=0)  # sample i's features for each of its frames
    torch.testing.assert_close(out, _by_hand(attn, z, y), rtol=0, atol=1e-10)
    wrong = feats[path].repeat(frames, 1, 1)  # samples interleaved: the wrong rows
    assert (out - _by_hand(attn, z, wrong)).abs().max() > 1e-3
    # without the reference tokens it would be plain self-attention: the concatenation matters
    assert (out - _by_hand(attn, z, z[:, :0])).abs().max() > 1e-3


def _forward(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 3, 8, 8, generator=g, dtype=torch.float64)
    text = torch.randn(2, 4, 32, generator=g, dtype=torch.float64)
    return unet(x, torch.tensor([10, 500]), encoder_hidden_states=text).sample


def test_detached_disabled_or_featureless_unet_is_bit_identical():
    unet = build_tiny_unet().double().eval()
    originals = {n: p for n, p in unet.attn_processors.items()}
    plain = _forward(unet)
    ref.attach_reference_attention(unet)
    assert torch.equal(_forward(unet), plain)  # no features: plain attention
    ref.set_reference_features(
        unet, {p: f for p, f in _features(unet).items() if p in ref.reference_paths(unet)}
    )
    hooked = _forward(unet)
    assert not torch.allclose(hooked, plain)
    ref.enable_reference_attention(unet, False)
    assert torch.equal(_forward(unet), plain)
    ref.enable_reference_attention(unet, True)
    ref.set_reference_scale(unet, 0.0)
    assert torch.equal(_forward(unet), plain)
    ref.set_reference_scale(unet, 0.5)
    half = _forward(unet)
    assert not torch.allclose(half, plain) and not torch.allclose(half, hooked)
    ref.detach_reference_attention(unet)
    assert all(unet.attn_processors[n] is p for n, p in originals.items())
    assert torch.equal(_forward(unet), plain)


def test_default_blocks_are_mid_and_up_and_only_their_self_attention_changes():
    unet = build_tiny_unet()
    before = dict(unet.attn_processors)
    paths = ref.attach_reference_attention(unet)
    spatial = [p for p, _ in find_transformer_blocks(unet, "spatial")]
    assert paths == [p for p in spatial if p.startswith("mid_block.")] + sorted(
        p for p in spatial if p.startswith("up_blocks.")
    )
    assert paths and not any(p.startswith("down_blocks.") for p in paths)
    changed = {n for n, p in unet.attn_processors.items() if p is not before[n]}
    assert changed == {f"{p}.attn1.processor" for p in paths}
    ref.detach_reference_attention(unet)
    assert ref.attach_reference_attention(unet, ref.ReferenceConfig(blocks=("down",))) == [
        p for p in spatial if p.startswith("down_blocks.")
    ]
    with pytest.raises(ValueError, match="subset"):
        ref.ReferenceConfig(blocks=("middle",))


def test_per_sample_scale_zero_gives_that_sample_the_plain_attention():
    unet = build_tiny_unet().double().eval()
    ref.attach_reference_attention(unet)
    feats = {p: f for p, f in _features(unet).items() if p in ref.reference_paths(unet)}
    plain = _forward(unet)
    ref.set_reference_features(unet, feats)
    full = _forward(unet)
    ref.set_reference_scale(unet, torch.tensor([0.0, 1.0], dtype=torch.float64))
    mixed = _forward(unet)
    assert torch.equal(mixed[0], plain[0])
    torch.testing.assert_close(mixed[1], full[1], rtol=0, atol=1e-12)


def test_encoder_is_a_copy_whose_features_are_the_base_attention_inputs_on_the_image():
    base = build_tiny_unet().double().eval()
    encoder = ref.AppearanceEncoder.from_unet(base)
    for (n, p), (m, q) in zip(base.state_dict().items(), encoder.unet.state_dict().items(), strict=True):
        assert n == m and torch.equal(p, q) and p.data_ptr() != q.data_ptr()
    seen = {}
    for path, attn in ref.find_reference_sites(base, ref.ReferenceConfig()):
        attn.register_forward_pre_hook(lambda mod, args, path=path: seen.setdefault(path, args[0]))
    x, text = torch.randn(2, 4, 1, 8, 8, dtype=torch.float64), torch.randn(2, 4, 32, dtype=torch.float64)
    t = torch.tensor([3, 700])
    base(x, t, encoder_hidden_states=text)
    features = encoder(x, t, text)
    assert list(features) == encoder.sites and set(seen) == set(features)
    for path in features:
        torch.testing.assert_close(features[path], seen[path], rtol=0, atol=1e-12)
    # the spatial path up to the last site is trainable; temporal layers and the unused tail are not
    names = set(encoder.trainable_named_parameters())
    assert names and not any(ref.encoder.is_temporal(n) for n in names)
    assert not any(n.startswith(("conv_out", "conv_norm_out")) for n in names)
    assert "conv_in.weight" in names and any(n.startswith("mid_block.attentions") for n in names)
    last = encoder.sites[-1]
    assert f"{last}.attn1.to_q.weight" not in names and f"{last}.ff.net.2.weight" not in names
    assert encoder.frozen_parameter_count() + sum(
        p.numel()
        for p in encoder.unet.parameters()
        if any(p is q for q in encoder.trainable_named_parameters().values())
    ) == sum(p.numel() for p in base.parameters())


def test_every_trainable_encoder_parameter_gets_a_gradient_and_checkpointing_agrees():
    from dreamvideo.memory import enable_gradient_checkpointing
    from dreamvideo.reference.training import ReferencedUNet

    def grads(checkpointing):
        base = build_tiny_unet().double()
        encoder = ref.AppearanceEncoder.from_unet(base)
        ref.attach_reference_attention(base)
        base.requires_grad_(False)
        params = encoder.trainable_named_parameters()
        for p in params.values():
            p.requires_grad_(True)
        if checkpointing:
            enable_gradient_checkpointing(base)
            enable_gradient_checkpointing(encoder.unet)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 4, 2, 8, 8, generator=g, dtype=torch.float64)
        r = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
        text = torch.randn(2, 4, 32, generator=g, dtype=torch.float64)
        out = ReferencedUNet(base, encoder, r, text)(x, torch.tensor([5, 600]), text).sample
        out.square().mean().backward()
        return {n: p.grad for n, p in params.items()}

    plain, checkpointed = grads(False), grads(True)
    missing = [n for n, gr in plain.items() if gr is None]
    assert not missing, missing[:3]
    for n in plain:
        torch.testing.assert_close(checkpointed[n], plain[n], rtol=1e-9, atol=1e-12)
