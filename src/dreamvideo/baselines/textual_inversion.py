"""Textual Inversion baseline: the placeholder's word embedding only (DreamVideo's stage 1, no identity adapter)."""

from __future__ import annotations

import os
from pathlib import Path

from dreamvideo.fileio import read_json, write_json
from dreamvideo.pipeline import SUBJECT_FILE, DreamVideoPipeline
from dreamvideo.stages import SubjectSettings
from dreamvideo.stages import learn_subject as learn_dreamvideo_subject
from dreamvideo.training import StageConfig


def learn_subject(pipe: DreamVideoPipeline, images: str | os.PathLike, out: str | os.PathLike,
                  settings: SubjectSettings, stage: StageConfig | None = None,
                  masks: str | os.PathLike | None = None, overwrite: bool = False, resume: bool = False,
                  progress: bool = True) -> Path:
    """Learn only the token (``settings.textual_inversion`` is the stage; ``stage`` is not used).

    Args:
        pipe, images, out, settings, masks, overwrite, resume, progress: as for
            :func:`dreamvideo.stages.learn_subject`.
    """
    out = learn_dreamvideo_subject(pipe, images, out, settings, masks=masks, overwrite=overwrite, resume=resume,
                                   progress=progress, skip_identity=True)
    info = read_json(out / SUBJECT_FILE)
    info |= {"method": "textual-inversion", "trainable_parameters": int(pipe.text_encoder.config.hidden_size),
             "training_seconds": info["training"]["textual_inversion"]["seconds"]}
    write_json(info, out / SUBJECT_FILE)
    return out
