"""How subjects and motions are learned: DreamVideo and the paper's comparisons (method.md sections 4, 5 and 8).

Every method is a :class:`Learner`, one file each, registered by name (``--method``). Each writes a folder that
``generate --subject/--motion`` and ``pipe.load_subject/load_motion`` load: ``subject.json`` or ``motion.json`` with
``"method"``, the trainable-parameter count and the training time, plus safetensors holding only what was trained.

=================== ============================================== ==============================================
method              subject                                        motion
=================== ============================================== ==============================================
dreamvideo          textual inversion + identity adapter           motion adapter + appearance guidance
textual-inversion   the token's embedding only                     -
dreamix             spatial UNet parameters, fixed identifier      -
finetune            spatial UNet parameters, class word only       temporal UNet parameters
lora                LoRA on spatial cross-attention k/v            LoRA on every self-attention k/v
tune-a-video        -                                              one video: every to_q + temporal attentions
animatediff         DreamBooth: spatial parameters, identifier     temporal transformers re-initialised, trained
=================== ============================================== ==============================================

The paper's ablations are DreamVideo with other settings (``SubjectSettings``/``MotionSettings``: no textual
identity, identity adapter sites, motion adapter sites, serial placement, no appearance guidance); "without identity
adapter" is the Textual Inversion learner. Subject baselines with one training stage take a
:class:`~dreamvideo.training.StageConfig` (default :func:`~dreamvideo.methods.baseline.default_stage`); motion
learners use ``MotionSettings.stage``.

Adding a method: subclass :class:`SubjectLearner` or :class:`MotionLearner` (or, for one training stage,
:class:`BaselineSubject` / :class:`BaselineMotion`) in a new file, decorate it with :func:`register`, and import
that file below (a test can register and :func:`unregister` its own).
"""

from dreamvideo.methods.baseline import BaselineMotion, BaselineSubject
from dreamvideo.methods.learner import Learner, PreviewSettings, Stage, fit
from dreamvideo.methods.motion import MotionLearner, MotionSettings
from dreamvideo.methods.registry import (
    UnknownMethodError,
    get,
    learn_motion,
    learn_subject,
    load_into,
    names,
    register,
    training_record,
    unregister,
)
from dreamvideo.methods.subject import SubjectLearner, SubjectSettings

# The built-in methods register themselves on import, in the order of the table above (``names()`` keeps it).
# isort: off
from dreamvideo.methods import dreamvideo_subject, dreamvideo_motion, textual_inversion
from dreamvideo.methods import dreamix, finetune, lora, tune_a_video, animatediff
# isort: on

__all__ = [
    "BaselineMotion",
    "BaselineSubject",
    "Learner",
    "MotionLearner",
    "MotionSettings",
    "PreviewSettings",
    "Stage",
    "SubjectLearner",
    "SubjectSettings",
    "UnknownMethodError",
    "animatediff",
    "dreamix",
    "dreamvideo_motion",
    "dreamvideo_subject",
    "finetune",
    "fit",
    "get",
    "learn_motion",
    "learn_subject",
    "load_into",
    "lora",
    "names",
    "register",
    "training_record",
    "textual_inversion",
    "tune_a_video",
    "unregister",
]
