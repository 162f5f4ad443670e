"""Adapters wrap sub-layers (peft-style): the paper's equations in float64, unload, state-dict keys, site maps."""

import pytest
import torch
import torch.nn.functional as F
from conftest import build_tiny_unet
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

from dreamvideo import adapters as ad
from dreamvideo.adapters.sites import base as sites_base

SUBLAYERS = (("attn1", "norm1"), ("attn2", "norm2"), ("ff", "norm3"))


def paper_adapter(adapter, h, e=None, lam=1.0):
    """Section 3: ``A(h, e) = h + W_up(GELU(W_down(h + lam * W_cond(e))))``; no ``e``: no condition term."""
    x = h if e is None else h + lam * adapter.cond(e)
    return h + adapter.up(F.gelu(adapter.down(x)))


def per_row(value, rows):
    """A per-sample tensor (samples,) or (samples, dim) repeated for each of its batch-major rows."""
    if not isinstance(value, torch.Tensor):
        return value
    value = value.repeat_interleave(rows // value.shape[0], dim=0)
    return value[:, None] if value.ndim == 2 else value[:, None, None]


def paper_block(block, adapters, placement, e=None, lam=1.0):
    """A ``BasicTransformerBlock`` forward written from method.md, section 3, on the block's original modules.

    Per sub-layer ``f`` with pre-norm ``n``: no adapter ``h = f(n(h)) + h``; parallel ``h = f(n(h)) + A(h)``;
    serial ``h = A(f(n(h)) + h)``. ``e`` (samples, dim) and ``lam`` (float or (samples,)) are broadcast to the
    batch-major rows of ``h``.
    """
    modules = {site: (getattr(block, site), getattr(block, norm)) for site, norm in SUBLAYERS}

    def forward(h, attention_mask=None, encoder_hidden_states=None, **unused):
        e_rows, lam_rows = per_row(e, h.shape[0]), per_row(lam, h.shape[0])
        for site, (f, n) in modules.items():
            if site == "ff":
                out = f(n(h))
            else:
                out = f(n(h), encoder_hidden_states=encoder_hidden_states if site == "attn2" else None)
            a = adapters.get(site)
            if a is None:
                h = out + h
            elif placement == "parallel":
                h = out + paper_adapter(a, h, e_rows, lam_rows)
            else:
                h = paper_adapter(a, out + h, e_rows, lam_rows)
        return h

    return forward


def randomize(modules, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in modules.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)


@pytest.mark.parametrize("placement", ["parallel", "serial"])
@pytest.mark.parametrize("conditioned", [False, True])
def test_block_equals_the_paper_in_float64(placement, conditioned):
    torch.manual_seed(0)
    block = BasicTransformerBlock(16, 2, 8, double_self_attention=True).double().eval()  # a temporal block
    adapters = {s: ad.Adapter(16, 8, condition_dim=6).double() for s, _ in SUBLAYERS}
    for a in adapters.values():
        randomize(a)
    e, lam = (torch.randn(2, 6, dtype=torch.float64), 0.7) if conditioned else (None, 1.0)
    expected_forward = paper_block(block, adapters, placement, e, lam)
    conditions = {"x": ad.AdapterCondition(e, lam)} if conditioned else {}
    for site, norm in SUBLAYERS:
        wrapper = ad.wrap_sublayer(block, site, norm, "b")
        wrapper.conditions = conditions
        wrapper.add_adapter("x", adapters[site], placement)
    h = torch.randn(2 * 4, 5, 16, dtype=torch.float64)  # rows = sample * 4 + position
    with torch.no_grad():
        torch.testing.assert_close(block(h), expected_forward(h), rtol=0, atol=1e-14)


@pytest.mark.parametrize("placement", ["parallel", "serial"])
def test_unet_equals_the_paper_in_float64(placement):
    """Identity adapters at every spatial attn2, motion adapters at every temporal attn1/attn2/ff, in one UNet."""
    unet, oracle = build_tiny_unet().double().eval(), build_tiny_unet().double().eval()
    identity = ad.attach_identity_adapter(unet, placement=placement)
    motion = ad.attach_motion_adapter(unet, condition_dim=6, placement=placement)
    unet.double()
    randomize(identity)
    randomize(motion, seed=4)
    e, lam = torch.randn(2, 6, dtype=torch.float64), torch.tensor([0.5, 1.0], dtype=torch.float64)
    ad.set_adapter_condition(unet, "motion", e, lam)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 8, 8, generator=g, dtype=torch.float64)
    text = torch.randn(2, 5, 32, generator=g, dtype=torch.float64)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        plain = oracle(x, t, encoder_hidden_states=text).sample
        for target, adapters, cond in (("spatial", identity, (None, 1.0)), ("temporal", motion, (e, lam))):
            for path, block in ad.find_transformer_blocks(oracle, target):
                block.forward = paper_block(block, dict(adapters[path.replace(".", "/")]), placement, *cond)
        expected = oracle(x, t, encoder_hidden_states=text).sample
        got = unet(x, t, encoder_hidden_states=text).sample
    assert not torch.allclose(expected, plain, atol=1e-3)  # the adapters do change the output
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-14)


def test_unload_restores_the_original_module_objects_and_state_dict_keys():
    unet = build_tiny_unet().eval()
    modules = dict(unet.named_modules())
    keys = list(unet.state_dict())
    ad.attach_identity_adapter(unet)
    ad.attach_motion_adapter(unet, condition_dim=6)
    block = ad.find_transformer_blocks(unet, "temporal")[0][1]
    assert isinstance(block.attn1, ad.AdaptedSublayer) and isinstance(block.norm1, ad.DeferredNorm)
    ad.detach_adapter(unet, "identity")
    ad.detach_adapter(unet, "motion")
    after = dict(unet.named_modules())
    assert list(after) == list(modules)
    assert all(after[name] is module for name, module in modules.items())  # the very same objects
    assert list(unet.state_dict()) == keys


def test_state_dict_keeps_the_base_keys_while_adapters_are_attached():
    plain = build_tiny_unet().eval()
    unet = build_tiny_unet().eval()
    ad.attach_identity_adapter(unet)
    ad.attach_motion_adapter(unet, condition_dim=6)
    base_keys = set(plain.state_dict())
    adapter_keys = set(unet.state_dict()) - base_keys
    assert base_keys <= set(unet.state_dict())  # no "base_layer." in the base keys
    assert adapter_keys and all(".adapters.identity." in k or ".adapters.motion." in k for k in adapter_keys)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.01)
    result = unet.load_state_dict(plain.state_dict(), strict=False)  # a plain UNet's weights load into it
    assert not result.unexpected_keys and set(result.missing_keys) == adapter_keys
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in plain.state_dict().items())


def test_forward_chunking_over_tokens_gives_the_same_output():
    unet = build_tiny_unet().eval()
    ad.attach_motion_adapter(unet, condition_dim=6)
    ad.attach_identity_adapter(unet)
    randomize(nn.ModuleList([m for w in ad.adapted_sublayers(unet) for m in w.adapters.values()]))
    ad.set_adapter_condition(unet, "motion", torch.randn(2, 6), torch.tensor([0.3, 1.0]))
    g = torch.Generator().manual_seed(1)
    x, text = torch.randn(2, 4, 3, 8, 8, generator=g), torch.randn(2, 5, 32, generator=g)
    with torch.no_grad():
        plain = unet(x, torch.tensor([10, 500]), encoder_hidden_states=text).sample
        unet.enable_forward_chunking(chunk_size=1, dim=1)  # diffusers calls ff once per token
        chunked = unet(x, torch.tensor([10, 500]), encoder_hidden_states=text).sample
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-6)


class TinyImageModel(nn.Module):
    """A model no built-in site map describes: one spatial transformer."""

    def __init__(self):
        super().__init__()
        self.transformer = Transformer2DModel(2, 8, in_channels=16, cross_attention_dim=12, norm_num_groups=8)

    def forward(self, x, text):
        return self.transformer(x, encoder_hidden_states=text, return_dict=False)[0]


def test_another_architecture_is_one_site_map(monkeypatch):
    model = TinyImageModel().eval()
    with pytest.raises(ValueError, match="no adapter site map describes TinyImageModel"):
        ad.attach_identity_adapter(model)
    monkeypatch.setattr(sites_base, "_SITE_MAPS", list(sites_base._SITE_MAPS))
    sites_base.register(
        ad.SiteMap(
            name="TinyImageModel",
            model_types=(TinyImageModel,),
            containers={"spatial": (Transformer2DModel,), "temporal": ()},
            block_types=(BasicTransformerBlock,),
            sublayers={"attn1": "norm1", "attn2": "norm2", "ff": "norm3"},
        )
    )
    x, text = torch.randn(2, 16, 4, 4), torch.randn(2, 3, 12)
    with torch.no_grad():
        before = model(x, text)
        added = ad.attach_identity_adapter(model)
        assert list(added) == ["transformer/transformer_blocks/0"]
        assert torch.equal(model(x, text), before)  # zero init
        randomize(added)
        assert not torch.allclose(model(x, text), before)
        ad.detach_adapter(model, "identity")
        assert torch.equal(model(x, text), before)


def test_blocks_the_wrapping_cannot_express_are_refused():
    unet = build_tiny_unet().eval()
    block = ad.find_transformer_blocks(unet, "spatial")[0][1]
    block.norm_type = "ada_norm_zero"  # its sub-layers are gated: h <- g * f(n(h)) + h
    with pytest.raises(ValueError, match="pre-norm"):
        ad.attach_identity_adapter(unet)
    assert not ad.adapted_sublayers(unet)  # nothing was changed
