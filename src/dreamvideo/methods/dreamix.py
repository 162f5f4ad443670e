"""Dreamix: every spatial UNet parameter fine-tuned on the photos, captioned with DreamBooth's fixed identifier.

Spatial = everything that is not temporal (resnets, spatial transformers, conv in/out, time embedding, down/up
samplers); ``temp_convs``, ``temp_attentions`` and ``transformer_in`` stay frozen.
"""

from __future__ import annotations

from dreamvideo.methods.baseline import BaselineSubject
from dreamvideo.methods.registry import register
from dreamvideo.methods.weights import Trainable, spatial_trainable


@register
class Dreamix(BaselineSubject):
    name = "dreamix"
    summary = "spatial UNet parameters with a fixed identifier (DreamBooth style), temporal frozen"
    identifier = True

    def trainable(self) -> Trainable:
        return spatial_trainable(self.pipe.unet)
