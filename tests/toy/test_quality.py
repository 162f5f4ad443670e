"""The quality bar's coherence checks: true clips pass, a background switch or a sprite jump fails."""

from __future__ import annotations

import numpy as np

from dreamvideo.toy import oracle, quality, world


def test_true_clips_are_coherent():
    for spec in world.held_out_specs(n=24, seed=3):
        clip = world.render_clip(spec)
        masks = oracle.segment_foreground(clip.frames)
        assert quality.steady_background(clip.frames), spec
        assert quality.smooth_track(clip.frames, masks, spec), spec


def test_a_background_switch_mid_clip_is_caught():
    spec = world.held_out_specs(n=1, seed=0)[0]
    other = "dark night" if spec.background != "dark night" else "yellow sand"
    a = world.render_clip(spec).frames
    b = world.render_clip(world.ClipSpec(**{**spec.__dict__, "background": other})).frames
    switched = np.concatenate([a[:4], b[4:]])
    assert quality.steady_background(a) and not quality.steady_background(switched)


def test_a_sprite_jump_is_caught():
    spec = world.ClipSpec(
        world.Sprite("circle", "red"), "green grass", "stays still", anchor=(16.0, 16.0), size=6.0
    )
    still = world.render_clip(spec).frames
    far = world.render_clip(world.ClipSpec(**{**spec.__dict__, "anchor": (46.0, 46.0)})).frames
    jumped = np.concatenate([still[:4], far[4:]])  # a 42-pixel jump where the true motion moves 0
    for video, expected in ((still, True), (jumped, False)):
        masks = oracle.segment_foreground(video)
        assert quality.smooth_track(video, masks, spec) is expected


def test_main_samples_with_the_guidance_scale_asked_for(monkeypatch, tmp_path):
    from dreamvideo.toy import quality

    seen = {}

    def fake_measure(n, steps, **kwargs):
        seen.update(kwargs, n=n, steps=steps)
        return {"accuracy": {}, "stderr": {}, "met": {}}

    monkeypatch.setattr(quality, "measure", fake_measure)
    assert quality.main(["--n", "2", "--guidance-scale", "5", "--seed", "7", "--out", str(tmp_path)]) == 0
    assert seen["guidance"] == 5.0 and seen["n"] == 2 and seen["seed"] == 7
    assert quality.main(["--n", "2", "--out", str(tmp_path)]) == 0 and seen["guidance"] is None
    assert seen["seed"] == 0


def test_by_motion_gives_each_prompted_motion_its_own_rates():
    checks = {k: True for k in quality.TARGETS}
    rows = [
        {"prompted_motion": "circles", **checks, "smooth_track": False},
        {"prompted_motion": "circles", **checks},
        {"prompted_motion": "grows", **checks, "color": False},
    ]
    rates = quality.by_motion(rows)
    assert (
        rates["circles"]["n"] == 2
        and rates["circles"]["smooth_track"] == 0.5
        and rates["circles"]["color"] == 1
    )
    assert rates["grows"] == {"n": 1, **{k: float(k != "color") for k in quality.TARGETS}}
