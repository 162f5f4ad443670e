"""Gradient checkpointing wrappers, attention backend, freezing and autocast on a tiny UNet3D."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import build_tiny_unet
from diffusers import UNet3DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from dreamvideo import adapters as ad
from dreamvideo.fileio import DreamVideoError
from dreamvideo.memory import (
    CHECKPOINTED_TYPES,
    CheckpointedModule,
    autocast_context,
    disable_gradient_checkpointing,
    enable_gradient_checkpointing,
    freeze,
    is_gradient_checkpointing,
    set_attention_backend,
    trainable_parameters,
)


def tiny_unet(seed: int = 0) -> UNet3DConditionModel:
    unet = build_tiny_unet(seed)
    with torch.no_grad():  # zero-initialised output layers would hide differences
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet


def inputs(frames: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(1, 4, frames, 8, 8, generator=g),
        torch.tensor([10]),
        torch.randn(1, 3, 32, generator=g),
    )


def forward_backward(unet: torch.nn.Module) -> torch.Tensor:
    sample, t, text = inputs()
    torch.manual_seed(123)  # same dropout masks in both runs (TemporalConvLayer has dropout 0.1)
    out = unet(sample, t, text).sample
    out.square().mean().backward()
    return out.detach()


def grads(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k.replace(".module.", "."): p.grad for k, p in unet.named_parameters() if p.requires_grad}


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_checkpointing_keeps_outputs_and_gradients():
    plain = tiny_unet().train()
    ckpt = copy.deepcopy(plain)
    expected = sum(isinstance(m, CHECKPOINTED_TYPES) for m in plain.modules())
    assert enable_gradient_checkpointing(ckpt) == expected == 25
    assert enable_gradient_checkpointing(ckpt) == 0  # idempotent
    calls = count_calls(ckpt.down_blocks[0].resnets[0].module)

    out_plain, out_ckpt = forward_backward(plain), forward_backward(ckpt)
    assert calls[0] == 2  # forward + recomputation in backward: checkpointing is really on
    assert torch.equal(out_plain, out_ckpt)
    g_plain, g_ckpt = grads(plain), grads(ckpt)
    assert g_plain.keys() == g_ckpt.keys()
    for key, g in g_plain.items():
        assert torch.allclose(g, g_ckpt[key], atol=1e-6), key


def test_frozen_base_with_small_trainable_parameter_gets_gradients():
    """No input needs grad, base frozen, eval mode: non-reentrant checkpointing still trains the extra."""
    models = []
    for checkpointing in (False, True):
        unet = freeze(tiny_unet()).eval()
        bias = torch.nn.Parameter(torch.full((32,), 0.1))
        block = unet.down_blocks[0].temp_attentions[0].transformer_blocks[0]
        block.register_forward_pre_hook(
            lambda m, args, kw, b=bias: ((args[0] + b,) + args[1:], kw), with_kwargs=True
        )
        unet.register_parameter("extra_bias", bias)
        if checkpointing:
            enable_gradient_checkpointing(unet)
        calls = count_calls(block)
        assert trainable_parameters(unet) == [bias]
        out = forward_backward(unet)
        assert calls[0] == (2 if checkpointing else 1)
        models.append((out, bias.grad))
    (out_a, grad_a), (out_b, grad_b) = models
    assert torch.equal(out_a, out_b)
    assert grad_b is not None and grad_b.abs().sum() > 0
    assert torch.allclose(grad_a, grad_b, atol=1e-6)


def test_no_recomputation_without_grad():
    unet = tiny_unet().eval()
    ref = unet(*inputs()).sample
    enable_gradient_checkpointing(unet)
    calls = count_calls(unet.mid_block.attentions[0].module)
    with torch.no_grad():
        out = unet(*inputs()).sample
    assert calls[0] == 1
    assert torch.allclose(out, ref, atol=1e-6)


def test_state_dict_keys_unchanged_and_disable_restores_modules():
    plain = tiny_unet()
    ckpt = copy.deepcopy(plain)
    originals = [m for m in ckpt.modules() if isinstance(m, CHECKPOINTED_TYPES)]
    enable_gradient_checkpointing(ckpt)
    assert is_gradient_checkpointing(ckpt)
    assert isinstance(ckpt.transformer_in, CheckpointedModule)
    assert ckpt.transformer_in.in_channels == 32  # attributes of the wrapped module stay reachable
    sd_plain, sd_ckpt = plain.state_dict(), ckpt.state_dict()
    assert list(sd_plain) == list(sd_ckpt)
    assert all(torch.equal(sd_plain[k], sd_ckpt[k]) for k in sd_plain)

    other = tiny_unet(seed=5)
    enable_gradient_checkpointing(other)
    other.load_state_dict(sd_plain, strict=True)  # plain keys load into a wrapped model
    plain2 = tiny_unet(seed=6)
    plain2.load_state_dict(other.state_dict(), strict=True)  # and back
    assert torch.equal(plain2.conv_out.weight, plain.conv_out.weight)
    assert torch.equal(
        other.down_blocks[0].attentions[0].module.proj_in.weight,
        plain.down_blocks[0].attentions[0].proj_in.weight,
    )

    assert disable_gradient_checkpointing(ckpt) == 25
    assert not is_gradient_checkpointing(ckpt)
    assert [m for m in ckpt.modules() if isinstance(m, CHECKPOINTED_TYPES)] == originals


def test_composes_with_adapters():
    """Adapters attached before or after enabling checkpointing train exactly as without it."""
    results = []
    for mode in ("off", "checkpoint_then_attach", "attach_then_checkpoint"):
        unet = freeze(tiny_unet()).train()
        if mode == "checkpoint_then_attach":
            enable_gradient_checkpointing(unet)
        torch.manual_seed(3)
        ad.attach_identity_adapter(unet)
        ad.attach_motion_adapter(unet, condition_dim=24)
        with torch.no_grad():
            for p in ad.adapter_parameters(unet, "motion") + ad.adapter_parameters(unet, "identity"):
                p.add_(0.1)  # move the zero-initialised up projections
        ad.set_adapter_condition(
            unet, "motion", torch.randn(1, 24, generator=torch.Generator().manual_seed(4))
        )
        if mode == "attach_then_checkpoint":
            enable_gradient_checkpointing(unet)
        out = forward_backward(unet)
        state = ad.adapter_state_dict(unet, "motion") | ad.adapter_state_dict(unet, "identity")
        results.append((out, grads(unet), state))
    out_ref, g_ref, s_ref = results[0]
    assert len(g_ref) == len(s_ref) > 0
    for out, g, state in results[1:]:
        assert torch.equal(out, out_ref)
        assert g.keys() == g_ref.keys() and state.keys() == s_ref.keys()
        for key in g_ref:
            assert torch.allclose(g[key], g_ref[key], atol=1e-6), key


def test_attention_backend_sdpa_matches_classic():
    unet = tiny_unet().eval()
    # diffusers 0.42 already builds every Attention with the SDPA processor
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    with torch.no_grad():
        sdpa = unet(*inputs()).sample
        assert set_attention_backend(unet, "default") == len(unet.attn_processors)
        assert all(type(p) is AttnProcessor for p in unet.attn_processors.values())
        classic = unet(*inputs()).sample
        set_attention_backend(unet, "sdpa")
        assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    assert torch.allclose(sdpa, classic, atol=1e-5)
    with pytest.raises(DreamVideoError, match="unknown attention backend"):
        set_attention_backend(unet, "flash")


def test_freeze_trainable_parameters_and_autocast():
    layer = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    assert len(trainable_parameters(layer)) == 4
    assert freeze(layer) is layer and trainable_parameters(layer) == []
    layer[1].bias.requires_grad_(True)
    assert trainable_parameters(layer) == [layer[1].bias]

    x = torch.randn(2, 4)
    with autocast_context("cpu", "no"):
        assert layer(x).dtype == torch.float32
    with autocast_context(torch.device("cpu"), "bf16"):
        assert layer(x).dtype == torch.bfloat16
    with pytest.raises(DreamVideoError, match="unknown precision"):
        autocast_context("cpu", "fp8")
