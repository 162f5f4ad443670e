"""ModelScopeT2V fine-tuning: the spatial parameters on a subject's photos (captioned with the class word alone, so
the subject replaces the class), the temporal parameters (``temp_convs``, ``temp_attentions``, ``transformer_in``)
on a motion's videos."""

from __future__ import annotations

from dreamvideo.methods.baseline import BaselineMotion, BaselineSubject
from dreamvideo.methods.registry import register
from dreamvideo.methods.weights import Trainable, spatial_trainable, temporal_trainable

SUMMARY = "ModelScopeT2V fine-tuning: spatial parameters on photos, temporal on videos"


@register
class FinetuneSubject(BaselineSubject):
    name = "finetune"
    summary = SUMMARY
    identifier = False

    def trainable(self) -> Trainable:
        return spatial_trainable(self.pipe.unet)


@register
class FinetuneMotion(BaselineMotion):
    name = "finetune"
    summary = SUMMARY

    def trainable(self) -> Trainable:
        return temporal_trainable(self.pipe.unet)
