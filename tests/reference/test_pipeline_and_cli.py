"""The appearance encoder end to end on the tiny base: caching per step, composition, training, CLI, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dreamvideo import reference as ref
from dreamvideo.fileio import DreamVideoError, read_json


def _pipe(tiny_base):
    from dreamvideo.pipeline import DreamVideoPipeline

    pipe = DreamVideoPipeline.from_pretrained(tiny_base, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _untrained_encoder(pipe, folder):
    encoder = ref.AppearanceEncoder.from_unet(pipe.unet)
    for p in encoder.trainable_named_parameters().values():  # make it differ from the base's copy
        p.data.add_(0.05 * torch.randn_like(p))
    folder.mkdir(parents=True, exist_ok=True)
    ref.save_encoder(
        encoder, folder, {"type": "dreamvideo-appearance-encoder", "base": pipe.base_description()}
    )
    return folder


def _image(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8))


def test_features_are_computed_once_per_step_and_equal_uncached_features(tiny_base, tmp_path, monkeypatch):
    pipe = _pipe(tiny_base)
    pipe.load_appearance_encoder(_untrained_encoder(pipe, tmp_path / "enc"))
    encoder = pipe.appearance_encoder
    kw = dict(num_frames=3, num_inference_steps=3, guidance_scale=5.0, progress=False)
    plain = pipe("a dog", generator=torch.Generator().manual_seed(0), **kw).frames[0]
    with_ref = pipe(
        "a dog", reference_image=_image(), generator=torch.Generator().manual_seed(0), **kw
    ).frames[0]
    assert encoder.runs == 3  # once per denoising step: not per frame (3) nor per guidance branch (2)
    assert not np.array_equal(plain, with_ref)
    again = pipe("a dog", generator=torch.Generator().manual_seed(0), **kw).frames[0]
    assert np.array_equal(again, plain)  # features cleared after the call
    calls = []
    hooked = [
        a.processor
        for a in pipe.unet.modules()
        if isinstance(getattr(a, "processor", None), ref.ReferenceAttnProcessor)
    ]
    before = sum(p.calls for p in hooked)
    real_step = ref.ReferenceFeatureCache.step

    def uncached(self, unet, t):  # no cache: the encoder on the full guided batch, every call
        calls.append(int(t))
        batch = self.latents.repeat(self.copies, 1, 1, 1)
        tt = torch.full((len(batch),), int(t), dtype=torch.long)
        with torch.no_grad():
            ref.set_reference_features(unet, self.encoder(batch, tt, self.text.repeat(self.copies, 1, 1)))

    monkeypatch.setattr(ref.ReferenceFeatureCache, "step", uncached)
    slow = pipe("a dog", reference_image=_image(), generator=torch.Generator().manual_seed(0), **kw).frames[0]
    assert np.abs(slow.astype(int) - with_ref.astype(int)).max() <= 1 and len(calls) == 3
    monkeypatch.setattr(ref.ReferenceFeatureCache, "step", real_step)
    assert sum(p.calls for p in hooked) - before == 3 * len(hooked)  # every hooked block, once per UNet call
    pipe.unload_appearance_encoder()
    assert ref.reference_state(pipe.unet) is None
    with pytest.raises(DreamVideoError, match="appearance encoder"):
        pipe("a dog", reference_image=_image(), **kw)


def test_cache_reuses_features_within_a_step_and_tiles_them_for_both_branches():
    from conftest import build_tiny_unet

    base = build_tiny_unet().double().eval()
    encoder = ref.AppearanceEncoder.from_unet(base)
    ref.attach_reference_attention(base)
    latents, text = torch.randn(2, 4, 8, 8, dtype=torch.float64), torch.zeros(2, 4, 32, dtype=torch.float64)
    cache = ref.ReferenceFeatureCache(encoder, latents, text, copies=2)
    first = cache.step(base, 400)
    cache.step(base, 400)
    assert encoder.runs == 1
    direct = encoder(latents, torch.tensor([400, 400]), text)
    for path, f in first.items():
        assert f.shape[0] == 4 and torch.equal(f[:2], f[2:])
        torch.testing.assert_close(f[:2], direct[path], rtol=0, atol=1e-12)
    cache.step(base, 300)
    assert encoder.runs == 3  # a new timestep: recomputed (the direct call above is the second run)


def test_composes_with_a_subject_and_a_motion_whose_guidance_takes_the_reference(
    tiny_base, tiny_data, tmp_path
):
    from dreamvideo import adapters as ad
    from dreamvideo.methods import MotionSettings, SubjectSettings, learn_motion, learn_subject
    from dreamvideo.training import StageConfig

    pipe = _pipe(tiny_base)
    one = StageConfig(steps=1, lr=1e-3, batch_size=1)
    learn_subject(
        pipe,
        tiny_data["subject"],
        tmp_path / "s",
        SubjectSettings(init_word="dog", textual_inversion=one, identity=one),
        progress=False,
    )
    learn_motion(
        _pipe(tiny_base),
        tiny_data["motion"],
        tmp_path / "m",
        MotionSettings(num_frames=2, stage=one),
        progress=False,
    )
    pipe = _pipe(tiny_base)
    token = pipe.load_subject(tmp_path / "s")
    pipe.load_motion(tmp_path / "m")
    pipe.load_appearance_encoder(_untrained_encoder(pipe, tmp_path / "enc"))
    seen = []
    real = pipe.unet.forward

    def spy(*args, **kwargs):
        seen.append(ad.get_adapter_condition(pipe.unet, "motion"))
        return real(*args, **kwargs)

    pipe.unet.forward = spy
    frames = pipe(
        f"a {token} dog", reference_image=_image(), num_frames=2, num_inference_steps=2, progress=False
    ).frames[0]
    assert frames.shape == (2, 16, 16, 3)
    assert seen and all(
        c is not None and c.embeds is not None for c in seen
    )  # appearance guidance from the image
    assert torch.equal(
        seen[0].embeds[0], torch.zeros_like(seen[0].embeds[0])
    )  # unconditional branch: zero vector


def _pairs_folder(root, n=2):
    from dreamvideo.video_io import write_video

    for i in range(n):
        (root / f"p{i}").mkdir(parents=True)
        _image(i).save(root / f"p{i}" / "reference.png")
        frames = np.random.default_rng(i).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
        write_video(frames, root / f"p{i}" / "video.gif", fps=8)
        (root / f"p{i}" / "caption.txt").write_text("a dog moves left")
    return root


def test_cli_learns_resumes_and_generates(tiny_base, tiny_data, tmp_path, capsys):
    from dreamvideo.cli import main

    pairs, out = _pairs_folder(tmp_path / "pairs"), tmp_path / "encoders" / "mine"
    args = [
        "learn-appearance-encoder",
        "--base",
        str(tiny_base),
        "--pairs",
        str(pairs),
        "--out",
        str(out),
        "--steps",
        "2",
        "--checkpoint-every",
        "1",
        "--num-frames",
        "2",
        "--batch-size",
        "1",
        "--lr",
        "1e-3",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main(args) == 0
    info = read_json(out / ref.ENCODER_INFO)
    assert (
        info["training"]["steps_done"] == 2 and len(info["losses"]) == 2 and info["trainable_parameters"] > 0
    )
    assert info["reference"]["blocks"] == ["mid", "up"]
    assert (out / "checkpoints" / "appearance_encoder" / "step-000001" / ref.ENCODER_FILE).is_file()
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err  # finished result protected
    assert main(args + ["--resume", "--steps", "3"]) == 0  # continues from step 2
    assert read_json(out / ref.ENCODER_INFO)["losses"][:2] == info["losses"]
    _image().save(tmp_path / "photo.png")
    clip = tmp_path / "clip.gif"
    gen = [
        "generate",
        "--base",
        str(tiny_base),
        "--appearance-encoder",
        str(out),
        "--reference-image",
        str(tmp_path / "photo.png"),
        "--prompt",
        "a dog moves left",
        "--out",
        str(clip),
        "--steps",
        "2",
        "--frames",
        "2",
        "--device",
        "cpu",
        "--quiet",
        "--overwrite",
    ]
    assert main(gen) == 0 and clip.is_file()
    # bad input: a clear message, exit code 2
    assert main(gen[:3] + gen[5:]) == 2 and "go together" in capsys.readouterr().err
    (tmp_path / "broken.png").write_text("not an image")
    assert main(gen[:6] + [str(tmp_path / "broken.png")] + gen[7:]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert (
        main(args[:3] + ["--pairs", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")] + args[7:]) == 2
    )
    assert "pairs folder not found" in capsys.readouterr().err
    assert main(args[:7] + ["--steps", "0"] + args[9:]) == 2


def test_encoder_refuses_another_base_and_bad_pairs(tiny_base, tmp_path):
    from conftest import build_tiny_base

    pipe = _pipe(tiny_base)
    folder = _untrained_encoder(pipe, tmp_path / "enc")
    other = _pipe(build_tiny_base(tmp_path / "wide", width=16))
    with pytest.raises(DreamVideoError, match="does not fit"):
        other.load_appearance_encoder(folder)
    from dreamvideo.reference.training import load_pairs

    (tmp_path / "pairs" / "p0").mkdir(parents=True)
    with pytest.raises(DreamVideoError, match="reference image"):
        load_pairs(tmp_path / "pairs", 16)
    with pytest.raises(DreamVideoError, match="--pairs is required"):
        from dreamvideo.reference.training import EncoderSettings, learn_appearance_encoder

        learn_appearance_encoder(pipe, tmp_path / "o", EncoderSettings())


def test_toy_world_pairs_show_one_vocabulary_sprite_on_two_backgrounds():
    from dreamvideo.reference.training import toy_pairs
    from dreamvideo.toy import oracle, world

    data = toy_pairs(4, num_frames=3, size=32, seed=0)
    assert data.references.shape == (4, 3, 32, 32) and all(v.shape == (3, 3, 32, 32) for v in data.videos)
    for i, caption in enumerate(data.captions):
        assert caption.split()[1] in world.SHAPES  # named by shape only: colour comes from the reference
        to8 = lambda x: ((x + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()  # noqa: E731
        assert oracle.background_class(to8(data.references[i])[None]) not in caption
