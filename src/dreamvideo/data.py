"""Load and validate training data: subject photos (+ optional masks) and motion videos.

Every loader reads and checks all of its files up front, so bad input fails with a :class:`DataError`
naming the file before any model is built or trained. Images come back as float tensors in [-1, 1],
channels first, centre-cropped to a square and resized; masks as {0, 1} tensors cropped identically.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .fileio import DreamVideoError, read_json

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".gif", ".webm", ".avi", ".mov", ".mkv")
MIN_SIDE = 16  # images smaller than this on either side are refused
CAPTIONS_FILE = "captions.json"
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class DataError(DreamVideoError):
    """A data file or folder is missing, unreadable or inconsistent; the message names it."""


# ----------------------------------------------------------------------------- images


def _visible_files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Non-hidden files of ``folder`` with one of ``extensions`` (any case), in natural name order."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted((p for p in files if p.suffix.lower() in extensions), key=_natural_key)


def _natural_key(path: Path) -> list:
    # "frame2" sorts before "frame10"; ties are broken by the raw name so the order is total.
    parts = re.split(r"(\d+)", path.name.lower())
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts] + [(2, 0, path.name)]


def _open_image(path: Path) -> Image.Image:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        return Image.open(path)
    except Image.DecompressionBombError as err:
        raise DataError(f"{path}: image is too large to load safely ({err})") from err
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable image ({err})") from err


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed, i.e. after the EXIF orientation is applied; reads no pixels."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block is ignored here, as exif_transpose would do
        orientation = 1
    w, h = img.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _to_8bit_gray(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float grey -> 8-bit 'L' with proper scaling (Pillow's convert('L') clips instead)."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
        arr = arr / 257.0  # 16-bit range (PNG 16-bit greys may decode as 'I')
    elif img.mode == "F" and arr.max(initial=0) <= 1.0:
        arr = arr * 255.0  # float images stored in [0, 1]
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 'RGB'; transparent pixels are composited on white."""
    if img.mode in _SIXTEEN_BIT_MODES:
        img = _to_8bit_gray(img)
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return img.convert("RGB")


def _to_mask_gray(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 'L'. A mask with a non-trivial alpha channel uses the alpha as the mask."""
    if _has_alpha(img):
        alpha = img.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:
            return alpha
    if img.mode in _SIXTEEN_BIT_MODES:
        return _to_8bit_gray(img)
    return img.convert("L")


def _center_box(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def _load_square(
    path: Path,
    size: int,
    convert: Callable[[Image.Image], Image.Image],
    resample: Image.Resampling,
    mask: bool,
) -> Image.Image:
    """Open, orient, convert, centre-crop and resize one image file to ``size`` x ``size``."""
    img = _open_image(path)
    with img:
        width, height = _oriented_size(img)
        if min(width, height) < MIN_SIDE:
            raise DataError(f"{path}: image is {width}x{height}, too small (at least {MIN_SIDE} px per side)")
        side = min(width, height)
        if side < size:
            kind = "mask" if mask else "image"
            warnings.warn(
                f"{path}: {kind} is {width}x{height}, smaller than {size}; upscaling it", stacklevel=3
            )
        scale = side / size
        if scale >= 2:  # JPEG decodes directly at 1/2, 1/4 or 1/8 scale: huge photos stay cheap
            img.draft(None, (math.ceil(img.width / scale), math.ceil(img.height / scale)))
        try:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            img = convert(img)
        except DataError:
            raise
        except Exception as err:  # truncated data, unsupported mode, decoder errors
            raise DataError(f"{path}: not a readable image ({err})") from err
        # Crop before resizing so the filter cannot pull in pixels from outside the square;
        # reducing_gap box-reduces first, so resizing a 4000 px image to 256 px stays fast.
        square = img.crop(_center_box(*img.size))
        return square.resize((size, size), resample, reducing_gap=None if mask else 3.0)


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """Load one photo as a square float tensor.

    Args:
        path: an image file (any format and colour mode Pillow reads; EXIF orientation is applied).
        size: output side in pixels; the image is centre-cropped to a square and resized (Lanczos).

    Returns:
        ``(3, size, size)`` float32 tensor in [-1, 1].

    Raises:
        DataError: missing, corrupt or tiny (< 16 px) file. Smaller than ``size`` only warns.
    """
    img = _load_square(Path(path), size, _to_rgb, Image.Resampling.LANCZOS, mask=False)
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def load_mask(path: str | Path, size: int) -> torch.Tensor:
    """Load a binary subject mask with the same centre crop as an image of the same aspect ratio.

    Args:
        path: mask file in any mode; grey value > 127 means subject. If the file has a real alpha
            channel (not fully opaque), the alpha is used instead.
        size: output side in pixels (nearest-neighbour resize).

    Returns:
        ``(1, size, size)`` float32 tensor of 0s and 1s.
    """
    img = _load_square(Path(path), size, _to_mask_gray, Image.Resampling.NEAREST, mask=True)
    arr = np.asarray(img, dtype=np.uint8) > 127
    return torch.from_numpy(arr.copy()).float().unsqueeze(0)


@dataclass
class SubjectData:
    """Subject photos, optional masks (same order), and the source files."""

    images: torch.Tensor  # (N, 3, S, S) in [-1, 1]
    masks: torch.Tensor | None  # (N, 1, S, S) in {0, 1}
    paths: list[Path]

    def __len__(self) -> int:
        return len(self.paths)


def _by_stem(files: list[Path], folder: Path) -> dict[str, Path]:
    table: dict[str, Path] = {}
    for f in files:
        if f.stem in table:
            raise DataError(f"{table[f.stem]} and {f}: two files in {folder} share the name '{f.stem}'")
        table[f.stem] = f
    return table


def _match_masks(images: list[Path], image_dir: Path, mask_dir: Path) -> list[Path]:
    if not mask_dir.is_dir():
        raise DataError(f"{mask_dir}: mask folder not found")
    by_image = _by_stem(images, image_dir)
    by_mask = _by_stem(_visible_files(mask_dir, IMAGE_EXTENSIONS), mask_dir)
    for stem, image in by_image.items():
        if stem not in by_mask:
            raise DataError(f"{image}: no mask for this image in {mask_dir} (expected {mask_dir / stem}.png)")
    for stem, mask in by_mask.items():
        if stem not in by_image:
            raise DataError(
                f"{mask}: mask has no matching image in {image_dir} (expected {image_dir / stem}.*)"
            )
    masks = [by_mask[p.stem] for p in images]
    for image, mask in zip(images, masks, strict=True):
        with _open_image(image) as a, _open_image(mask) as b:
            (wa, ha), (wb, hb) = _oriented_size(a), _oriented_size(b)
        if abs(wa * hb - wb * ha) > 0.01 * wa * hb:  # aspect ratios differ by more than 1 %
            raise DataError(
                f"{mask}: mask is {wb}x{hb} but its image {image} is {wa}x{ha} (aspect ratios differ)"
            )
    return masks


def load_subject_images(folder: str | Path, size: int, masks: str | Path | None = None) -> SubjectData:
    """Load every photo of a subject (and its masks), validating all files first.

    Args:
        folder: folder of images. If it holds ``images/`` (and optionally ``masks/``) subfolders,
            those are used. Hidden and non-image files are ignored; order is natural name order.
        size: square side in pixels.
        masks: optional folder of masks matched to images by file stem (``dog1.jpg`` <-> ``dog1.png``).

    Returns:
        :class:`SubjectData`.

    Raises:
        DataError: missing/empty folder, unreadable image, image without mask or mask without image,
            mask whose aspect ratio differs from its image's.
    """
    image_dir = Path(folder)
    if not image_dir.is_dir():
        what = "not a folder" if image_dir.exists() else "folder not found"
        raise DataError(f"{image_dir}: {what} (expected a folder of subject images)")
    mask_dir = Path(masks) if masks is not None else None
    if (image_dir / "images").is_dir():
        if mask_dir is None and (image_dir / "masks").is_dir():
            mask_dir = image_dir / "masks"
        image_dir = image_dir / "images"
    files = _visible_files(image_dir, IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"{image_dir}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    mask_files = _match_masks(files, image_dir, mask_dir) if mask_dir is not None else None
    images = torch.stack([load_image(p, size) for p in files])
    mask_tensor = torch.stack([load_mask(p, size) for p in mask_files]) if mask_files else None
    return SubjectData(images=images, masks=mask_tensor, paths=files)


# ----------------------------------------------------------------------------- videos


def _short_reason(err: Exception) -> str:
    # ffmpeg errors carry its whole stderr; keep the first and last lines.
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.startswith("===")]
    if not lines:
        return type(err).__name__
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"[:300]


def _frame_files(folder: Path) -> list[Path]:
    return _visible_files(folder, IMAGE_EXTENSIONS)


def _read_frame_file(path: Path) -> np.ndarray:
    with _open_image(path) as img:
        try:
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            return np.asarray(_to_rgb(img), dtype=np.uint8)
        except Exception as err:
            raise DataError(f"{path}: not a readable image ({err})") from err


def _open_video(path: Path) -> tuple[Iterator[np.ndarray], float | None]:
    """A lazy iterator over (H, W, 3) uint8 frames plus the frame rate if the file records one."""
    if path.is_dir():
        files = _frame_files(path)
        if not files:
            raise DataError(
                f"{path}: folder holds no frame images (looked for {', '.join(IMAGE_EXTENSIONS)})"
            )
        return (_read_frame_file(f) for f in files), None
    if not path.exists():
        raise DataError(f"{path}: file not found")
    ext = path.suffix.lower()
    if ext not in VIDEO_EXTENSIONS:
        raise DataError(f"{path}: not a video (expected {', '.join(VIDEO_EXTENSIONS)} or a folder of frames)")
    plugin = "pillow" if ext == ".gif" else "FFMPEG"
    try:
        meta = iio.immeta(path, plugin=plugin)
        if plugin == "pillow":
            duration = meta.get("duration") or 0  # milliseconds per frame
            fps = 1000.0 / duration if duration > 0 else None
            frames = iio.imiter(path, plugin="pillow", mode="RGB")
        else:
            fps = float(meta["fps"]) if meta.get("fps") else None
            frames = iio.imiter(path, plugin="FFMPEG")
    except Exception as err:
        raise DataError(f"{path}: not a readable video ({_short_reason(err)})") from err
    return frames, fps


def _read_frames(
    path: Path, max_frames: int | None, transform: Callable[[np.ndarray], np.ndarray] | None = None
) -> tuple[list[np.ndarray], float | None]:
    frames_iter, fps = _open_video(path)
    frames: list[np.ndarray] = []
    try:
        for frame in frames_iter:
            if max_frames is not None and len(frames) >= max_frames:
                break
            frame = np.asarray(frame)
            if frame.ndim == 2:
                frame = np.repeat(frame[..., None], 3, axis=2)
            frame = frame[..., :3].astype(np.uint8, copy=False)
            if frames and transform is None and frame.shape != frames[0].shape:
                raise DataError(
                    f"{path}: frame {len(frames)} is {frame.shape[1]}x{frame.shape[0]}, "
                    f"frame 0 is {frames[0].shape[1]}x{frames[0].shape[0]}"
                )
            frames.append(transform(frame) if transform else frame)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path}: not a readable video ({_short_reason(err)})") from err
    finally:
        close = getattr(frames_iter, "close", None)
        if close:
            close()
    if not frames:
        raise DataError(f"{path}: video has no frames")
    return frames, fps


def load_video(path: str | Path, max_frames: int | None = None) -> tuple[np.ndarray, float | None]:
    """Read a video file (mp4/webm/avi/mov/mkv via ffmpeg, gif via Pillow) or a folder of frames.

    Args:
        path: video file, or a folder whose images (natural name order) are the frames.
        max_frames: read at most this many frames from the start.

    Returns:
        ``(frames, fps)``: uint8 array ``(F, H, W, 3)`` and the source frame rate (None when unknown,
        e.g. for a folder of frames).

    Raises:
        DataError: missing, corrupt or empty video; frames of different sizes in a folder.
    """
    frames, fps = _read_frames(Path(path), max_frames)
    return np.stack(frames), fps


@dataclass
class MotionData:
    """Motion videos (each ``(F_i, 3, S, S)`` in [-1, 1]), one caption each, source paths and fps."""

    videos: list[torch.Tensor]
    captions: list[str]
    paths: list[Path]
    fps: list[float | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def _default_caption(path: Path) -> str:
    words = re.sub(r"[_\-.]+", " ", path.stem if path.is_file() else path.name).split()
    return " ".join(words) or "a video"


def _discover_videos(source: Path) -> tuple[list[Path], Path | None]:
    """Video items under ``source`` and the folder to look for captions.json in (None for a lone file)."""
    if not source.exists():
        raise DataError(f"{source}: file or folder not found")
    if source.is_file():
        if source.suffix.lower() not in VIDEO_EXTENSIONS:
            raise DataError(f"{source}: not a video (expected {', '.join(VIDEO_EXTENSIONS)})")
        return [source], None
    children = sorted((p for p in source.iterdir() if not p.name.startswith(".")), key=_natural_key)
    items = [p for p in children if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS]
    items += [p for p in children if p.is_dir() and _frame_files(p)]
    if items:
        return sorted(items, key=_natural_key), source
    if _frame_files(source):  # the folder itself is one video given as frames
        return [source], source
    raise DataError(f"{source}: no videos found (looked for {', '.join(VIDEO_EXTENSIONS)} or frame folders)")


def _caption_table(captions: str | dict | None, folder: Path | None, items: list[Path]) -> dict[str, str]:
    """Captions by file name/stem, checked; ``folder`` is None for a lone video file."""
    json_path = (folder if folder is not None else items[0].parent) / CAPTIONS_FILE
    if isinstance(captions, dict):
        table, origin = captions, "captions"
    elif json_path.is_file():
        try:
            table, origin = read_json(json_path), str(json_path)
        except DreamVideoError as err:
            raise DataError(str(err)) from err
    else:
        return {}
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in table.items()
    ):
        raise DataError(f"{origin}: must map video file names to caption strings")
    if folder is not None:  # a lone file may sit next to a captions.json written for other files
        known = {p.name for p in items} | {p.stem for p in items}
        unknown = sorted(set(table) - known)
        if unknown:
            raise DataError(f"{origin}: caption for '{unknown[0]}' which is not a video in {folder}")
    return table


def load_motion_videos(
    source: str | Path,
    size: int,
    captions: str | dict[str, str] | None = None,
    max_frames: int | None = None,
    min_frames: int | None = None,
) -> MotionData:
    """Load every motion video of a folder (or one video), centre-cropped and resized, with captions.

    Args:
        source: a video file, a folder of frames, or a folder of videos / frame folders.
        size: square side in pixels.
        captions: a dict (file name or stem -> caption), or one string for all videos. Per video the
            caption is, in order: the dict entry or ``captions.json`` entry in the folder, the string,
            else words from the file name (``car_turning.mp4`` -> "car turning").
        max_frames: keep at most this many frames of each video.
        min_frames: refuse videos shorter than this (use it to fail early when clips must not loop).

    Returns:
        :class:`MotionData`.

    Raises:
        DataError: missing/empty folder, unreadable video, caption file naming unknown videos,
            video shorter than ``min_frames``.
    """
    items, folder = _discover_videos(Path(source))
    table = _caption_table(captions, folder, items)
    default = captions if isinstance(captions, str) else None

    def resize(frame: np.ndarray) -> np.ndarray:
        img = Image.fromarray(frame)
        img = img.crop(_center_box(*img.size)).resize(
            (size, size), Image.Resampling.BICUBIC, reducing_gap=2.0
        )
        return np.asarray(img)

    videos, caption_list, fps_list = [], [], []
    for item in items:
        frames, fps = _read_frames(item, max_frames, transform=resize)
        if len(frames) < 2:
            raise DataError(
                f"{item}: has {len(frames)} frame, not a video (a still image cannot teach a motion)"
            )
        if min_frames is not None and len(frames) < min_frames:
            raise DataError(f"{item}: video has {len(frames)} frames, fewer than the {min_frames} required")
        arr = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
        videos.append(arr.float() / 127.5 - 1.0)
        caption_list.append(table.get(item.name) or table.get(item.stem) or default or _default_caption(item))
        fps_list.append(fps)
    return MotionData(videos=videos, captions=caption_list, paths=items, fps=fps_list)


def clip_span(num_frames: int, stride: int) -> int:
    """Number of source frames a clip of ``num_frames`` taken every ``stride`` frames covers."""
    return (num_frames - 1) * stride + 1


def sample_clip(
    video: torch.Tensor,
    num_frames: int,
    stride: int,
    generator: torch.Generator,
    short: str = "loop",
    name: str | Path | None = None,
) -> torch.Tensor:
    """Take a random window of ``num_frames`` frames, every ``stride``-th frame, from ``video``.

    Args:
        video: ``(F, 3, S, S)`` tensor.
        num_frames: clip length.
        stride: step between taken frames (see :func:`frame_stride_for_fps`).
        generator: random generator for the start frame (reproducible sampling).
        short: what to do when the video is shorter than the clip span: ``"loop"`` plays it
            ping-pong (0, 1, ..., F-1, F-2, ..., 1, 0, 1, ...), which avoids a jump cut at the seam; ``"pad"``
            takes it from the start and pads with black frames, as the authors do (index ``-1``: a black frame);
            ``"error"`` raises :class:`DataError`.
        name: video name used in the error message.

    Returns:
        ``(num_frames, 3, S, S)`` tensor.
    """
    if num_frames < 1 or stride < 1:
        raise ValueError(f"num_frames and stride must be >= 1, got {num_frames} and {stride}")
    if short not in ("loop", "pad", "error"):
        raise ValueError(f"short must be 'loop', 'pad' or 'error', got {short!r}")
    total, span = video.shape[0], clip_span(num_frames, stride)
    steps = torch.arange(num_frames) * stride
    if total >= span:
        start = int(torch.randint(0, total - span + 1, (1,), generator=generator))
        return video[start + steps]
    if short == "error":
        raise DataError(
            f"{name or 'video'}: has {total} frames, but a clip of {num_frames} frames every {stride} "
            f"frames needs {span}"
        )
    if short == "pad":  # only for frame indices: -1 marks a black frame
        if video.ndim != 1:
            raise ValueError("short='pad' samples frame indices: pass a 1-D index tensor")
        return torch.where(steps < total, video[steps.clamp(max=total - 1)], -1)
    period = max(2 * total - 2, 1)
    start = int(torch.randint(0, period, (1,), generator=generator))
    pos = (start + steps) % period
    return video[torch.where(pos < total, pos, period - pos)]


def frame_stride_for_fps(source_fps: float | None, target_fps: float = 8.0) -> int:
    """Frame step that brings ``source_fps`` closest to ``target_fps`` (the authors train at 8 fps).

    Args:
        source_fps: frame rate of the video; None (unknown) gives stride 1.
        target_fps: wanted frame rate of the sampled clip.
    """
    if target_fps <= 0:
        raise ValueError(f"target_fps must be > 0, got {target_fps}")
    if not source_fps or source_fps <= 0:
        return 1
    return max(1, round(source_fps / target_fps))
