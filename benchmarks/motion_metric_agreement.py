"""Agreement of the track-based motion fidelity (DMT) with the toy oracle's motion fidelity, on rendered clips.

For every toy-world motion (vocabulary and novel) it renders ``--refs`` reference clips and three candidate clips
(another sprite, background, anchor, size and amplitude each): ``clean``, ``noisy`` (Gaussian pixel noise) and
``jittered`` (the sprite centre shaken by up to ``--jitter`` pixels a frame). Every (reference, candidate) pair is
scored by

- ``lk``: :func:`dreamvideo.motion_metrics.motion_fidelity_from_tracks` on grid tracks from the OpenCV
  Lucas-Kanade fallback tracker (what ``dreamvideo evaluate --tracker lk`` computes),
- ``exact``: the same formula on the exact grid tracks of the rendered sprite (``oracle.track`` of the true masks),
- ``oracle``: ``dreamvideo.toy.oracle.motion_fidelity`` (the reference on the toy world),

and the Spearman / Pearson correlations between them are reported, per pair and per candidate against the set of
references of a motion (the mean over the references, as ``evaluate`` does with several ``motion_refs``), with
the top-1 motion retrieval accuracy of each score. The dynamic degree (Farneback fallback) of every clip is
compared with the sprite's true mean speed. Needs ``opencv-python-headless``; about a minute on one core.

    python benchmarks/motion_metric_agreement.py --out benchmarks/results/motion_metric_agreement.json
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from dreamvideo import motion_metrics as mm
from dreamvideo.fileio import write_json
from dreamvideo.toy import oracle, world

VARIANTS = ("clean", "noisy", "jittered")


def render(
    motion: str, rng: np.random.Generator, variant: str, noise: float, jitter: float
) -> world.RenderedClip:
    """A clip of ``motion`` with a random sprite (any pattern), background and placement, then the variant."""
    sprite = world.Sprite(
        str(rng.choice(world.SHAPES)), str(rng.choice(list(world.COLORS))), str(rng.choice(world.PATTERNS))
    )
    spec = world._random_spec(rng, sprite, str(rng.choice(world.BACKGROUNDS)), motion, phase=0.0)
    clip = world.render_clip(spec)
    if variant == "noisy":
        frames = clip.frames + rng.normal(0, noise, clip.frames.shape)
        clip = replace(clip, frames=np.clip(np.rint(frames), 0, 255).astype(np.uint8))
    elif variant == "jittered":  # frame k drawn with the anchor shifted by a random offset
        shifts = rng.uniform(-jitter, jitter, (len(clip.frames), 2))
        parts = [world.render_clip(replace(spec, anchor=tuple(np.add(spec.anchor, s)))) for s in shifts]
        clip = world.RenderedClip(
            frames=np.stack([p.frames[k] for k, p in enumerate(parts)]),
            masks=np.stack([p.masks[k] for k, p in enumerate(parts)]),
            centers=np.stack([p.centers[k] for k, p in enumerate(parts)]),
            scales=clip.scales,
        )
    return clip


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 1e-6 and nb > 1e-6 else 0.0


def correlations(scores: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Spearman and Pearson of every pair of scores."""
    names = list(scores)
    scores = {k: np.ravel(v) for k, v in scores.items()}
    return {
        f"{a}~{b}": {
            "spearman": mm.spearman(scores[a], scores[b]),
            "pearson": mm.pearson(scores[a], scores[b]),
        }
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--refs", type=int, default=2, help="reference clips per motion")
    p.add_argument("--grid", type=int, default=mm.DEFAULT_GRID, help="track grid points per side")
    p.add_argument("--noise", type=float, default=12.0, help="pixel noise std of the noisy variant (0-255)")
    p.add_argument("--jitter", type=float, default=1.5, help="max sprite shift of the jittered variant (px)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", nargs="*", default=[], help="motions left out, e.g. --skip grows shrinks")
    p.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "motion_metric_agreement.json"
    )
    args = p.parse_args(argv)
    import cv2

    start = time.time()
    rng = np.random.default_rng(args.seed)
    motions = [m for m in world.MOTIONS + world.NOVEL_MOTIONS if m not in args.skip]
    refs = [(m, render(m, rng, "clean", args.noise, args.jitter)) for m in motions for _ in range(args.refs)]
    cands = [(m, v, render(m, rng, v, args.noise, args.jitter)) for m in motions for v in VARIANTS]
    clips = [c for _, c in refs] + [c for *_, c in cands]

    tracker, flow = mm.LucasKanadeTracker(), mm.FarnebackFlow()
    side = world.IMAGE_SIZE
    queries = mm.grid_queries(side, side, args.grid)
    t0 = time.time()
    lk = [tracker.track(c.frames, queries) for c in clips]
    track_s = time.time() - t0
    exact = [mm.exact_toy_tracks(*oracle.track(c.masks), c.masks[0], queries) for c in clips]
    feats = [oracle.motion_features(c.frames) for c in clips]
    nr = len(refs)

    def mf(tracks, i, j, visible=None):
        vi = visible[i] if visible else None
        vj = visible[j] if visible else None
        return mm.motion_fidelity_from_tracks(
            tracks[i] / side, tracks[j] / side, vi, vj, still=mm.STILL_FRACTION
        )

    lk_tracks, lk_vis = [t for t, _ in lk], [v for _, v in lk]
    pair = {"lk": [], "exact": [], "oracle": []}
    same = []
    for i, (rm, _) in enumerate(refs):
        for j, (cm, _, _) in enumerate(cands, start=nr):
            pair["lk"].append(mf(lk_tracks, i, j, lk_vis))
            pair["exact"].append(mf(exact, i, j))
            pair["oracle"].append(_cosine(feats[j], feats[i]))  # = oracle.motion_fidelity(cand, [ref])
            same.append(rm == cm)
    pair = {k: np.array(v) for k, v in pair.items()}
    same = np.array(same)
    for i, j in [(0, nr), (nr - 1, len(clips) - 1), (3, nr + 7)]:  # the shortcut equals the oracle's function
        assert np.isclose(
            _cosine(feats[j], feats[i]), oracle.motion_fidelity(clips[j].frames, [clips[i].frames])
        )

    # per candidate against each motion's set of references (the mean over them), and top-1 retrieval
    shape = (len(motions), args.refs, len(cands))
    per_set = {k: v.reshape(shape).mean(axis=1) for k, v in pair.items()}  # (motions, candidates)
    truth = np.array([motions.index(m) for m, _, _ in cands])
    retrieval = {k: float((v.argmax(axis=0) == truth).mean()) for k, v in per_set.items()}
    variants = np.array([v for _, v, _ in cands])
    by_variant = {}
    for v in VARIANTS:
        cols = variants == v
        sub = {k: s[:, cols].ravel() for k, s in per_set.items()}
        by_variant[v] = {
            "correlations": correlations(sub),
            "retrieval": {
                k: float((s[:, cols].argmax(axis=0) == truth[cols]).mean()) for k, s in per_set.items()
            },
        }

    flows = [mm.dynamic_degree(flow.flow(c.frames)) for c in clips]
    # true speed: centre displacement plus radius change (the edge of a growing sprite moves) per step
    speed = np.array(
        [
            (np.linalg.norm(np.diff(c.centers, axis=0), axis=1) + np.abs(np.diff(c.scales))).mean()
            for c in clips
        ]
    )
    names = [(m, "reference") for m, _ in refs] + [(m, v) for m, v, _ in cands]
    still = speed < 0.1
    top5 = np.array([f["flow_top5_mean"] for f in flows])
    dynamic = np.array([f["dynamic_degree"] for f in flows])
    threshold = mm.dynamic_threshold(side, side)
    result = {
        "config": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "motions": motions,
            "variants": list(VARIANTS),
            "frames": world.NUM_FRAMES,
            "size": side,
            "tracker": tracker.label,
            "flow": flow.label,
            "opencv": cv2.__version__,
            "still_threshold_px": mm.STILL_FRACTION * side,
        },
        "pairs": {
            "n": int(len(same)),
            "correlations": correlations(pair),
            "mean_same_motion": {k: float(v[same].mean()) for k, v in pair.items()},
            "mean_other_motion": {k: float(v[~same].mean()) for k, v in pair.items()},
        },
        "reference_sets": {
            "n": int(per_set["lk"].size),
            "correlations": correlations(per_set),
            "top1_motion_retrieval": retrieval,
            "chance": 1 / len(motions),
            "by_variant": by_variant,
        },
        "dynamic_degree": {
            "n": len(clips),
            "threshold_px": threshold,
            "dynamic_share_still_clips": float(dynamic[still].mean()),
            "dynamic_share_moving_clips": float(dynamic[~still].mean()),
            "dynamic_share_clips_faster_than_threshold": float(dynamic[speed > threshold].mean()),
            "still_clips": [
                {"motion": m, "variant": v, "dynamic_degree": float(d), "flow_top5_mean": float(t)}
                for (m, v), d, t, st in zip(names, dynamic, top5, still, strict=True)
                if st
            ],
            "moving_clips_not_dynamic": [
                {"motion": m, "variant": v, "true_speed": float(sp), "flow_top5_mean": float(t)}
                for (m, v), d, t, sp, st in zip(names, dynamic, top5, speed, still, strict=True)
                if not st and not d
            ],
            "flow_top5_mean~true_speed": {
                "spearman": mm.spearman(top5, speed),
                "pearson": mm.pearson(top5, speed),
            },
            "flow_top5_over_true_speed_median": float(np.median(top5[~still] / speed[~still])),
        },
        "timing_s": {"lk_tracking_per_clip": track_s / len(clips), "total": time.time() - start},
    }
    write_json(result, args.out)
    c, s = result["pairs"]["correlations"], result["reference_sets"]
    print(
        f"{len(same)} pairs: lk~oracle spearman {c['lk~oracle']['spearman']:.3f} pearson "
        f"{c['lk~oracle']['pearson']:.3f}; exact~oracle spearman {c['exact~oracle']['spearman']:.3f}"
    )
    print(
        f"reference sets: lk~oracle spearman {s['correlations']['lk~oracle']['spearman']:.3f}; top-1 retrieval "
        + ", ".join(f"{k} {v:.2f}" for k, v in s["top1_motion_retrieval"].items())
    )
    print(f"wrote {args.out} in {result['timing_s']['total']:.0f} s")
    return result


if __name__ == "__main__":
    main()
