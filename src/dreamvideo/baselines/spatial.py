"""Dreamix and ModelScopeT2V fine-tuning of a subject: every spatial UNet parameter trained on the photos.

Spatial = everything that is not temporal (resnets, spatial transformers, conv in/out, time embedding, down/up
samplers); ``temp_convs``, ``temp_attentions`` and ``transformer_in`` stay frozen. Dreamix (and AnimateDiff's
DreamBooth step) caption the photos with DreamBooth's fixed identifier ("a sks dog"); the plain fine-tune uses the
class word alone ("a dog"), so the subject replaces the class.
"""

from __future__ import annotations

import os
from pathlib import Path

from dreamvideo.baselines.common import Trainable, run_subject, spatial_parameters, weight_trainable
from dreamvideo.pipeline import DreamVideoPipeline
from dreamvideo.stages import SubjectSettings
from dreamvideo.training import StageConfig


def spatial_trainable(pipe: DreamVideoPipeline, seed: int) -> Trainable:
    """All spatial parameters of the UNet, stored by state-dict name."""
    return weight_trainable(pipe.unet, spatial_parameters(pipe.unet), {"trained": "spatial UNet parameters"})


def learn_spatial_subject(
    method: str,
    identifier: bool,
    pipe: DreamVideoPipeline,
    images: str | os.PathLike,
    out: str | os.PathLike,
    settings: SubjectSettings,
    stage: StageConfig,
    masks: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Fine-tune the spatial UNet parameters on a subject's photos.

    Args:
        method: recorded name (``dreamix``, ``finetune``, ``animatediff``).
        identifier: caption with DreamBooth's fixed identifier (``True``) or with the class word only.
        pipe, images, out, settings, stage, masks, overwrite, resume, progress: see
            :func:`dreamvideo.baselines.common.run_subject`.
    """
    return run_subject(method, pipe, images, out, settings, stage, spatial_trainable, identifier=identifier,
                       masks=masks, overwrite=overwrite, resume=resume, progress=progress)


def learn_dreamix(*args, **kwargs) -> Path:
    """Dreamix: spatial fine-tuning with DreamBooth's fixed identifier (arguments as :func:`learn_spatial_subject`)."""
    return learn_spatial_subject("dreamix", True, *args, **kwargs)


def learn_finetune(*args, **kwargs) -> Path:
    """ModelScopeT2V fine-tuning: spatial fine-tuning with the class word only."""
    return learn_spatial_subject("finetune", False, *args, **kwargs)


def learn_animatediff(*args, **kwargs) -> Path:
    """AnimateDiff's personalisation: DreamBooth on the spatial (image) layers, as Dreamix."""
    return learn_spatial_subject("animatediff", True, *args, **kwargs)
