"""Oracle metrics: near-perfect on rendered ground truth, robust to blur and noise, low on wrong videos."""

from __future__ import annotations

import numpy as np
import pytest

from dreamvideo.toy import oracle as o
from dreamvideo.toy import world as w


def degrade(frames: np.ndarray, rng: np.random.Generator, noise: float = 10.0) -> np.ndarray:
    """A stand-in for a generated video: [1 2 1] blur along x and y, then Gaussian pixel noise."""
    x = frames.astype(np.float64)
    for axis in (1, 2):
        p = np.pad(x, [(1, 1) if a == axis else (0, 0) for a in range(4)], mode="edge")
        lo, mid, hi = (np.take(p, range(i, i + x.shape[axis]), axis=axis) for i in range(3))
        x = (lo + 2 * mid + hi) / 4
    return np.clip(x + rng.normal(0, noise, x.shape), 0, 255).astype(np.uint8)


def _scores(specs: list[w.ClipSpec], rng: np.random.Generator | None = None) -> dict[str, float]:
    iou, hits = [], {"background": 0, "color": 0, "motion": 0}
    for spec in specs:
        clip = w.render_clip(spec)
        frames = clip.frames if rng is None else degrade(clip.frames, rng)
        masks = o.segment_foreground(frames)
        iou.append((masks & clip.masks).sum() / (masks | clip.masks).sum())
        hits["background"] += o.background_class(frames) == spec.background
        hits["color"] += o.dominant_color(frames, masks) == spec.sprite.color
        hits["motion"] += o.motion_class(frames, masks) == spec.motion
    return {"iou_mean": float(np.mean(iou)), "iou_p05": float(np.percentile(iou, 5))} | {
        k: v / len(specs) for k, v in hits.items()
    }


@pytest.fixture(scope="module")
def pretraining_specs() -> list[w.ClipSpec]:
    rng = np.random.default_rng(123)
    return [w.sample_pretraining_spec(rng) for _ in range(150)]


def test_ground_truth_clips_score_near_perfectly(pretraining_specs):
    scores = _scores(pretraining_specs)
    print("clean vocabulary clips:", {k: round(v, 3) for k, v in scores.items()})
    assert scores["iou_mean"] > 0.97 and scores["iou_p05"] > 0.9
    assert scores["background"] >= 0.99 and scores["color"] >= 0.95 and scores["motion"] >= 0.95


def test_blurred_noisy_clips_are_still_classified(pretraining_specs):
    scores = _scores(pretraining_specs[:100], np.random.default_rng(0))
    print("blurred + noisy clips:", {k: round(v, 3) for k, v in scores.items()})
    assert scores["iou_mean"] > 0.85
    assert scores["background"] >= 0.95 and scores["color"] >= 0.9 and scores["motion"] >= 0.9


def test_held_out_prompts_are_classified():
    scores = _scores(w.held_out_specs(63, seed=0))
    print("held-out combinations:", {k: round(v, 3) for k, v in scores.items()})
    assert scores["iou_mean"] > 0.97 and min(scores["background"], scores["color"], scores["motion"]) >= 0.95


def test_wrong_prompt_is_detected(pretraining_specs):
    spec = next(s for s in pretraining_specs if s.motion == "moves left")
    frames = w.render_clip(spec).frames
    other = w.ClipSpec(
        w.Sprite(spec.sprite.shape, "blue" if spec.sprite.color != "blue" else "red"),
        next(b for b in w.BACKGROUNDS if b != spec.background),
        "moves right",
    )
    right, wrong = o.evaluate_video(frames, prompt_spec=spec), o.evaluate_video(frames, prompt_spec=other)
    assert right["background_ok"] == right["color_ok"] == right["motion_ok"] == 1.0
    assert wrong["background_ok"] == wrong["color_ok"] == wrong["motion_ok"] == 0.0
    assert right["motion"] == "moves left" and right["color"] == spec.sprite.color


def test_static_and_noise_videos():
    still = np.repeat(w.subject_images("eye", 1)[0][0][None], w.NUM_FRAMES, axis=0)
    assert o.motion_class(still) == "stays still"
    assert o.temporal_consistency(still) == 1.0
    noise = np.random.default_rng(0).integers(0, 256, (w.NUM_FRAMES, 64, 64, 3), dtype=np.uint8)
    clean = w.motion_videos("spiral", 1)[0][0]
    tc_clean, tc_noise = o.temporal_consistency(clean), o.temporal_consistency(noise)
    flicker = np.stack(
        [w.render_background(b, seed=i) for i, b in enumerate(w.BACKGROUNDS * 2)][: w.NUM_FRAMES]
    )
    tc_flicker = o.temporal_consistency(flicker)
    print(
        f"temporal consistency: clean {tc_clean:.3f}, flickering backgrounds {tc_flicker:.3f}, noise {tc_noise:.3f}"
    )
    assert tc_clean > 0.95 and tc_noise < 0.75 and tc_flicker < 0.85


def test_background_only_video_has_no_foreground():
    frames = np.stack([w.render_background("green grass", seed=4)] * w.NUM_FRAMES)
    frames = degrade(frames, np.random.default_rng(3))
    assert o.segment_foreground(frames).sum() == 0 and o.segment_foreground(frames[0]).sum() == 0
    assert o.motion_class(frames) == "stays still" and o.background_class(frames) == "green grass"
    photos = w.subject_images("eye", 2)
    assert o.subject_fidelity(frames, *zip(*photos, strict=True)) == 0.0


def test_subject_fidelity_separates_subjects():
    rng = np.random.default_rng(1)
    refs = {name: w.subject_images(name, 5, seed=0) for name in w.NOVEL_SUBJECTS}
    noise = rng.integers(0, 256, (w.NUM_FRAMES, 64, 64, 3), dtype=np.uint8)
    for name, subject in w.NOVEL_SUBJECTS.items():
        spec = w.ClipSpec(subject, "gray road", "circles", anchor=(30.0, 34.0), size=11.0, amplitude=12.0)
        video = w.render_clip(spec).frames
        row = {other: o.subject_fidelity(video, *zip(*refs[other], strict=True)) for other in refs}
        blurred = o.subject_fidelity(degrade(video, rng), *zip(*refs[name], strict=True))
        vocab = w.render_clip(w.ClipSpec(w.Sprite(subject.class_word, "red"), "gray road", "circles")).frames
        plain = o.subject_fidelity(vocab, *zip(*refs[name], strict=True))
        from_noise = o.subject_fidelity(noise, *zip(*refs[name], strict=True))
        print(
            f"subject {name}: { ({k: round(v, 3) for k, v in row.items()}) }, blurred {blurred:.3f}, "
            f"red {subject.class_word} {plain:.3f}, noise {from_noise:.3f}"
        )
        assert row[name] > 0.8 and blurred > 0.7
        assert max(v for k, v in row.items() if k != name) < 0.4
        assert plain < 0.45 and from_noise < 0.45


def test_motion_fidelity_separates_motions():
    rng = np.random.default_rng(2)
    refs = {name: [v for v, _ in w.motion_videos(name, 3, seed=0)] for name in w.NOVEL_MOTIONS}
    still = np.repeat(refs["spiral"][0][:1], w.NUM_FRAMES, axis=0)
    noise = rng.integers(0, 256, (w.NUM_FRAMES, 64, 64, 3), dtype=np.uint8)
    for name in w.NOVEL_MOTIONS:
        video = w.motion_videos(name, 1, seed=5)[0][0]  # another sprite, background and position
        row = {other: o.motion_fidelity(video, refs[other]) for other in refs}
        blurred = o.motion_fidelity(degrade(video, rng), refs[name])
        long_refs = [w.render_clip(s, num_frames=16).frames for s in w.motion_specs(name, 2, seed=1)]
        resampled = o.motion_fidelity(video, long_refs)
        print(
            f"motion {name}: { ({k: round(v, 2) for k, v in row.items()}) }, blurred {blurred:.3f}, "
            f"16-frame refs {resampled:.3f}"
        )
        assert row[name] > 0.95 and blurred > 0.95 and resampled > 0.9
        assert max(v for k, v in row.items() if k != name) < 0.5
        assert (
            abs(o.motion_fidelity(still, refs[name])) < 0.1
            and abs(o.motion_fidelity(noise, refs[name])) < 0.3
        )


def test_segmentation_of_single_photos():
    ious = []
    for name in w.NOVEL_SUBJECTS:
        for image, mask in w.subject_images(name, 5, seed=4):
            pred = o.segment_foreground(image)[0]
            ious.append((pred & mask).sum() / (pred | mask).sum())
    print(f"single-photo segmentation IoU: mean {np.mean(ious):.3f}, min {np.min(ious):.3f}")
    assert np.min(ious) > 0.9


def test_evaluate_video_keys_and_bad_input():
    spec = w.ClipSpec(w.NOVEL_SUBJECTS["totem"], "blue sky", "figure-eight", anchor=(32.0, 32.0), size=10.0)
    frames = w.render_clip(spec).frames
    result = o.evaluate_video(
        frames,
        prompt_spec=spec,
        subject_refs=w.subject_images("totem", 3),
        motion_refs=w.motion_videos("figure-eight", 2),
    )
    assert set(result) == {
        "temporal_consistency",
        "background",
        "background_ok",
        "subject_fidelity",
        "motion_fidelity",
    }
    assert (
        result["background"] == "blue sky"
        and result["subject_fidelity"] > 0.8
        and result["motion_fidelity"] > 0.95
    )
    assert o.evaluate_video(frames.astype(np.float32) / 255)["temporal_consistency"] == pytest.approx(
        result["temporal_consistency"], abs=1e-6
    )
    with pytest.raises(o.OracleError, match="shape"):
        o.segment_foreground(np.zeros((8, 64, 64)))
    with pytest.raises(o.OracleError, match="empty"):
        o.subject_fidelity(frames, [frames[0]], [np.zeros((64, 64), bool)])
