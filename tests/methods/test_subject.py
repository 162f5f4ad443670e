"""What every subject learner shares: the photos as 1-frame-video batches."""

from __future__ import annotations

import pytest
import torch

from dreamvideo.pipeline import DreamVideoPipeline


@pytest.fixture()
def pipe(tiny_base):
    return DreamVideoPipeline.from_pretrained(str(tiny_base))


def test_masks_are_resized_nearest_neighbour_and_stay_binary(pipe):
    from dreamvideo.data import SubjectData
    from dreamvideo.methods.subject import SubjectBatches

    masks = torch.zeros(2, 1, 16, 16)
    masks[0, 0, 5:9, 5:8] = 1  # edges off the 2x2 latent grid: area averaging would give fractions
    data = SubjectData(torch.zeros(2, 3, 16, 16), masks, [None, None])
    mask = SubjectBatches.encode(pipe, data, use_masks=True).mask
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(
        mask, masks[:, :, ::2, ::2]
    )  # nearest neighbour at scale 2: the top-left pixel of each cell
