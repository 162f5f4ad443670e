"""Oracle metrics for the toy world, computed from generated pixels only (plus reference data).

The toy world has a static textured background with a known mean colour and one sprite, so the foreground can be
found without any learned model: classify the background from the frame border, remove the static background
(per-pixel temporal median where it looks like background, the class colour elsewhere), threshold the colour
distance, and keep the largest blob. Everything else (colour, motion, subject and motion fidelity) is read off
that foreground.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from dreamvideo.fileio import DreamVideoError
from dreamvideo.toy.world import (
    BACKGROUND_COLORS,
    COLORS,
    MOTIONS,
    ClipSpec,
    Sprite,
    trajectory,
)

FG_THRESHOLD = 50.0  # RGB distance from the background model; sprites are >= ~90 away, textures < ~40
SCALE_WEIGHT = 25.0  # pixels of displacement per unit of log-size change in motion features
MIN_BLOB = 8  # smaller foreground blobs are texture or noise specks: the frame is taken as empty
NOISY_DISTANCE = 14.0  # median border distance above which pixel noise is averaged out before thresholding
CONFIDENT_DISTANCE = 60.0  # pixels nearer than this to a palette colour vote for the dominant colour
STILL_SPEED = 1.0  # mean pixels per frame (incl. weighted size change) below which a clip "stays still"
# Colours a sprite pixel can have: the vocabulary plus the near-black pattern colour of light sprites.
_PALETTE = np.array([*COLORS.values(), (20, 20, 20)], dtype=np.float64)


class OracleError(DreamVideoError):
    """Input that the oracle cannot score (wrong array shape)."""


def _as_video(frames: np.ndarray) -> np.ndarray:
    """(F,H,W,3) float64 in [0, 255]; uint8 or float input (floats <= 1 are taken as [0, 1])."""
    frames = np.asarray(frames)
    if frames.ndim == 3 and frames.shape[-1] == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape[:3]) == 0:
        raise OracleError(f"expected video frames of shape (F,H,W,3), got {frames.shape}")
    out = frames.astype(np.float64)
    if frames.dtype != np.uint8 and out.max() <= 1.0:
        out = out * 255.0
    return out


# ----------------------------------------------------------------------------- binary morphology (no scipy)


def _spread(a: np.ndarray) -> np.ndarray:
    """Maximum of each pixel and its 4-neighbours over the last two axes (a dilation for boolean masks)."""
    out = a.copy()
    np.maximum(out[:, 1:], a[:, :-1], out=out[:, 1:])
    np.maximum(out[:, :-1], a[:, 1:], out=out[:, :-1])
    np.maximum(out[:, :, 1:], a[:, :, :-1], out=out[:, :, 1:])
    np.maximum(out[:, :, :-1], a[:, :, 1:], out=out[:, :, :-1])
    return out


def _label(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels of each frame (0 = not in mask; labels are unique over the whole video).

    Labels start as pixel index + 1 and spread as the neighbourhood maximum, with pointer jumping (a pixel takes
    the label of the pixel its label names) so long blobs converge in few iterations.
    """
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:
        new = np.where(mask, _spread(labels), 0)
        new = np.concatenate([[0], new.ravel()])[new]
        if np.array_equal(new, labels):
            return labels
        labels = new


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 4-connected blob of each frame, if it has at least MIN_BLOB pixels."""
    labels = _label(mask)
    out = np.zeros_like(mask)
    for f in range(len(mask)):
        counts = np.bincount(labels[f].ravel())
        counts[0] = 0
        if counts.max() >= MIN_BLOB:
            out[f] = labels[f] == counts.argmax()
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not connected to the frame border."""
    labels = _label(~mask)
    return mask | ~np.isin(labels, labels[:, _ring(mask.shape[1:], 1)])


def _close(mask: np.ndarray) -> np.ndarray:
    """Morphological closing with a 4-neighbour cross: bridges one-pixel gaps."""
    return ~_spread(~_spread(mask))


# ----------------------------------------------------------------------------- segmentation and classes


def _ring(shape: tuple[int, int], width: int = 2) -> np.ndarray:
    """Boolean (H,W) mask of the frame border."""
    ring = np.ones(shape, dtype=bool)
    ring[width:-width, width:-width] = False
    return ring


def _border_pixels(video: np.ndarray) -> np.ndarray:
    return video[:, _ring(video.shape[1:3])].reshape(-1, 3)


def _box3(video: np.ndarray) -> np.ndarray:
    """3x3 box average over the H and W axes of (F,H,W,C), edges replicated."""
    for axis in (1, 2):
        p = np.pad(video, [(1, 1) if a == axis else (0, 0) for a in range(video.ndim)], mode="edge")
        n = video.shape[axis]
        video = sum(np.take(p, range(i, i + n), axis=axis) for i in range(3)) / 3
    return video


def background_class(frames: np.ndarray) -> str:
    """The background whose mean colour is nearest the median colour of the frame border.

    Args:
        frames: video (F,H,W,3) uint8.
    """
    border = np.median(_border_pixels(_as_video(frames)), axis=0)
    names = list(BACKGROUND_COLORS)
    return names[int(np.argmin(np.linalg.norm(np.array(list(BACKGROUND_COLORS.values())) - border, axis=1)))]


def segment_foreground(frames: np.ndarray) -> np.ndarray:
    """Foreground masks (F,H,W) bool: the largest blob of pixels far from the background model, holes filled.

    The background model is the per-pixel temporal median where it is near the background class colour (this
    removes the static texture exactly) and the class colour elsewhere (where the sprite stays in place).

    Args:
        frames: video (F,H,W,3) uint8 (one image (H,W,3) is also accepted).
    """
    video = _as_video(frames)
    border = np.median(_border_pixels(video), axis=0)
    base = np.array(BACKGROUND_COLORS[background_class(video)], dtype=np.float64)
    base = 0.5 * (base + border)  # follow colour shifts of generated videos
    median = np.median(video, axis=0)
    looks_bg = np.linalg.norm(median - base, axis=-1, keepdims=True) < FG_THRESHOLD
    background = np.where(looks_bg, median, base) if len(video) > 2 else base
    residual = video - background
    distance = np.linalg.norm(residual, axis=-1)
    if np.median(distance[:, _ring(video.shape[1:3])]) > NOISY_DISTANCE:  # pixel noise: average 3x3 first
        distance = np.linalg.norm(_box3(residual), axis=-1)
    far = distance > FG_THRESHOLD
    # closing bridges one-pixel pattern lines whose colour is close to the background's
    return _fill_holes(_largest_component(_close(far)))


def dominant_color(frames: np.ndarray, masks: np.ndarray | None = None) -> str:
    """Most common nearest vocabulary colour among (eroded) foreground pixels.

    Args:
        frames: video (F,H,W,3) uint8.
        masks: foreground masks if already computed (default: :func:`segment_foreground`).
    """
    video = _as_video(frames)
    mask = segment_foreground(video) if masks is None else np.asarray(masks, dtype=bool)
    inner = ~_spread(~mask)  # erode by one pixel: edges of generated sprites mix with the background
    pixels = video[inner] if inner.sum() >= 8 else video[mask] if mask.any() else video.reshape(-1, 3)
    labels, dist = _quantize(pixels, return_distance=True)
    if (
        dist < CONFIDENT_DISTANCE
    ).sum() >= 8:  # skip pixels mixing two colours (blur of a pattern or an edge)
        labels = labels[dist < CONFIDENT_DISTANCE]
    votes = np.bincount(labels, minlength=len(_PALETTE))[: len(COLORS)]
    return list(COLORS)[int(votes.argmax())]


def _quantize(pixels: np.ndarray, return_distance: bool = False):
    """Index of the nearest palette colour for each pixel (..., 3), and optionally the distance to it."""
    dist = np.linalg.norm(pixels[..., None, :] - _PALETTE, axis=-1)
    index = np.argmin(dist, axis=-1)
    return (index, np.take_along_axis(dist, index[..., None], -1)[..., 0]) if return_distance else index


# ----------------------------------------------------------------------------- motion


def track(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (F,2) and log size (F,) of each mask; empty frames copy the nearest non-empty one."""
    area = masks.sum(axis=(1, 2)).astype(np.float64)
    yy, xx = np.mgrid[0 : masks.shape[1], 0 : masks.shape[2]] + 0.5
    valid = np.flatnonzero(area > 0)
    if len(valid) == 0:
        return np.zeros((len(masks), 2)), np.zeros(len(masks))
    safe = np.maximum(area, 1)
    centers = np.stack([(masks * xx).sum((1, 2)) / safe, (masks * yy).sum((1, 2)) / safe], axis=1)
    nearest = valid[np.abs(np.arange(len(masks))[:, None] - valid[None]).argmin(axis=1)]
    return centers[nearest], 0.5 * np.log(safe[nearest])


def _features(centers: np.ndarray, log_size: np.ndarray, num_frames: int | None = None) -> np.ndarray:
    """Per-frame displacement (dx, dy, SCALE_WEIGHT * dlog size), flattened; resampled to num_frames."""
    track = np.concatenate([centers, SCALE_WEIGHT * log_size[:, None]], axis=1)
    if num_frames is not None and num_frames != len(track):
        old, new = np.linspace(0, 1, len(track)), np.linspace(0, 1, num_frames)
        track = np.stack([np.interp(new, old, track[:, i]) for i in range(3)], axis=1)
    return np.diff(track, axis=0).ravel()


def motion_features(
    frames: np.ndarray, num_frames: int | None = None, masks: np.ndarray | None = None
) -> np.ndarray:
    """Motion feature vector of a video: per-frame foreground displacement and weighted size change.

    Args:
        frames: video (F,H,W,3) uint8.
        num_frames: resample the trajectory to this many frames first.
        masks: foreground masks if already computed (default: :func:`segment_foreground`).
    """
    masks = segment_foreground(frames) if masks is None else np.asarray(masks, dtype=bool)
    return _features(*track(masks), num_frames)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 1e-6 and nb > 1e-6 else 0.0


@lru_cache(maxsize=8)
def _templates(num_frames: int) -> list[tuple[str, np.ndarray]]:
    """Motion features of each vocabulary motion (all phases that change its shape)."""
    out = []
    for motion in MOTIONS:
        for phase in np.linspace(0, 1, 32, endpoint=False) if motion in ("circles", "shakes") else [0.0]:
            offsets, scale = trajectory(motion, num_frames, 12.0, float(phase))
            out.append((motion, _features(offsets, np.log(10.0 * scale))))
    return out


def motion_class(frames: np.ndarray, masks: np.ndarray | None = None) -> str:
    """Nearest vocabulary motion: "stays still" under STILL_SPEED, else the most cosine-similar template.

    Args:
        frames: video (F,H,W,3) uint8.
        masks: foreground masks if already computed (default: :func:`segment_foreground`).
    """
    video = _as_video(frames)
    feats = motion_features(video, masks=masks)
    if np.linalg.norm(feats.reshape(-1, 3), axis=1).mean() < STILL_SPEED:
        return "stays still"
    scores = [(_cosine(feats, t), m) for m, t in _templates(len(video)) if m != "stays still"]
    return max(scores)[1]


def motion_fidelity(
    frames: np.ndarray, ref_videos: list[np.ndarray], masks: np.ndarray | None = None
) -> float:
    """Mean cosine similarity, in [-1, 1], between the motion features of the video and of each reference.

    Features are the per-frame displacements of the foreground centroid plus weighted log-size changes, so the
    score ignores where the subject is and what it looks like, and compares only the trajectory's shape
    (direction and timing, independent of amplitude). A still video scores 0.

    Args:
        frames: video (F,H,W,3) uint8.
        ref_videos: videos showing the target motion (any frame count; resampled to the video's).
        masks: foreground masks of ``frames`` if already computed.
    """
    if not len(ref_videos):
        raise OracleError("motion_fidelity needs at least one reference video")
    video = _as_video(frames)
    feats = motion_features(video, masks=masks)
    return float(np.mean([_cosine(feats, motion_features(ref, len(video))) for ref in ref_videos]))


# ----------------------------------------------------------------------------- appearance


def _square_crop(mask: np.ndarray, labels: np.ndarray, side: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Scale-normalise: the square around the mask's bounding box, resampled to side x side."""
    ys, xs = np.nonzero(mask)
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    half = max(ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()) / 2
    grid = (np.arange(side) + 0.5) / side * 2 * half - half
    iy = np.clip(np.floor(cy + grid).astype(int), 0, mask.shape[0] - 1)
    ix = np.clip(np.floor(cx + grid).astype(int), 0, mask.shape[1] - 1)
    return mask[np.ix_(iy, ix)], labels[np.ix_(iy, ix)]


def _appearance(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(palette histogram, scale-normalised mask, its palette labels) of one foreground."""
    labels = _quantize(image)
    hist = np.bincount(labels[mask], minlength=len(_PALETTE)).astype(np.float64)
    crop_mask, crop_labels = _square_crop(mask, labels)
    return hist / hist.sum(), crop_mask, crop_labels


def _appearance_similarity(a, b) -> float:
    """Mean of colour-histogram intersection, mask IoU and colour-layout IoU (same colour at the same place)."""
    (ha, ma, la), (hb, mb, lb) = a, b
    union = (ma | mb).sum()
    iou = (ma & mb).sum() / union
    layout = (ma & mb & (la == lb)).sum() / union
    return float((np.minimum(ha, hb).sum() + iou + layout) / 3)


def subject_fidelity(
    frames: np.ndarray,
    ref_images: list[np.ndarray],
    ref_masks: list[np.ndarray],
    masks: np.ndarray | None = None,
) -> float:
    """Foreground appearance similarity to a reference subject, in [0, 1] (1 = identical).

    For every frame and reference: the mean of (1) intersection of palette-colour histograms of the
    foregrounds, (2) IoU of the masks cropped to their square bounding box and resized (scale-normalised shape),
    (3) the same IoU counting only pixels of the same palette colour (where the colours are); averaged over
    frames and references. Frames with no foreground score 0.

    Args:
        frames: video (F,H,W,3) uint8.
        ref_images: reference photos (H,W,3) uint8.
        ref_masks: their subject masks (H,W) bool.
        masks: foreground masks of ``frames`` if already computed.
    """
    if len(ref_images) != len(ref_masks) or not ref_images:
        raise OracleError(
            f"need as many reference masks as images (got {len(ref_images)} and {len(ref_masks)})"
        )
    refs = []
    for i, (image, mask) in enumerate(zip(ref_images, ref_masks, strict=True)):
        image, mask = _as_video(image)[0], np.asarray(mask, dtype=bool)
        if mask.shape != image.shape[:2] or not mask.any():
            raise OracleError(
                f"reference {i}: mask {mask.shape} must match image {image.shape[:2]} and not be empty"
            )
        refs.append(_appearance(image, mask))
    video = _as_video(frames)
    scores = []
    masks = segment_foreground(video) if masks is None else np.asarray(masks, dtype=bool)
    for image, mask in zip(video, masks, strict=True):
        if not mask.any():
            scores.append(0.0)
            continue
        own = _appearance(image, mask)
        scores.append(np.mean([_appearance_similarity(own, ref) for ref in refs]))
    return float(np.mean(scores))


def temporal_consistency(frames: np.ndarray) -> float:
    """1 - mean absolute pixel change between consecutive frames / 255, in [0, 1] (a still video scores 1).

    Args:
        frames: video (F,H,W,3) uint8.
    """
    video = _as_video(frames)
    if len(video) < 2:
        return 1.0
    return float(1.0 - np.abs(np.diff(video, axis=0)).mean() / 255.0)


def evaluate_video(
    frames: np.ndarray,
    *,
    prompt_spec: ClipSpec | None = None,
    subject_refs: list[tuple[np.ndarray, np.ndarray]] | None = None,
    motion_refs: list[np.ndarray] | None = None,
) -> dict[str, float | str]:
    """All applicable metrics of one video.

    Args:
        frames: video (F,H,W,3) uint8.
        prompt_spec: the clip the prompt described; adds predicted ``background``/``color``/``motion`` and
            0/1 ``*_ok`` entries (colour only for single sprites, motion only for vocabulary motions).
        subject_refs: ``[(image, mask), ...]`` of the target subject; adds ``subject_fidelity``.
        motion_refs: videos (or ``(video, caption)`` pairs) of the target motion; adds ``motion_fidelity``.

    Returns:
        dict of metric name -> value.
    """
    video = _as_video(frames)
    masks = segment_foreground(video)
    out: dict[str, float | str] = {"temporal_consistency": temporal_consistency(video)}
    if prompt_spec is not None:
        out["background"] = background_class(video)
        out["background_ok"] = float(out["background"] == prompt_spec.background)
        if isinstance(prompt_spec.sprite, Sprite):
            out["color"] = dominant_color(video, masks)
            out["color_ok"] = float(out["color"] == prompt_spec.sprite.color)
        if prompt_spec.motion in MOTIONS:
            out["motion"] = motion_class(video, masks)
            out["motion_ok"] = float(out["motion"] == prompt_spec.motion)
    if subject_refs:
        images, ref_masks = [i for i, _ in subject_refs], [m for _, m in subject_refs]
        out["subject_fidelity"] = subject_fidelity(video, images, ref_masks, masks)
    if motion_refs:
        refs = [r[0] if isinstance(r, tuple) else r for r in motion_refs]
        out["motion_fidelity"] = motion_fidelity(video, refs, masks)
    return out
