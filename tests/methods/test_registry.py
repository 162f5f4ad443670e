"""The registry: methods by name, clear errors for a wrong name or kind."""

from __future__ import annotations

import json

import pytest
import torch
from learning_helpers import baseline_motion_settings as motion_settings
from learning_helpers import baseline_subject_settings as subject_settings
from learning_helpers import fresh

from dreamvideo import methods
from dreamvideo.fileio import DreamVideoError, read_json
from dreamvideo.methods import weights


def test_wrong_method_or_kind_is_a_clear_error(tiny_base, tiny_data, tmp_path):
    with pytest.raises(DreamVideoError, match="learns subjects only"):
        methods.learn_motion(
            fresh(tiny_base), tiny_data["motion"], tmp_path / "x", motion_settings(), "dreamix"
        )
    with pytest.raises(DreamVideoError, match="unknown method 'magic'"):
        methods.get("magic", "subject")
    out = methods.learn_subject(
        fresh(tiny_base),
        tiny_data["subject"],
        tmp_path / "ti",
        subject_settings(),
        "textual-inversion",
        progress=False,
    )
    info = read_json(out / "subject.json")
    (out / "subject.json").write_text(json.dumps(info | {"method": "magic"}))
    with pytest.raises(DreamVideoError, match="unknown method 'magic'"):
        fresh(tiny_base).load_subject(out)
    with pytest.raises(DreamVideoError, match="do not fit"):
        weights.load_weights(fresh(tiny_base).unet, {"nope.weight": torch.zeros(1)}, source="f.safetensors")


def test_the_built_in_methods_are_registered_in_the_papers_order():
    assert methods.names() == [
        "dreamvideo",
        "textual-inversion",
        "dreamix",
        "finetune",
        "lora",
        "tune-a-video",
        "animatediff",
    ]  # the benchmark's tables follow this order
    assert methods.names("subject") == [
        "dreamvideo",
        "textual-inversion",
        "dreamix",
        "finetune",
        "lora",
        "animatediff",
    ]
    assert methods.names("motion") == ["dreamvideo", "finetune", "lora", "tune-a-video", "animatediff"]
    assert all(methods.get(n, "subject").kind == "subject" for n in methods.names("subject"))


def test_a_second_learner_cannot_take_a_registered_name():
    class Impostor(methods.BaselineSubject):
        name, summary = "dreamix", "not Dreamix"

    with pytest.raises(ValueError, match="already registered"):
        methods.register(Impostor)
    assert methods.get("dreamix", "subject").__name__ == "Dreamix"

    class Nameless(methods.BaselineSubject):
        pass

    with pytest.raises(ValueError, match="set the class attributes"):
        methods.register(Nameless)


def test_every_learner_writes_previews_when_asked(tiny_base, tiny_data, tmp_path):
    from dreamvideo.methods import PreviewSettings

    out = methods.learn_motion(
        fresh(tiny_base),
        tiny_data["motion"],
        tmp_path / "m",
        motion_settings(),
        "tune-a-video",
        progress=False,
        preview=PreviewSettings(every=1, num_frames=2, steps=1),
    )
    assert sorted(p.name for p in (out / "previews").glob("*.gif")) == [
        "training-step-000001.gif",
        "training-step-000002.gif",
    ]


def test_folders_of_the_previous_format_load_and_count_as_before(tiny_base, tiny_learned, tmp_path):
    import shutil

    from dreamvideo import adapters as ad

    for kind in ("subject", "motion"):
        old = tmp_path / kind
        shutil.copytree(tiny_learned[kind], old)
        info = read_json(old / f"{kind}.json")
        assert info["method"] == "dreamvideo"
        for key in ("method", "trainable_parameters", "training_seconds"):  # what the previous format lacked
            del info[key]
        (old / f"{kind}.json").write_text(json.dumps(info))
        assert methods.training_record(old) == methods.training_record(tiny_learned[kind])
        new_pipe, old_pipe = fresh(tiny_base), fresh(tiny_base)
        load = "load_subject" if kind == "subject" else "load_motion"
        assert getattr(old_pipe, load)(old) == getattr(new_pipe, load)(tiny_learned[kind])
        name = "identity" if kind == "subject" else "motion"
        a, b = ad.adapter_state_dict(old_pipe.unet, name), ad.adapter_state_dict(new_pipe.unet, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
