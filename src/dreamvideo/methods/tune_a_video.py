"""Tune-A-Video: one video; the query projections ``to_q`` of every attention (spatial self- and cross-attention,
both temporal attentions) plus the temporal attentions themselves (``attn1``/``attn2`` with their ``norm1``/``norm2``
in every temporal transformer block), as Tune-A-Video tunes queries and temporal attention."""

from __future__ import annotations

from dreamvideo.methods.baseline import BaselineMotion
from dreamvideo.methods.registry import register
from dreamvideo.methods.weights import Trainable, select, unet_parameters, weight_trainable

TEMPORAL_ATTENTION = (
    r"(temp_attentions\.\d+|transformer_in)\.transformer_blocks\.\d+\.(attn1|attn2|norm1|norm2)\."
)


@register
class TuneAVideo(BaselineMotion):
    name = "tune-a-video"
    summary = "one video: every attention query and the temporal attentions"
    max_videos = 1

    def trainable(self) -> Trainable:
        params = unet_parameters(self.pipe.unet)
        chosen = select(params, r"\.to_q\.weight$") | select(params, TEMPORAL_ATTENTION)
        return weight_trainable(
            self.pipe.unet, chosen, {"trained": "to_q of every attention + temporal attentions"}
        )
