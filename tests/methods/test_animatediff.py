"""AnimateDiff's motion module: re-initialised, seeded, the identity at the start."""

from __future__ import annotations

import torch
from learning_helpers import fresh, snapshot

from dreamvideo.methods.animatediff import reinit_temporal_transformers


def test_animatediff_motion_module_starts_as_identity_and_is_seeded(tiny_base):
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    pipe, other = fresh(tiny_base), fresh(tiny_base)
    before = snapshot(pipe)
    paths = reinit_temporal_transformers(pipe.unet, seed=3)
    reinit_temporal_transformers(other.unet, seed=3)
    after = snapshot(pipe)
    assert all(torch.equal(after[n], snapshot(other)[n]) for n in after)  # same seed, same weights
    assert not torch.equal(after["transformer_in.proj_in.weight"], before["transformer_in.proj_in.weight"])
    assert all(
        torch.equal(after[n], before[n]) for n in after if not any(n.startswith(p + ".") for p in paths)
    )
    module = pipe.unet.get_submodule(paths[0])
    assert isinstance(module, TransformerTemporalModel)
    h = torch.randn(2 * 3, module.proj_in.in_features, 2, 2)  # (batch * frames, C, H, W)
    assert torch.equal(module(h, num_frames=3).sample, h)  # zero proj_out: the module is the identity
