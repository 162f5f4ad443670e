"""Motion metrics the field uses: motion fidelity from point tracks (DMT) and dynamic degree from optical flow
(VBench), with pluggable point trackers and flow estimators.

Definitions, with a video's frames ``(F, H, W, 3)`` uint8:

- **Track motion fidelity** (Yatim et al., "Space-Time Diffusion Features for Zero-Shot Text-Driven Motion
  Transfer", CVPR 2024, "motion fidelity score"). Points on a regular grid of the first frame are tracked through
  the reference video (tracklets ``T``, ``n`` of them) and the generated video (``T~``, ``m``). For a pair of
  tracklets ``corr(tau, tau~) = 1/(F-1) sum_k cos(v_k, v~_k)`` with ``v_k = tau[k+1] - tau[k]`` the per-step
  displacement, and ``MF = 1/2 [1/m sum_{tau~} max_tau corr + 1/n sum_tau max_{tau~} corr]`` in ``[-1, 1]``.
  The paper writes the two best-match means side by side; we average them (the ``1/2``) so identical motion
  scores 1, as the paper's reported scores (all below 1) imply. Conventions of ours, needed for still points,
  lost points and unequal lengths: the reference tracks are resampled (linear in time) to the generated video's
  frame count; a step whose displacement is below ``still`` pixels is "still": still vs still has cosine 1, still
  vs moving 0; a step where either point is not visible (at either end) contributes 0; and, by default, only
  moving tracklets are matched (a tracklet moves if it ever gets ``still`` pixels away from its start), since on
  a static background most grid points never move and would otherwise dominate both means. With no moving
  tracklet in either video the score is 1, in only one of them 0 (a still video scores 0, as the toy oracle's).
- **Dynamic degree** (Huang et al., "VBench", CVPR 2024). Optical flow between consecutive frames; per pair the
  mean of the largest 5 % flow magnitudes; a video is dynamic when at least ``max(1, round(4 F / 16))`` pairs
  exceed ``6.0 * min(H, W) / 256`` pixels; the metric over a set of videos is the share of dynamic videos (the
  mean of the per-video 0/1 ``dynamic_degree``). The per-video mean of the top-5 % magnitudes over the pairs is
  reported too (``flow_top5_mean``, pixels), so single videos are informative.

Trackers (:class:`PointTracker`) and flow estimators (:class:`FlowEstimator`): CoTracker (the ``cotracker``
package, weights from a local checkpoint or a hub id) and torchvision's RAFT, loaded with weights only
(``torch.load(weights_only=True)`` or safetensors); and a classical fallback needing no weights, OpenCV's pyramidal
Lucas-Kanade for grid tracks and Farneback for flow (the ``motion`` extra, ``opencv-python-headless``). Where one
is not available :class:`MotionUnavailable` says why, and ``dreamvideo evaluate`` skips that metric with the
message.
"""

from __future__ import annotations

import argparse
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dreamvideo.fileio import DreamVideoError

STILL_FRACTION = 1.0 / 128  # still threshold as a fraction of min(H, W): 0.5 px at 64, 2 px at 256
DYNAMIC_TOP = 0.05  # VBench: mean of the top 5 % flow magnitudes
DYNAMIC_THRESHOLD = 6.0  # VBench: pixels at a 256-pixel short side
DEFAULT_GRID = 16  # grid points per side
COTRACKER_HUB = "facebookresearch/co-tracker:cotracker3_offline"
TRACKERS = ("cotracker", "lk", "none")
WEIGHT_SUFFIXES = (
    ".pth",
    ".pt",
    ".ckpt",
    ".bin",
    ".safetensors",
)  # a name ending so is a file, never a hub id
FLOWS = ("raft", "farneback", "none")


class MotionUnavailable(DreamVideoError):
    """A tracker or flow model cannot be used here; the message starts with ``skipped:`` and says why."""


# ----------------------------------------------------------------------------- track motion fidelity (DMT)


def grid_queries(height: int, width: int, size: int = DEFAULT_GRID) -> np.ndarray:
    """Query points ``(size*size, 2)`` as (x, y) pixel coordinates at the centres of a regular grid's cells.

    Coordinates follow the toy world's convention: pixel ``i`` covers ``[i, i+1)``, its centre is ``i + 0.5``.

    Args:
        height: frame height in pixels.
        width: frame width in pixels.
        size: points per side.
    """
    xs = (np.arange(size) + 0.5) * width / size
    ys = (np.arange(size) + 0.5) * height / size
    return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)


def resample_tracks(tracks: np.ndarray, num_frames: int, visible: np.ndarray | None = None):
    """Resample tracks linearly in normalised time (first and last frame kept) to ``num_frames`` frames.

    Args:
        tracks: ``(N, F, 2)`` positions.
        num_frames: frames wanted.
        visible: ``(N, F)`` bool; a resampled frame is visible when both frames it lies between are.

    Returns:
        ``(tracks (N, num_frames, 2), visible (N, num_frames) bool)``.
    """
    tracks = np.asarray(tracks, dtype=np.float64)
    n, f = tracks.shape[:2]
    visible = np.ones((n, f), dtype=bool) if visible is None else np.asarray(visible, dtype=bool)
    if f == num_frames:
        return tracks, visible
    if f == 1:
        return np.repeat(tracks, num_frames, axis=1), np.repeat(visible, num_frames, axis=1)
    pos = np.linspace(0.0, f - 1, num_frames)
    lo = np.minimum(np.floor(pos).astype(int), f - 2)
    frac = (pos - lo)[None, :, None]
    out = tracks[:, lo] * (1 - frac) + tracks[:, lo + 1] * frac
    vis = visible[:, lo] & (visible[:, lo + 1] | (frac[..., 0] == 0))
    return out, vis


def _steps(tracks: np.ndarray, visible: np.ndarray, still: float):
    """Unit displacement vectors (N, F-1, 2) (zero when still), still flags and valid-step flags."""
    v = np.diff(tracks, axis=1)
    norm = np.linalg.norm(v, axis=-1)
    is_still = norm < still
    unit = np.where(is_still[..., None], 0.0, v / np.maximum(norm, 1e-12)[..., None])
    return unit, is_still, visible[:, 1:] & visible[:, :-1]


def track_correlation(
    tracks_a: np.ndarray,
    tracks_b: np.ndarray,
    visible_a: np.ndarray | None = None,
    visible_b: np.ndarray | None = None,
    still: float = 1e-9,
) -> np.ndarray:
    """``corr(tau, tau~)`` of every pair of tracklets: the mean over steps of the cosine of their displacements.

    DMT (Yatim et al., 2024): ``corr(tau, tau~) = 1/(F-1) sum_k v_k . v~_k / (|v_k| |v~_k|)``. Still steps
    (``|v| < still``): still vs still counts 1, still vs moving 0; steps not visible in either track count 0.

    Args:
        tracks_a: ``(N, F, 2)`` tracklets.
        tracks_b: ``(M, F, 2)`` tracklets with the same frame count.
        visible_a: ``(N, F)`` bool visibility (default all visible).
        visible_b: ``(M, F)`` bool visibility.
        still: displacement (pixels) below which a step is still.

    Returns:
        ``(N, M)`` correlations in ``[-1, 1]``.
    """
    tracks_a, tracks_b = np.asarray(tracks_a, np.float64), np.asarray(tracks_b, np.float64)
    if tracks_a.shape[1] != tracks_b.shape[1] or tracks_a.shape[1] < 2:
        raise ValueError(f"tracks need the same frame count >= 2, got {tracks_a.shape} and {tracks_b.shape}")
    va = np.ones(tracks_a.shape[:2], bool) if visible_a is None else np.asarray(visible_a, bool)
    vb = np.ones(tracks_b.shape[:2], bool) if visible_b is None else np.asarray(visible_b, bool)
    ua, sa, oka = _steps(tracks_a, va, still)
    ub, sb, okb = _steps(tracks_b, vb, still)
    total = np.zeros((len(ua), len(ub)))
    for k in range(ua.shape[1]):  # one step at a time: memory N x M
        cos = ua[:, k] @ ub[:, k].T  # zero where either step is still
        cos += sa[:, k, None] & sb[None, :, k]  # still vs still: 1
        total += cos * (oka[:, k, None] & okb[None, :, k])  # invisible steps: 0
    return total / ua.shape[1]


def moving_tracks(tracks: np.ndarray, still: float) -> np.ndarray:
    """``(N,)`` bool: the tracklets that ever get ``still`` pixels or more away from their first position.

    Args:
        tracks: ``(N, F, 2)`` tracklets.
        still: distance in pixels.
    """
    tracks = np.asarray(tracks, np.float64)
    return np.linalg.norm(tracks - tracks[:, :1], axis=-1).max(axis=1) >= still


def motion_fidelity_from_tracks(
    ref_tracks: np.ndarray,
    gen_tracks: np.ndarray,
    ref_visible: np.ndarray | None = None,
    gen_visible: np.ndarray | None = None,
    still: float = 1e-9,
    moving_only: bool = True,
) -> float:
    """DMT motion fidelity of generated tracklets against reference tracklets, in ``[-1, 1]``.

    DMT (Yatim et al., 2024): ``MF = 1/2 [1/m sum_{tau~ in T~} max_{tau in T} corr + 1/n sum_{tau in T} max_{tau~}
    corr]``. The reference tracks are first resampled to the generated video's frame count.

    Args:
        ref_tracks: ``(N, F_ref, 2)`` tracklets of the reference video (pixels).
        gen_tracks: ``(M, F, 2)`` tracklets of the generated video (pixels, same scale as the reference).
        ref_visible: ``(N, F_ref)`` bool visibility (default all visible).
        gen_visible: ``(M, F)`` bool visibility.
        still: displacement (in the tracks' units) below which a step or a tracklet counts as still.
        moving_only: match only moving tracklets (see :func:`moving_tracks`); with none in both videos the score
            is 1, in one of them 0. False: all tracklets, the plain definition.
    """
    gen_tracks = np.asarray(gen_tracks, np.float64)
    ref_tracks, ref_visible = resample_tracks(ref_tracks, gen_tracks.shape[1], ref_visible)
    gen_visible = (
        np.ones(gen_tracks.shape[:2], bool) if gen_visible is None else np.asarray(gen_visible, bool)
    )
    if moving_only:
        keep_ref, keep_gen = moving_tracks(ref_tracks, still), moving_tracks(gen_tracks, still)
        if not keep_ref.any() or not keep_gen.any():
            return float(keep_ref.any() == keep_gen.any())
        ref_tracks, ref_visible = ref_tracks[keep_ref], ref_visible[keep_ref]
        gen_tracks, gen_visible = gen_tracks[keep_gen], gen_visible[keep_gen]
    corr = track_correlation(ref_tracks, gen_tracks, ref_visible, gen_visible, still)  # (n, m)
    return float(0.5 * (corr.max(axis=0).mean() + corr.max(axis=1).mean()))  # DMT, Yatim et al. 2024


# ----------------------------------------------------------------------------- dynamic degree (VBench)


def flow_top_mean(flow: np.ndarray, top: float = DYNAMIC_TOP) -> float:
    """Mean of the largest ``top`` share of flow magnitudes of one frame pair (VBench's per-pair score).

    Args:
        flow: ``(H, W, 2)`` optical flow in pixels.
        top: share of pixels kept (VBench: 0.05).
    """
    mag = np.linalg.norm(np.asarray(flow, np.float64), axis=-1).ravel()
    k = max(1, int(len(mag) * top))
    return float(np.partition(mag, len(mag) - k)[-k:].mean())  # VBench: mean of the top 5 % magnitudes


def dynamic_threshold(height: int, width: int) -> float:
    """VBench's resolution-scaled threshold: ``6.0 * min(H, W) / 256`` pixels.

    Args:
        height: frame height.
        width: frame width.
    """
    return DYNAMIC_THRESHOLD * min(height, width) / 256.0  # VBench (Huang et al., 2024)


def min_dynamic_pairs(num_frames: int) -> int:
    """Pairs over the threshold a video needs to be dynamic: VBench's ``round(4 F / 16)``, at least 1.

    Args:
        num_frames: frames of the video.
    """
    return max(1, round(4 * num_frames / 16))  # VBench (Huang et al., 2024)


def dynamic_degree(flows: np.ndarray, top: float = DYNAMIC_TOP) -> dict[str, float]:
    """VBench dynamic degree of one video from its consecutive-frame flows.

    Args:
        flows: ``(F-1, H, W, 2)`` optical flow between frames ``k`` and ``k+1``, in pixels.
        top: share of the largest magnitudes averaged per pair.

    Returns:
        ``{"dynamic_degree": 1.0 if dynamic else 0.0, "flow_top5_mean": mean over pairs of the top-5 % mean}``.
    """
    flows = np.asarray(flows)
    if flows.ndim != 4 or flows.shape[-1] != 2 or len(flows) == 0:
        raise ValueError(f"expected flows of shape (F-1, H, W, 2) with F >= 2, got {flows.shape}")
    scores = np.array([flow_top_mean(f, top) for f in flows])
    over = int((scores > dynamic_threshold(*flows.shape[1:3])).sum())
    dynamic = over >= min_dynamic_pairs(len(flows) + 1)
    return {"dynamic_degree": float(dynamic), "flow_top5_mean": float(scores.mean())}


# ----------------------------------------------------------------------------- trackers and flow


class PointTracker(Protocol):
    """Tracks query points of the first frame through a video."""

    name: str
    label: str

    def track(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``frames`` uint8 ``(F,H,W,3)``, ``queries`` ``(N,2)`` (x, y) at frame 0 -> tracks ``(N,F,2)``, visible
        ``(N,F)`` bool, in the pixel coordinates of the input (pixel ``i`` spans ``[i, i+1)``)."""
        ...


class FlowEstimator(Protocol):
    """Optical flow between consecutive frames."""

    name: str
    label: str

    def flow(self, frames: np.ndarray) -> np.ndarray:
        """``frames`` uint8 ``(F,H,W,3)`` -> flows ``(F-1,H,W,2)`` (dx, dy) in pixels of the input."""
        ...


def _frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) < 2:
        raise ValueError(f"expected uint8 frames (F,H,W,3) with F >= 2, got {frames.dtype} {frames.shape}")
    return frames


def _cv2(what: str):
    try:
        import cv2
    except ImportError as err:
        raise MotionUnavailable(
            f"skipped: {what} needs OpenCV, which is not installed "
            f"(pip install 'dreamvideo[motion]' or opencv-python-headless; {err})"
        ) from err
    return cv2


def _upscale(frames: np.ndarray, min_side: int, cv2) -> tuple[list[np.ndarray], float]:
    """Grey frames resized so the short side is at least ``min_side`` (small toy frames track poorly)."""
    h, w = frames.shape[1:3]
    s = max(1.0, min_side / min(h, w))
    size = (round(w * s), round(h * s))
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    return ([cv2.resize(g, size, interpolation=cv2.INTER_CUBIC) for g in grey] if s > 1 else grey), s


class LucasKanadeTracker:
    """Classical fallback tracker: OpenCV pyramidal Lucas-Kanade, frame to frame, with a forward-backward check.

    A point whose backward track misses its start by more than ``fb_error`` pixels (of the input) is lost: not
    visible from then on, its position frozen.

    Args:
        window: LK window side in pixels of the upscaled frames.
        levels: pyramid levels.
        min_side: frames are upscaled (bicubic) to this short side first.
        fb_error: forward-backward tolerance in input pixels.
    """

    name = "lk"
    label = "lk: classical fallback (OpenCV pyramidal Lucas-Kanade, no learned weights)"

    def __init__(self, window: int = 21, levels: int = 3, min_side: int = 256, fb_error: float = 1.0):
        self.cv2 = _cv2("the Lucas-Kanade tracker")
        self.window, self.levels, self.min_side, self.fb_error = window, levels, min_side, fb_error

    def track(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`PointTracker`.

        Args:
            frames: uint8 ``(F,H,W,3)``.
            queries: ``(N,2)`` (x, y) at frame 0.
        """
        cv2 = self.cv2
        grey, s = _upscale(_frames(frames), self.min_side, cv2)
        lk = {
            "winSize": (self.window, self.window),
            "maxLevel": self.levels,
            "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01),
        }
        pts = (np.asarray(queries, np.float32) * s - 0.5).reshape(
            -1, 1, 2
        )  # OpenCV: pixel centres at integers
        tracks, visible = [pts[:, 0].copy()], [np.ones(len(pts), bool)]
        for prev, cur in zip(grey[:-1], grey[1:], strict=True):
            nxt, ok, _ = cv2.calcOpticalFlowPyrLK(prev, cur, pts, None, **lk)
            back, ok_back, _ = cv2.calcOpticalFlowPyrLK(cur, prev, nxt, None, **lk)
            good = (ok[:, 0] == 1) & (ok_back[:, 0] == 1) & visible[-1]
            good &= np.linalg.norm((back - pts)[:, 0], axis=-1) <= self.fb_error * s
            pts = np.where(good[:, None, None], nxt, pts).astype(np.float32)
            tracks.append(pts[:, 0].copy())
            visible.append(good)
        out = (np.stack(tracks, axis=1).astype(np.float64) + 0.5) / s
        return out, np.stack(visible, axis=1)


class FarnebackFlow:
    """Classical fallback flow: OpenCV Farneback dense optical flow.

    It underestimates fast motion of untextured regions (on the toy world's plain sprites the top-5 % mean is
    roughly 0.1-0.9 of the sprite's speed), which is enough to tell still from moving clips at VBench's threshold.

    Args:
        min_side: frames smaller than this are upscaled (bicubic) first; flows are returned in input pixels.
    """

    name = "farneback"
    label = "farneback: classical fallback (OpenCV Farneback optical flow, no learned weights)"

    def __init__(self, min_side: int = 64):
        self.cv2 = _cv2("the Farneback flow")
        self.min_side = min_side

    def flow(self, frames: np.ndarray) -> np.ndarray:
        """See :class:`FlowEstimator`.

        Args:
            frames: uint8 ``(F,H,W,3)``.
        """
        cv2 = self.cv2
        frames = _frames(frames)
        h, w = frames.shape[1:3]
        grey, s = _upscale(frames, self.min_side, cv2)
        out = []
        for prev, cur in zip(grey[:-1], grey[1:], strict=True):
            f = cv2.calcOpticalFlowFarneback(prev, cur, None, 0.5, 4, 15, 3, 5, 1.2, 0)
            out.append(cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) / s if s > 1 else f)
        return np.stack(out).astype(np.float64)


def load_weights(path: str | os.PathLike) -> dict:
    """A state dict from a ``.safetensors`` file or a torch checkpoint read with ``weights_only=True``.

    A checkpoint holding ``{"model": state_dict}`` or ``{"state_dict": ...}`` is unwrapped.

    Args:
        path: the file.
    """
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def _device(device: str | None):
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


class CoTrackerTracker:
    """CoTracker (Karaev et al.) from the ``cotracker`` package: a local checkpoint, or a hub id.

    Args:
        weights: a checkpoint file (``.pth``/``.pt`` read with ``weights_only=True``, or ``.safetensors``) for the
            package's ``CoTrackerPredictor``, or a hub id ``owner/repo:entry`` (default
            ``facebookresearch/co-tracker:cotracker3_offline``) loaded through ``torch.hub``.
        device: where to run (default cuda if available).

    Raises:
        MotionUnavailable: the package is missing, the file does not load, or the hub is unreachable.
    """

    name = "cotracker"

    def __init__(self, weights: str | os.PathLike | None = None, device: str | None = None):
        import torch

        self.device = _device(device)
        source = str(weights or COTRACKER_HUB)
        if Path(source).is_file():
            try:
                from cotracker.predictor import CoTrackerPredictor
            except ImportError as err:
                raise MotionUnavailable(
                    "skipped: CoTracker needs the 'cotracker' package (facebookresearch/"
                    f"co-tracker), which is not installed ({err})"
                ) from err
            params = inspect.signature(CoTrackerPredictor).parameters
            kwargs = {
                k: v
                for k, v in {"checkpoint": None, "offline": True, "window_len": 60}.items()
                if k in params
            }
            try:
                model = CoTrackerPredictor(**kwargs)
                model.model.load_state_dict(load_weights(source))
            except Exception as err:  # noqa: BLE001 - any load failure is reported as a skip
                raise MotionUnavailable(f"skipped: CoTracker weights {source} do not load ({err})") from err
        elif (
            Path(source).exists()
            or Path(source).suffix in WEIGHT_SUFFIXES
            or (":" not in source and source.count("/") != 1)
        ):
            raise MotionUnavailable(
                f"skipped: CoTracker weights {source}: not a file and not a hub id "
                "(owner/repo or owner/repo:entry)"
            )
        else:
            repo, _, entry = source.partition(":")
            try:
                model = torch.hub.load(repo, entry or COTRACKER_HUB.partition(":")[2], trust_repo=True)
            except Exception as err:  # noqa: BLE001 - no network, no package: a skip with the reason
                raise MotionUnavailable(
                    f"skipped: CoTracker hub id {source} could not be loaded ({err})"
                ) from err
        self.model = model.to(self.device).eval()
        self.label = f"cotracker: {source}"

    def track(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """See :class:`PointTracker`.

        Args:
            frames: uint8 ``(F,H,W,3)``.
            queries: ``(N,2)`` (x, y) at frame 0.
        """
        import torch

        frames = _frames(frames)
        video = (
            torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float().to(self.device)
        )  # (1,F,3,H,W) 0-255
        q = np.concatenate([np.zeros((len(queries), 1)), np.asarray(queries) - 0.5], axis=1)  # (t, x, y)
        with torch.no_grad():
            tracks, visible = self.model(video, queries=torch.from_numpy(q).float()[None].to(self.device))
        tracks = tracks[0].permute(1, 0, 2).double().cpu().numpy() + 0.5
        return tracks, visible[0].permute(1, 0).bool().cpu().numpy()


class RaftFlow:
    """torchvision's RAFT: a local state dict (``raft_large`` or ``raft_small``) or torchvision's own weights.

    Frames are resized to a multiple of 8 with a short side of at least ``min_side``; flows come back in input
    pixels.

    Args:
        weights: a state-dict file (``weights_only=True`` or safetensors), or ``raft_large`` / ``raft_small``
            (default ``raft_large``) for torchvision's published weights (a download).
        device: where to run.
        min_side: short side the frames are resized to at least.
        iterations: RAFT's flow updates.

    Raises:
        MotionUnavailable: torchvision is missing or broken, the file does not load, or the download fails.
    """

    name = "raft"

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str | None = None,
        min_side: int = 128,
        iterations: int = 12,
    ):
        try:
            from torchvision.models import optical_flow
        except Exception as err:  # noqa: BLE001 - a CUDA-only build raises RuntimeError on import
            raise MotionUnavailable(
                f"skipped: RAFT needs torchvision, which is not installed or does not import "
                f"({type(err).__name__}: {err})"
            ) from err
        self.device, self.min_side, self.iterations = _device(device), min_side, iterations
        source = str(weights or "raft_large")
        if Path(source).is_file():
            state, model = load_weights(source), None
            for build in (optical_flow.raft_large, optical_flow.raft_small):
                candidate = build(weights=None)
                try:
                    candidate.load_state_dict(state)
                except RuntimeError:
                    continue
                model = candidate
                break
            if model is None:
                raise MotionUnavailable(
                    f"skipped: {source} is neither a raft_large nor a raft_small state dict"
                )
        elif source in ("raft_large", "raft_small"):
            build = getattr(optical_flow, source)
            enum = (
                optical_flow.Raft_Large_Weights if source == "raft_large" else optical_flow.Raft_Small_Weights
            )
            try:
                model = build(weights=enum.DEFAULT)
            except Exception as err:  # noqa: BLE001 - no network
                raise MotionUnavailable(
                    f"skipped: torchvision's {source} weights could not be fetched ({err}); "
                    "pass --flow-weights FILE"
                ) from err
        else:
            raise MotionUnavailable(
                f"skipped: RAFT weights {source}: not a file, nor raft_large / raft_small"
            )
        self.model = model.to(self.device).eval()
        self.label = f"raft: {source}"

    def flow(self, frames: np.ndarray) -> np.ndarray:
        """See :class:`FlowEstimator`.

        Args:
            frames: uint8 ``(F,H,W,3)``.
        """
        import torch
        import torch.nn.functional as F

        frames = _frames(frames)
        h, w = frames.shape[1:3]
        s = max(1.0, self.min_side / min(h, w))
        size = (8 * max(1, round(h * s / 8)), 8 * max(1, round(w * s / 8)))
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().to(self.device) / 127.5 - 1.0
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        with torch.no_grad():
            flow = self.model(x[:-1], x[1:], num_flow_updates=self.iterations)[-1]  # (F-1, 2, h', w')
        flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
        flow = flow * torch.tensor([w / size[1], h / size[0]], device=flow.device)[None, :, None, None]
        return flow.permute(0, 2, 3, 1).double().cpu().numpy()


def _build(what: str, name: str, choices: tuple[str, ...], builders: dict[str, Callable[[], Any]]) -> Any:
    """``builders[name]()``, None for ``none``; an unknown name is a ValueError that lists ``choices``."""
    if name == "none":
        return None
    if name in builders:
        return builders[name]()
    raise ValueError(f"unknown {what} {name!r}; choose from {choices}")


def make_tracker(
    name: str, weights: str | os.PathLike | None = None, device: str | None = None
) -> PointTracker | None:
    """The tracker named ``cotracker``, ``lk`` or ``none`` (None).

    Args:
        name: tracker name.
        weights: CoTracker checkpoint or hub id.
        device: where to run.

    Raises:
        MotionUnavailable: it cannot be used here.
    """
    builders = {"lk": LucasKanadeTracker, "cotracker": lambda: CoTrackerTracker(weights, device)}
    return _build("tracker", name, TRACKERS, builders)


def make_flow(
    name: str, weights: str | os.PathLike | None = None, device: str | None = None
) -> FlowEstimator | None:
    """The flow estimator named ``raft``, ``farneback`` or ``none`` (None).

    Args:
        name: estimator name.
        weights: RAFT state dict or ``raft_large``/``raft_small``.
        device: where to run.

    Raises:
        MotionUnavailable: it cannot be used here.
    """
    builders = {"farneback": FarnebackFlow, "raft": lambda: RaftFlow(weights, device)}
    return _build("flow estimator", name, FLOWS, builders)


# ----------------------------------------------------------------------------- scoring videos


def _still_pair(frames: np.ndarray) -> np.ndarray:
    """A one-frame video as two identical frames (still); longer videos unchanged."""
    frames = np.asarray(frames)
    return np.repeat(frames, 2, axis=0) if frames.ndim == 4 and len(frames) == 1 else frames


class MotionScorer:
    """Track motion fidelity and dynamic degree of videos with a tracker and a flow estimator (either None).

    Args:
        tracker: point tracker (None: no ``track_motion_fidelity``).
        flow: flow estimator (None: no ``dynamic_degree``).
        grid: grid points per side for the tracks.
        notes: messages for the report (e.g. why a metric was skipped).
    """

    def __init__(
        self,
        tracker: PointTracker | None = None,
        flow: FlowEstimator | None = None,
        grid: int = DEFAULT_GRID,
        notes: list[str] | None = None,
    ):
        self.tracker, self.flow, self.grid = tracker, flow, grid
        self.notes = list(notes or [])
        self._ref_tracks: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}

    def grid_tracks(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tracks ``(N,F,2)`` and visibility of a grid on the first frame.

        Args:
            frames: uint8 ``(F,H,W,3)``.
        """
        return self.tracker.track(frames, grid_queries(*frames.shape[1:3], self.grid))

    def motion_fidelity(
        self, frames: np.ndarray, refs: list[np.ndarray], keys: list[str] | None = None
    ) -> float:
        """Track motion fidelity against each reference video, averaged (tracks in units of ``min(H, W)``).

        Args:
            frames: the generated video.
            refs: reference motion videos (any frame count and size).
            keys: cache keys of the references (e.g. their paths): each is tracked once.
        """
        tracks, vis = self.grid_tracks(frames)
        side = min(frames.shape[1:3])
        scores = []
        for i, ref in enumerate(refs):
            key = keys[i] if keys else None
            if key is None or key not in self._ref_tracks:
                rt, rv = self.grid_tracks(ref)
                entry = (rt, rv, min(ref.shape[1:3]))
                if key is not None:
                    self._ref_tracks[key] = entry
            else:
                entry = self._ref_tracks[key]
            rt, rv, ref_side = entry
            scores.append(
                motion_fidelity_from_tracks(rt / ref_side, tracks / side, rv, vis, still=STILL_FRACTION)
            )
        return float(np.mean(scores))

    def score(
        self, frames: np.ndarray, refs: list[np.ndarray] | None = None, keys: list[str] | None = None
    ) -> dict[str, Any]:
        """``track_motion_fidelity`` (with a tracker and references), ``dynamic_degree`` and ``flow_top5_mean``
        (with a flow estimator). A one-frame video (a still clip saved as GIF reads back as one frame) is scored
        as a still two-frame video.

        Args:
            frames: uint8 ``(F,H,W,3)``.
            refs: reference motion videos.
            keys: cache keys of ``refs``.
        """
        out: dict[str, Any] = {}
        frames = _still_pair(frames)
        refs = [_still_pair(r) for r in refs or []]
        if self.tracker is not None and refs:
            out["track_motion_fidelity"] = self.motion_fidelity(frames, refs, keys)
        if self.flow is not None:
            out.update(dynamic_degree(self.flow.flow(frames)))
        return out

    def models(self) -> dict[str, str | None]:
        """Labels of the tracker and flow estimator for the report (the fallbacks say so)."""
        return {
            "tracker": self.tracker.label if self.tracker else None,
            "flow": self.flow.label if self.flow else None,
        }


def build_scorer(
    tracker: str = "none",
    tracker_weights: str | os.PathLike | None = None,
    flow: str = "none",
    flow_weights: str | os.PathLike | None = None,
    grid: int = DEFAULT_GRID,
    device: str | None = None,
) -> MotionScorer | None:
    """A :class:`MotionScorer` from tracker and flow names; unavailable parts become ``skipped:`` notes (printed),
    None when both are ``none``.

    Args:
        tracker: ``cotracker``, ``lk`` or ``none``.
        tracker_weights: CoTracker checkpoint or hub id.
        flow: ``raft``, ``farneback`` or ``none``.
        flow_weights: RAFT state dict or ``raft_large``/``raft_small``.
        grid: grid points per side for the tracks.
        device: where to run.
    """
    if tracker == "none" and flow == "none":
        return None
    notes, parts = [], {}
    for what, make, name, weights in (
        ("tracker", make_tracker, tracker, tracker_weights),
        ("flow", make_flow, flow, flow_weights),
    ):
        metric = "track_motion_fidelity" if what == "tracker" else "dynamic_degree"
        try:
            parts[what] = make(name, weights, device)
        except MotionUnavailable as err:
            parts[what], note = None, f"{metric} {err}."
        else:
            note = f"{metric} with {parts[what].label}." if parts[what] is not None else None
        if note:
            notes.append(note)
            print(note)
    return MotionScorer(parts["tracker"], parts["flow"], grid=grid, notes=notes)


def scorer_from_args(args: argparse.Namespace) -> MotionScorer | None:
    """:func:`build_scorer` from ``dreamvideo evaluate``'s flags.

    Args:
        args: with ``tracker``, ``tracker_weights``, ``flow``, ``flow_weights``, ``grid`` and ``device``.
    """
    return build_scorer(
        getattr(args, "tracker", "none"),
        getattr(args, "tracker_weights", None),
        getattr(args, "flow", "none"),
        getattr(args, "flow_weights", None),
        getattr(args, "grid", DEFAULT_GRID),
        getattr(args, "device", None),
    )


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Add the motion-metric flags to ``dreamvideo evaluate``.

    Args:
        parser: the ``evaluate`` sub-parser.
    """
    g = parser.add_argument_group("motion metrics (track motion fidelity, dynamic degree)")
    g.add_argument(
        "--tracker",
        choices=TRACKERS,
        default="none",
        help="point tracker for track_motion_fidelity (DMT) against the manifest's motion_refs: "
        "cotracker, lk (OpenCV Lucas-Kanade fallback, no weights) or none (default)",
    )
    g.add_argument("--tracker-weights", help=f"CoTracker checkpoint file or hub id (default {COTRACKER_HUB})")
    g.add_argument(
        "--flow",
        choices=FLOWS,
        default="none",
        help="optical flow for dynamic_degree (VBench): raft, farneback (OpenCV fallback, no weights) "
        "or none (default)",
    )
    g.add_argument(
        "--flow-weights", help="RAFT state-dict file, or raft_large / raft_small (torchvision download)"
    )
    g.add_argument(
        "--grid", type=int, default=DEFAULT_GRID, help=f"track grid points per side ({DEFAULT_GRID})"
    )


# ----------------------------------------------------------------------------- agreement and toy world


def pearson(a, b) -> float:
    """Pearson correlation of two equally long sequences (NaN when either is constant).

    Args:
        a: values.
        b: values.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denom) if denom > 0 else float("nan")


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties getting their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse = np.unique(x, return_inverse=True)
    return (np.bincount(inverse, ranks) / np.bincount(inverse))[inverse]


def spearman(a, b) -> float:
    """Spearman rank correlation: Pearson of the ranks (ties get their mean rank).

    Args:
        a: values.
        b: values.
    """
    return pearson(_ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64)))


def exact_toy_tracks(
    centers: np.ndarray, log_size: np.ndarray, first_mask: np.ndarray, queries: np.ndarray
) -> np.ndarray:
    """Exact tracks of grid points in a toy-world clip from the sprite's centre and size per frame.

    A point on the sprite at frame 0 moves with it, ``p_k = c_k + (p - c_0) * r_k / r_0`` (translation plus
    scaling about the centre); background points stay put. ``centers, log_size`` are what
    ``dreamvideo.toy.oracle.track(masks)`` returns.

    Args:
        centers: ``(F, 2)`` sprite centre (x, y) per frame.
        log_size: ``(F,)`` log of the sprite's size per frame.
        first_mask: ``(H, W)`` bool sprite mask of frame 0.
        queries: ``(N, 2)`` (x, y) points at frame 0.

    Returns:
        ``(N, F, 2)`` tracks.
    """
    centers, queries = np.asarray(centers, np.float64), np.asarray(queries, np.float64)
    ratio = np.exp(np.asarray(log_size, np.float64) - log_size[0])
    h, w = first_mask.shape
    ix = np.clip(np.floor(queries[:, 0]).astype(int), 0, w - 1)
    iy = np.clip(np.floor(queries[:, 1]).astype(int), 0, h - 1)
    on = first_mask[iy, ix]
    moving = centers[None] + (queries - centers[0])[:, None] * ratio[None, :, None]
    return np.where(on[:, None, None], moving, queries[:, None, :].repeat(len(centers), axis=1))
