"""Motion metrics: DMT track motion fidelity and VBench dynamic degree, by hand, on the toy world with the oracle's
exact sprite tracks, with the OpenCV fallbacks, and the skip behaviour of unavailable trackers."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from dreamvideo import motion_metrics as mm
from dreamvideo.cli import main
from dreamvideo.toy import oracle, world

try:
    import cv2  # noqa: F401

    HAVE_CV2, NO_CV2 = True, ""
except ImportError as _err:
    HAVE_CV2, NO_CV2 = False, f"opencv-python-headless is not installed ({_err})"
needs_cv2 = pytest.mark.skipif(not HAVE_CV2, reason=NO_CV2)


def _line(direction, frames=5, start=(0.0, 0.0), step=1.0) -> np.ndarray:
    """One tracklet (F, 2) moving ``step`` pixels a frame along ``direction``."""
    d = np.asarray(direction, np.float64)
    return np.asarray(start) + step * np.arange(frames)[:, None] * d / np.linalg.norm(d)


def _mf(ref, gen, **kw) -> float:
    return mm.motion_fidelity_from_tracks(np.asarray(ref), np.asarray(gen), **kw)


# ----------------------------------------------------------------------------- hand-computed cases


def test_identical_reversed_orthogonal():
    a = np.stack([_line((1, 0)), _line((0, 1), start=(5, 5)), _line((1, 1), start=(2, 9))])
    assert _mf(a, a) == pytest.approx(1.0)
    assert _mf(a[:1], -a[:1]) == pytest.approx(-1.0)  # every step reversed
    assert _mf(a[:1], a[1:2]) == pytest.approx(0.0)  # right vs down
    assert _mf(a[:1], a[2:3]) == pytest.approx(np.sqrt(0.5))  # 45 degrees
    # amplitude and position do not matter, only direction and timing
    assert _mf(a, 3 * a + 7) == pytest.approx(1.0)


def test_correlation_is_the_mean_cosine_over_steps():
    ref = np.array([[[0, 0], [1, 0], [2, 0], [3, 0]]], float)  # right, right, right
    gen = np.array([[[0, 0], [1, 0], [1, 1], [0, 1]]], float)  # right, down, left: cosines 1, 0, -1
    assert mm.track_correlation(ref, gen)[0, 0] == pytest.approx(0.0)
    gen2 = np.array([[[0, 0], [1, 0], [2, 0], [2, 1]]], float)  # right, right, down: 1, 1, 0
    assert mm.track_correlation(ref, gen2)[0, 0] == pytest.approx(2 / 3)
    # a step not visible (at either end) in either track counts 0
    visible = np.array([[True, True, True, False]])
    assert mm.track_correlation(ref, ref, visible_b=visible)[0, 0] == pytest.approx(2 / 3)


def test_best_match_asymmetry():
    right, down = _line((1, 0)), _line((0, 1))
    ref, gen = np.stack([right, down]), np.stack([right])
    # ref -> gen: right finds right (1), down finds only right (0): 1/2; gen -> ref: right finds right: 1
    assert _mf(ref, gen) == pytest.approx(0.5 * (1.0 + 0.5))
    assert _mf(gen, ref) == pytest.approx(0.75)  # symmetric by construction
    corr = mm.track_correlation(ref, gen)
    assert corr.max(axis=1).mean() == pytest.approx(0.5) and corr.max(axis=0).mean() == pytest.approx(1.0)
    # the best match, not the mean: adding a reversed track to gen changes neither best match of ref's "right"
    gen3 = np.stack([right, -right, down])
    assert _mf(ref, gen3) == pytest.approx(
        0.5 * (1.0 + (1 + 0 + 1) / 3)
    )  # gen's -right matches nothing (max 0)


def test_resampling_to_the_generated_frame_count():
    tracks = np.array([[[0, 0], [2, 0], [4, 0]]], float)
    out, vis = mm.resample_tracks(tracks, 5)
    np.testing.assert_allclose(out[0, :, 0], [0, 1, 2, 3, 4])
    assert vis.all() and out.shape == (1, 5, 2)
    # a reference of 15 frames of the same motion as an 8-frame video scores 1 (without resampling: an error)
    t15 = np.linspace(0, 1, 15)
    t8 = np.linspace(0, 1, 8)
    ref = np.stack([np.stack([10 * t15, 10 * t15**2], axis=1)])
    gen = np.stack([np.stack([3 * t8, 3 * t8**2], axis=1)])
    assert _mf(ref, gen) == pytest.approx(1.0, abs=0.01)
    assert _mf(ref, -gen) == pytest.approx(-1.0, abs=0.01)
    # visibility: a resampled frame is visible when both frames it lies between are
    _, vis = mm.resample_tracks(tracks, 5, np.array([[True, True, False]]))
    assert vis[0].tolist() == [True, True, True, False, False]


def test_still_conventions():
    moving, still = _line((1, 0), step=2.0), np.zeros((5, 2))
    assert _mf([moving, still], [moving, still], moving_only=False) == pytest.approx(1.0)  # still vs still: 1
    assert mm.track_correlation([moving], [still], still=0.5)[0, 0] == 0.0  # still vs moving: 0
    assert _mf([moving], [still], still=0.5) == 0.0  # a still video scores 0 against a moving reference
    assert _mf([still], [still + 0.1], still=0.5) == 1.0  # both still (below the threshold)
    # moving only: static background points do not dilute the match of the moving ones
    background = np.repeat(np.arange(10.0)[:, None, None], 5, axis=1) * [1, 0]
    gen = np.concatenate([background, [-moving]])
    assert _mf(np.concatenate([background, [moving]]), gen, still=0.5) == pytest.approx(-1.0)
    assert _mf(np.concatenate([background, [moving]]), gen, still=0.5, moving_only=False) > 0.8


def test_grid_queries():
    q = mm.grid_queries(64, 32, 4)
    assert q.shape == (16, 2)
    np.testing.assert_allclose(sorted(set(q[:, 0])), [4, 12, 20, 28])
    np.testing.assert_allclose(sorted(set(q[:, 1])), [8, 24, 40, 56])


# ----------------------------------------------------------------------------- toy world, exact tracks


def _clip(motion: str, seed: int, pattern: str = "plain") -> world.RenderedClip:
    rng = np.random.default_rng(seed)
    sprite = world.Sprite(str(rng.choice(world.SHAPES)), str(rng.choice(list(world.COLORS))), pattern)
    return world.render_clip(
        world._random_spec(rng, sprite, str(rng.choice(world.BACKGROUNDS)), motion, phase=0.0)
    )


def _exact(clip: world.RenderedClip, grid: int = 16) -> np.ndarray:
    """Grid tracks of a rendered clip from the oracle's per-frame sprite centres and sizes."""
    q = mm.grid_queries(*clip.frames.shape[1:3], grid)
    return mm.exact_toy_tracks(*oracle.track(clip.masks), clip.masks[0], q)


TRANSLATIONS = [
    m for m in world.MOTIONS + world.NOVEL_MOTIONS if m not in ("grows", "shrinks", "stays still")
]


def test_exact_toy_tracks_follow_the_sprite():
    clip = _clip("circles", 3)
    tracks = _exact(clip)
    on = clip.masks[0][tracks[:, 0, 1].astype(int), tracks[:, 0, 0].astype(int)]
    assert on.sum() >= 3
    np.testing.assert_allclose(
        tracks[on] - tracks[on, :1],
        np.broadcast_to(clip.centers - clip.centers[0], tracks[on].shape),
        atol=0.6,
    )
    np.testing.assert_array_equal(tracks[~on], np.repeat(tracks[~on, :1], len(clip.centers), axis=1))


def test_same_motion_rendered_twice_scores_near_one():
    for motion in TRANSLATIONS:
        a, b = _clip(motion, 1), _clip(motion, 2)  # other sprite, background, anchor, size and amplitude
        assert not np.allclose(a.centers[0], b.centers[0])
        assert _mf(_exact(a) / 64, _exact(b) / 64, still=1 / 128) > 0.95, motion


def test_different_motions_score_lower_and_agree_with_the_oracle():
    motions = world.MOTIONS[:-1] + world.NOVEL_MOTIONS  # all moving ones
    refs, gens = [_clip(m, 1) for m in motions], [_clip(m, 2) for m in motions]
    ref_tracks, gen_tracks = [_exact(c) / 64 for c in refs], [_exact(c) / 64 for c in gens]
    ours = np.array([[_mf(r, g, still=1 / 128) for g in gen_tracks] for r in ref_tracks])
    theirs = np.array([[oracle.motion_fidelity(g.frames, [r.frames]) for g in gens] for r in refs])
    same, other = np.diag(ours), ours[~np.eye(len(motions), dtype=bool)].reshape(len(motions), -1)
    assert (same > other.mean(axis=1)).all()
    for i, m in enumerate(motions):
        if m in TRANSLATIONS:
            assert same[i] > other[i].max(), m
    rho = mm.spearman(ours.ravel(), theirs.ravel())
    assert rho > 0.5, rho


def test_spearman_and_pearson_by_hand():
    assert mm.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert mm.spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)  # monotone, not linear
    assert mm.pearson([1, 2, 3, 4], [1, 8, 27, 64]) < 0.99
    assert mm.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties get their mean rank: ranks (1.5, 1.5, 3) vs (1, 2, 3)
    assert mm.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1])


# ----------------------------------------------------------------------------- dynamic degree


def _flows(magnitudes, size=64, share=0.1) -> np.ndarray:
    """(len(magnitudes), size, size, 2) flows: ``share`` of the pixels move ``m`` pixels right, the rest stay."""
    out = np.zeros((len(magnitudes), size, size, 2))
    rows = int(size * share)
    for i, m in enumerate(magnitudes):
        out[i, :rows, :, 0] = m
    return out


def test_dynamic_degree_threshold_logic():
    assert mm.dynamic_threshold(64, 64) == pytest.approx(1.5)
    assert mm.dynamic_threshold(256, 512) == pytest.approx(6.0)
    assert [mm.min_dynamic_pairs(f) for f in (2, 8, 16, 24)] == [1, 2, 4, 6]
    # top 5 %: with 10 % of the pixels moving 2 px the top 5 % all move 2 px; with 2 % moving, 2 * 2 / 5
    assert mm.flow_top_mean(_flows([2.0])[0]) == pytest.approx(2.0)
    assert mm.flow_top_mean(_flows([2.0], share=1 / 64)[0]) == pytest.approx(2.0 * 64 / 204, rel=1e-6)
    # 8 frames (7 pairs) at 64 px: at least 2 pairs above 1.5 px
    one = mm.dynamic_degree(_flows([2.0, 0, 0, 0, 0, 0, 0]))
    assert one["dynamic_degree"] == 0.0 and one["flow_top5_mean"] == pytest.approx(2.0 / 7)
    assert mm.dynamic_degree(_flows([2.0, 2.0, 0, 0, 0, 0, 0]))["dynamic_degree"] == 1.0
    assert mm.dynamic_degree(_flows([1.5] * 7))["dynamic_degree"] == 0.0  # strictly above the threshold
    # the threshold scales with resolution: the same 2 px at 256 px is not dynamic
    assert mm.dynamic_degree(_flows([2.0] * 7, size=256))["dynamic_degree"] == 0.0


@needs_cv2
def test_farneback_on_rendered_still_and_moving_clips():
    flow = mm.FarnebackFlow()
    still = mm.dynamic_degree(flow.flow(_clip("stays still", 1).frames))
    assert still["dynamic_degree"] == 0.0 and still["flow_top5_mean"] < 0.2
    for motion in ("moves right", "circles", "figure-eight"):
        clip = _clip(motion, 1)
        moving = mm.dynamic_degree(flow.flow(clip.frames))
        speed = np.linalg.norm(np.diff(clip.centers, axis=0), axis=1).mean()
        assert moving["dynamic_degree"] == 1.0, motion
        assert 0.1 * speed < moving["flow_top5_mean"] < 1.2 * speed, (motion, moving, speed)


@needs_cv2
def test_lk_tracker_on_rendered_clips():
    tracker = mm.LucasKanadeTracker()
    q = mm.grid_queries(64, 64, 16)
    still, vis = tracker.track(_clip("stays still", 1).frames, q)
    assert vis.mean() > 0.5 and np.abs(still - q[:, None]).max() < 0.1  # flat regions are lost, not moved
    clip = _clip("moves right", 1, "striped")  # LK loses points inside plain (flat) sprites
    tracks, vis = tracker.track(clip.frames, q)
    exact = _exact(clip)
    on = mm.moving_tracks(exact, 0.5)
    good = vis[on].all(axis=1)
    assert good.sum() >= 3
    np.testing.assert_allclose(tracks[on][good], exact[on][good], atol=1.5)
    assert _mf(exact / 64, tracks / 64, gen_visible=vis, still=1 / 128) > 0.6
    # unrelated frames: the forward-backward check marks most points lost
    noise = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    assert tracker.track(noise, q)[1][:, 1].mean() < 0.4


# ----------------------------------------------------------------------------- unavailable trackers and loaders


def test_skip_messages_when_unavailable(tmp_path, monkeypatch):
    weights = tmp_path / "cotracker.pth"
    torch.save({"w": torch.zeros(1)}, weights)
    monkeypatch.setitem(sys.modules, "cotracker", None)  # not installed
    with pytest.raises(mm.MotionUnavailable, match=r"^skipped: CoTracker needs the 'cotracker' package"):
        mm.make_tracker("cotracker", weights)
    with pytest.raises(mm.MotionUnavailable, match=r"^skipped: .*not a file and not a hub id"):
        mm.make_tracker("cotracker", tmp_path / "missing.pth")

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load", offline)
    with pytest.raises(mm.MotionUnavailable, match=r"^skipped: CoTracker hub id .*co-tracker.*no network"):
        mm.make_tracker("cotracker")
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(mm.MotionUnavailable, match=r"^skipped: RAFT needs torchvision"):
        mm.make_flow("raft")
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(mm.MotionUnavailable, match=r"^skipped: the Lucas-Kanade tracker needs OpenCV"):
        mm.make_tracker("lk")
    with pytest.raises(mm.MotionUnavailable, match=r"^skipped: the Farneback flow needs OpenCV"):
        mm.make_flow("farneback")
    assert mm.make_tracker("none") is None and mm.make_flow("none") is None


class _Spy:
    """Records the ``weights_only`` argument of every ``torch.load``."""

    def __init__(self, monkeypatch):
        self.calls, real = [], torch.load

        def load(*args, **kwargs):
            self.calls.append(kwargs.get("weights_only"))
            return real(*args, **kwargs)

        monkeypatch.setattr(torch, "load", load)


def test_cotracker_loads_weights_only_and_converts_layouts(tmp_path, monkeypatch):
    class Predictor(torch.nn.Module):  # the package's CoTrackerPredictor: .model, (video, queries) -> tracks
        def __init__(self, checkpoint=None, offline=True, window_len=60):
            super().__init__()
            assert checkpoint is None
            self.model = torch.nn.Linear(2, 2)

        def forward(self, video, queries):
            b, f = video.shape[:2]
            xy = (
                queries[:, :, 1:] + torch.arange(f).float()[None, :, None, None] * self.model.bias
            )  # (1,F,N,2)
            return xy, torch.ones(b, f, queries.shape[1], dtype=torch.bool)

    package = types.ModuleType("cotracker")
    predictor = types.ModuleType("cotracker.predictor")
    predictor.CoTrackerPredictor = Predictor
    monkeypatch.setitem(sys.modules, "cotracker", package)
    monkeypatch.setitem(sys.modules, "cotracker.predictor", predictor)
    state = {"weight": torch.eye(2), "bias": torch.tensor([1.0, 0.0])}
    torch.save({"model": state}, tmp_path / "ck.pth")
    spy = _Spy(monkeypatch)
    tracker = mm.make_tracker("cotracker", tmp_path / "ck.pth", device="cpu")
    assert spy.calls == [True]
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    tracks, vis = tracker.track(frames, np.array([[2.5, 3.5], [8.5, 8.5]]))
    assert tracks.shape == (2, 4, 2) and vis.shape == (2, 4) and vis.all()
    np.testing.assert_allclose(tracks[0, :, 0], [2.5, 3.5, 4.5, 5.5])  # one pixel right a frame (the bias)
    np.testing.assert_allclose(tracks[1, :, 1], 8.5)
    torch.save({"other": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(mm.MotionUnavailable, match="skipped: CoTracker weights .*bad.pth do not load"):
        mm.make_tracker("cotracker", tmp_path / "bad.pth", device="cpu")


def test_raft_loads_weights_only_and_rescales_flow(tmp_path, monkeypatch):
    class Raft(torch.nn.Module):  # torchvision's RAFT: (img1, img2, num_flow_updates) -> list of flows
        def __init__(self, width):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.zeros(width))
            self.shapes = []

        def forward(self, a, b, num_flow_updates=12):
            self.shapes.append(tuple(a.shape))
            assert a.min() >= -1 and a.max() <= 1
            flow = torch.zeros(a.shape[0], 2, *a.shape[2:])
            flow[:, 0] = self.scale[
                0
            ]  # a constant flow of scale[0] pixels (of the resized frames) to the right
            return [flow * 0, flow]

    optical_flow = types.ModuleType("torchvision.models.optical_flow")
    optical_flow.raft_large = lambda weights=None: Raft(4)
    optical_flow.raft_small = lambda weights=None: Raft(2)
    models = types.ModuleType("torchvision.models")
    models.optical_flow = optical_flow
    tv = types.ModuleType("torchvision")
    tv.models = models
    for name, module in (
        ("torchvision", tv),
        ("torchvision.models", models),
        ("torchvision.models.optical_flow", optical_flow),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    from safetensors.torch import save_file

    save_file({"scale": torch.tensor([8.0, 0.0])}, str(tmp_path / "small.safetensors"))
    torch.save({"scale": torch.tensor([4.0, 0, 0, 0])}, tmp_path / "large.pth")
    spy = _Spy(monkeypatch)
    raft = mm.make_flow("raft", tmp_path / "large.pth", device="cpu")
    assert spy.calls == [True]
    frames = np.zeros((3, 64, 64, 3), np.uint8)
    flow = raft.flow(frames)
    assert raft.model.shapes == [(2, 3, 128, 128)]  # resized to a 128 short side, a multiple of 8
    assert flow.shape == (2, 64, 64, 2)
    np.testing.assert_allclose(flow[..., 0], 2.0)  # 4 px at 128 = 2 px at 64
    np.testing.assert_allclose(flow[..., 1], 0.0)
    small = mm.make_flow("raft", tmp_path / "small.safetensors", device="cpu")  # not large: tries small
    assert small.model.scale.shape == (2,)
    with pytest.raises(mm.MotionUnavailable, match="skipped: RAFT weights .*nope: not a file"):
        mm.make_flow("raft", tmp_path / "nope")


@needs_cv2
def test_one_frame_video_is_still():
    # a still clip written as GIF reads back as one frame (identical frames are merged)
    scorer = mm.MotionScorer(mm.LucasKanadeTracker(), mm.FarnebackFlow())
    moving, still = _clip("moves right", 1, "striped").frames, _clip("stays still", 2).frames
    one = scorer.score(still[:1], [moving])
    assert (
        one["track_motion_fidelity"] == 0.0 and one["dynamic_degree"] == 0.0 and one["flow_top5_mean"] < 0.05
    )
    assert scorer.score(moving, [still[:1]])["track_motion_fidelity"] == 0.0
    assert scorer.score(still, [still[:1]])["track_motion_fidelity"] == 1.0


def test_missing_weight_file_is_not_taken_for_a_hub_id(monkeypatch):
    monkeypatch.setattr(torch.hub, "load", lambda *a, **k: pytest.fail("must not reach the hub"))
    with pytest.raises(mm.MotionUnavailable, match=r"weights/ck.pth: not a file"):
        mm.make_tracker("cotracker", "weights/ck.pth")


# ----------------------------------------------------------------------------- dreamvideo evaluate


@pytest.fixture()
def toy_folder(tmp_path):
    """Toy-world videos (frame folders) of two motions and a manifest with one motion reference each."""
    motion = world.write_motion_folder("figure-eight", tmp_path / "ref", n=1)
    world.write_subject_folder("totem", tmp_path / "totem", n=1)
    entries = []
    for name, m in (("same", "figure-eight"), ("other", "hop-then-slide"), ("still", "stays still")):
        clip = _clip(m, 5)
        (tmp_path / name).mkdir()
        for i, f in enumerate(clip.frames):
            Image.fromarray(f).save(tmp_path / name / f"{i:02d}.png")
        entries.append(
            {
                "video": name,
                "prompt": f"a star moves on {world.BACKGROUNDS[0]}",
                "subject_refs": ["totem"],
                "motion_refs": [str(motion / "00.gif")],
            }
        )
    (tmp_path / "m.json").write_text(json.dumps(entries))
    return tmp_path


def _evaluate(folder, *flags) -> int:
    """``dreamvideo evaluate`` of ``folder``'s manifest with the toy CLIP on the CPU."""
    return main(
        ["evaluate", "--manifest", str(folder / "m.json"), "--clip", "toy", "--device", "cpu", *flags]
    )


def test_evaluate_skips_unavailable_tracker_with_a_message(toy_folder, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cotracker", None)
    (toy_folder / "ck.pth").write_bytes(b"")
    code = _evaluate(toy_folder, "--tracker", "cotracker", "--tracker-weights", str(toy_folder / "ck.pth"))
    assert code == 0
    out = capsys.readouterr().out
    assert "track_motion_fidelity skipped: CoTracker needs the 'cotracker' package" in out
    result = json.loads((toy_folder / "metrics.json").read_text())
    assert "track_motion_fidelity skipped" in result["note"]
    assert all("track_motion_fidelity" not in r and "dynamic_degree" not in r for r in result["rows"])


@needs_cv2
def test_evaluate_with_the_opencv_fallbacks(toy_folder, capsys):
    code = _evaluate(toy_folder, "--tracker", "lk", "--flow", "farneback", "--out", str(toy_folder / "out"))
    assert code == 0
    result = json.loads((toy_folder / "out" / "metrics.json").read_text())
    rows = {r["video"]: r for r in result["rows"]}
    assert (
        "classical fallback" in result["models"]["tracker"]
        and "classical fallback" in result["models"]["flow"]
    )
    assert rows["same"]["track_motion_fidelity"] > rows["other"]["track_motion_fidelity"]
    assert rows["still"]["track_motion_fidelity"] == 0.0
    assert rows["same"]["dynamic_degree"] == 1.0 and rows["still"]["dynamic_degree"] == 0.0
    assert rows["still"]["flow_top5_mean"] < rows["same"]["flow_top5_mean"]
    summary = result["summary"]["overall"]["metrics"]
    assert summary["dynamic_degree"]["mean"] == pytest.approx(2 / 3)  # VBench: the share of dynamic videos
    report = (toy_folder / "out" / "metrics.md").read_text()
    assert "track_motion_fidelity" in report and "track_motion_fidelity with lk: classical fallback" in report
    assert "dynamic_degree with farneback: classical fallback" in report
