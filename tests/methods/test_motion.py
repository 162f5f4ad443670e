"""What every motion learner shares: clips of the videos as batches."""

from __future__ import annotations

import pytest
import torch
from learning_helpers import dreamvideo_motion_settings as motion_settings

from dreamvideo.pipeline import DreamVideoPipeline


@pytest.fixture()
def pipe(tiny_base):
    return DreamVideoPipeline.from_pretrained(str(tiny_base))


def test_padded_clips_use_the_latent_of_a_black_frame(pipe, tiny_data):
    from dreamvideo.methods.motion import MotionBatches, load_motion_data

    settings = motion_settings(num_frames=12, frame_stride=1, short_videos="pad")
    data = load_motion_data(tiny_data["motion"], 16, settings)  # 6-frame videos: 6 real frames, 6 black
    batches = MotionBatches.encode(pipe, data, settings)
    x, _, embeds = batches.sample(2, torch.Generator().manual_seed(0))
    assert x.shape[2] == 12
    assert torch.equal(x[:, :, 6:], batches.black[None, :, None].expand(2, -1, 6, -1, -1))
    assert not torch.equal(x[:, :, 5], batches.black.expand(2, -1, -1, -1))
    black = pipe.vae.encode(-torch.ones(1, 3, 16, 16)).latent_dist.mean[0] * pipe.vae.config.scaling_factor
    torch.testing.assert_close(batches.black, black)
