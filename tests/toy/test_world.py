"""The toy video world: exact rendering, captions, held-out combinations and customization data."""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest
from PIL import Image, ImageSequence

from dreamvideo.toy import world as w


def _pretraining_specs(n: int, seed: int = 0) -> list[w.ClipSpec]:
    rng = np.random.default_rng(seed)
    return [w.sample_pretraining_spec(rng) for _ in range(n)]


def test_vocabulary_colours_stand_out_from_every_background():
    colors = np.array(list(w.COLORS.values()), dtype=float)
    backgrounds = np.array(list(w.BACKGROUND_COLORS.values()), dtype=float)
    to_background = np.linalg.norm(colors[:, None] - backgrounds[None], axis=-1)
    between = [np.linalg.norm(a - b) for a, b in itertools.combinations(colors, 2)]
    print(f"min colour-background distance {to_background.min():.0f}, min colour-colour {min(between):.0f}")
    assert to_background.min() >= 85
    assert min(between) >= 80
    assert len(w.COLORS) >= 8 and len(w.SHAPES) >= 6 and len(w.MOTIONS) >= 10 and len(w.BACKGROUNDS) >= 5
    assert not set(w.NOVEL_MOTIONS) & set(w.MOTIONS)
    # the validation subject and motion are held out like the novel ones and disjoint from them
    assert not set(w.VALIDATION_MOTIONS) & set(w.MOTIONS + w.NOVEL_MOTIONS)
    assert not set(w.VALIDATION_SUBJECTS) & set(w.NOVEL_SUBJECTS)
    assert set(w.CUSTOM_SUBJECTS) == set(w.NOVEL_SUBJECTS) | set(w.VALIDATION_SUBJECTS)


def test_render_clip_is_exact_deterministic_and_fast():
    specs = _pretraining_specs(60)
    start = time.perf_counter()
    clips = [w.render_clip(spec) for spec in specs]
    per_clip_ms = (time.perf_counter() - start) / len(specs) * 1000
    print(f"render_clip: {per_clip_ms:.2f} ms per 8x64x64 clip")
    assert per_clip_ms < 10
    for spec, clip in zip(specs, clips, strict=True):
        assert (
            clip.frames.shape == (w.NUM_FRAMES, w.IMAGE_SIZE, w.IMAGE_SIZE, 3)
            and clip.frames.dtype == np.uint8
        )
        assert clip.masks.shape == clip.frames.shape[:3] and clip.masks.dtype == bool
        assert clip.centers.shape == (w.NUM_FRAMES, 2) and clip.scales.shape == (w.NUM_FRAMES,)
        # outside the mask each frame is exactly the background; inside, it is not
        background = w.render_background(spec.background, spec.texture_seed)
        assert np.array_equal(
            clip.frames[~clip.masks], np.broadcast_to(background, clip.frames.shape)[~clip.masks]
        )
        assert clip.masks.sum(axis=(1, 2)).min() > 20
        # the sprite stays inside the frame and its centroid follows the reported centre
        assert not clip.masks[:, [0, -1], :].any() and not clip.masks[:, :, [0, -1]].any()
        assert np.all(np.abs(clip.centers - clip.centers.clip(0, w.IMAGE_SIZE)) == 0)
    again = w.render_clip(specs[0])
    assert np.array_equal(again.frames, clips[0].frames) and np.array_equal(again.masks, clips[0].masks)


def test_render_clip_other_sizes_and_frame_counts():
    spec = _pretraining_specs(1, seed=3)[0]
    clip = w.render_clip(spec, num_frames=16, size=32)
    assert clip.frames.shape == (16, 32, 32, 3)
    small, big = clip.masks.sum(axis=(1, 2)).mean(), w.render_clip(spec).masks.sum(axis=(1, 2)).mean()
    assert 0.15 < small / big < 0.35  # a quarter of the area at half the side


def test_every_motion_moves_visibly_and_differently():
    tracks = {}
    for motion in w.MOTIONS + w.NOVEL_MOTIONS:
        offsets, scale = w.trajectory(motion, w.NUM_FRAMES, 12.0, 0.0)
        tracks[motion] = np.concatenate([offsets, 25 * np.log(scale)[:, None]], axis=1)  # 25 px per e-fold
    for a, b in itertools.combinations(tracks, 2):
        gap = np.abs(np.diff(tracks[a], axis=0) - np.diff(tracks[b], axis=0)).sum()
        assert gap > 15, f"{a} and {b} have nearly the same per-frame displacements"
    for motion in w.MOTIONS + w.NOVEL_MOTIONS:
        steps = np.abs(np.diff(tracks[motion], axis=0)).sum(axis=1)
        if motion != "stays still":
            assert steps.sum() > 15 and steps.min() > 0.5, motion  # no repeated frame (GIF would merge it)
    with pytest.raises(w.WorldError, match="unknown motion"):
        w.trajectory("teleports")


def test_captions():
    spec = w.ClipSpec(w.Sprite("star", "red", "striped"), "green grass", "bounces")
    assert w.caption(spec) == "a red striped star bounces on green grass"
    assert (
        w.caption(w.ClipSpec(w.Sprite("circle", "orange"), "blue sky", "circles"))
        == "an orange circle circles on blue sky"
    )
    novel = w.ClipSpec(w.NOVEL_SUBJECTS["totem"], "gray road", "spiral")
    assert w.caption(novel) == "a square moves on gray road"
    assert w.caption(novel, subject_word="<sks> square") == "a <sks> square moves on gray road"
    assert w.caption(spec, motion_word="<mot> moves") == "a red striped star <mot> moves on green grass"


def test_pretraining_never_samples_held_out_combinations_but_uses_every_word():
    specs = _pretraining_specs(3000)
    assert not any(w.is_held_out(s) for s in specs)
    seen = {(s.sprite.color, s.sprite.shape, s.motion) for s in specs}
    words = {s.sprite.color for s in specs}, {s.sprite.shape for s in specs}, {s.motion for s in specs}
    assert words == (set(w.COLORS), set(w.SHAPES), set(w.MOTIONS))
    assert {s.background for s in specs} == set(w.BACKGROUNDS) and {s.sprite.pattern for s in specs} == set(
        w.PATTERNS
    )
    triples = w.held_out_triples()
    fraction = len(triples) / (len(w.COLORS) * len(w.SHAPES) * len(w.MOTIONS))
    print(f"held out: {len(triples)} (colour, shape, motion) triples = {fraction:.1%}")
    assert 0.05 < fraction < 0.25
    pairs_in_training = {(c, s) for c, s, _ in seen}
    assert all(
        (c, s) in pairs_in_training for c, s, _ in triples
    )  # each held-out pair is seen with other motions
    assert _pretraining_specs(5, seed=1) == _pretraining_specs(5, seed=1)


def test_anchor_jitter_centres_each_path_in_the_frame():
    def path_centres(jitter, n=200):
        rng = np.random.default_rng(3)
        out = []
        for _ in range(n):
            spec = w.sample_pretraining_spec(rng, anchor_jitter=jitter)
            offsets, _ = w.trajectory(spec.motion, w.NUM_FRAMES, spec.amplitude, spec.phase)
            centre = np.asarray(spec.anchor) + (offsets.min(0) + offsets.max(0)) / 2
            out.append(centre - w.IMAGE_SIZE / 2)
        return np.abs(np.array(out))

    assert path_centres(0.0).max() < 0.5  # centred (asymmetric sizes move it by well under a pixel)
    assert path_centres(3.0).max() <= 3.5 and path_centres(3.0).max() > 2.0
    assert path_centres(None).max() > 10  # the default: anywhere the path fits


def test_held_out_specs():
    specs = w.held_out_specs(40, seed=2)
    assert len(specs) == 40 and all(w.is_held_out(s) for s in specs)
    assert (
        len({(s.sprite.color, s.sprite.shape, s.motion) for s in specs}) == 40
    )  # cycles over distinct triples
    assert specs == w.held_out_specs(40, seed=2) and specs != w.held_out_specs(40, seed=3)
    assert not w.is_held_out(w.ClipSpec(w.NOVEL_SUBJECTS["eye"], "blue sky", "moves left"))


def test_subject_images():
    photos = w.subject_images("eye", n=5, seed=0)
    assert len(photos) == 5
    for image, mask in photos:
        assert (
            image.shape == (w.IMAGE_SIZE, w.IMAGE_SIZE, 3) and image.dtype == np.uint8 and mask.dtype == bool
        )
        assert mask.sum() > 100
    backgrounds = {tuple(np.median(img[~m], axis=0)) for img, m in photos}
    assert len(backgrounds) == 5  # a different background in every photo
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(photos, w.subject_images("eye", 5, 0), strict=True))
    assert not np.array_equal(photos[0][0], w.subject_images("eye", 5, 1)[0][0])
    with pytest.raises(w.WorldError, match="unknown subject"):
        w.subject_images("dragon")
    for name in w.VALIDATION_SUBJECTS:  # the validation subject has photos like the novel ones
        assert all(mask.sum() > 100 for _, mask in w.subject_images(name, n=5))


def test_motion_videos_share_only_the_motion():
    for name in w.NOVEL_MOTIONS + w.VALIDATION_MOTIONS:
        specs = w.motion_specs(name, n=3)
        assert len({s.sprite for s in specs}) == 3 and len({s.background for s in specs}) == 3
        assert len({s.sprite.color for s in specs}) == 3 and len({s.sprite.shape for s in specs}) == 3
        centers = [w.render_clip(s).centers for s in specs]
        steps = [np.diff(c, axis=0).ravel() for c in centers]
        for a, b in itertools.combinations(steps, 2):
            assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99
    vocabulary = {"a", "an", "on", w.GENERIC_MOTION_WORD} | set(w.COLORS) | set(w.SHAPES) | set(w.PATTERNS)
    vocabulary |= {word for phrase in w.MOTIONS + w.BACKGROUNDS for word in phrase.split()}
    for frames, text in w.motion_videos("figure-eight", n=3):
        assert frames.shape == (w.NUM_FRAMES, w.IMAGE_SIZE, w.IMAGE_SIZE, 3)
        assert set(text.split()) <= vocabulary and " moves on " in text


def test_write_folders(tmp_path):
    w.write_subject_folder("badge", tmp_path / "subject", n=3)
    masks = sorted((tmp_path / "subject" / "masks").iterdir())
    assert [p.name for p in masks] == ["00.png", "01.png", "02.png"]
    assert sorted(p.name for p in (tmp_path / "subject" / "images").iterdir()) == [
        "00.png",
        "01.png",
        "02.png",
    ]
    mask = Image.open(masks[0])
    assert mask.mode == "L" and set(np.unique(np.array(mask))) == {0, 255}
    assert np.array_equal(np.array(mask) == 255, w.subject_images("badge", 3)[0][1])

    w.write_motion_folder("pendulum", tmp_path / "motion", n=2)
    captions = json.loads((tmp_path / "motion" / "captions.json").read_text())
    assert set(captions) == {"00.gif", "01.gif"}
    for (frames, text), name in zip(w.motion_videos("pendulum", 2), ["00.gif", "01.gif"], strict=True):
        gif = Image.open(tmp_path / "motion" / name)
        read = np.stack([np.array(f.convert("RGB")) for f in ImageSequence.Iterator(gif)])
        assert read.shape == frames.shape and gif.info["duration"] in (120, 130)  # GIF stores centiseconds
        assert np.abs(read.astype(int) - frames).max() <= 10  # one shared 256-colour palette is enough
        assert captions[name] == text


def test_swap_word_changes_exactly_the_asked_word_of_the_caption():
    rng = np.random.default_rng(0)
    spec = w.sample_pretraining_spec(rng)
    phrase = {
        "motion": lambda s: s.motion,
        "color": lambda s: s.sprite.color,
        "shape": lambda s: s.sprite.shape,
        "background": lambda s: s.background,
    }
    for kind in w.WORD_KINDS:
        other = w.swap_word(spec, kind, rng)
        assert phrase[kind](other) != phrase[kind](spec)
        assert w.caption(other) == w.caption(spec).replace(phrase[kind](spec), phrase[kind](other))
        assert all(phrase[k](other) == phrase[k](spec) for k in w.WORD_KINDS if k != kind)
    with pytest.raises(w.WorldError, match="unknown word kind"):
        w.swap_word(spec, "size", rng)


def test_foreground_image_draws_the_prompted_sprite_on_its_background():
    image = w.foreground_image("a red striped circle moves on green grass")
    assert image.shape == (w.IMAGE_SIZE, w.IMAGE_SIZE, 3)
    spec = w.ClipSpec(w.Sprite("circle", "red", "striped"), "green grass", "stays still", (32.0, 32.0), 12.0)
    assert np.array_equal(image, w.render_clip(spec, num_frames=1).frames[0])
    assert w.foreground_image("an orange star moves on dark night") is not None
    for prompt in ("a <sks> square moves on blue sky", "a red circle moves", "red circle on blue sky"):
        assert w.foreground_image(prompt) is None
