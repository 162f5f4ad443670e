"""Write generated videos: mp4 (libx264), gif, numbered PNG frames, and labelled contact sheets.

Every writer is atomic: it writes a temporary file next to the target (with the target's extension,
so encoders pick the right format) and moves it into place only once complete. A failed write leaves
no partial file and keeps any older file at the target path.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .fileio import DreamVideoError, atomic_path

VIDEO_WRITE_EXTENSIONS = (".mp4", ".gif")
MIN_MP4_SIDE = 64  # smaller frames are upscaled (nearest) by an integer factor for player compatibility

Frames = torch.Tensor | np.ndarray


def to_uint8_frames(frames: Frames, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Convert frames to a uint8 ``(F, H, W, 3)`` array.

    Args:
        frames: torch float ``(F, 3, H, W)`` (or ``(3, H, W)`` for one frame) with values in
            ``value_range``; torch uint8 ``(F, 3, H, W)``; numpy uint8 ``(F, H, W, 3)``; or numpy
            float ``(F, H, W, 3)`` in ``value_range``. Values outside the range are clipped.
        value_range: (low, high) of float inputs: ``(-1, 1)`` for model outputs (default),
            ``(0, 1)`` for decoded images in [0, 1].
    """
    if isinstance(frames, torch.Tensor):
        tensor = frames.detach().cpu()
        if tensor.ndim == 3:
            tensor = tensor.unsqueeze(0)
        if tensor.ndim != 4 or tensor.shape[1] != 3:
            raise ValueError(f"expected a torch tensor (F, 3, H, W), got shape {tuple(tensor.shape)}")
        if tensor.dtype != torch.uint8:
            tensor = tensor.float()  # also handles bf16/fp16, which numpy lacks
        frames = tensor.permute(0, 2, 3, 1).numpy()
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected numpy frames (F, H, W, 3), got shape {frames.shape}")
    if frames.dtype == np.uint8:
        return np.ascontiguousarray(frames)
    low, high = value_range
    scaled = (frames.astype(np.float32) - low) / (high - low) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _mp4_ready(frames: np.ndarray) -> np.ndarray:
    """Upscale tiny frames (nearest, integer factor) to >= 64 px and pad odd sizes to even for yuv420p."""
    _, h, w, _ = frames.shape
    factor = -(-MIN_MP4_SIDE // min(h, w)) if min(h, w) < MIN_MP4_SIDE else 1
    if factor > 1:
        frames = frames.repeat(factor, axis=1).repeat(factor, axis=2)
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(frames)


def _write_mp4(frames: np.ndarray, path: Path, fps: float) -> None:
    import imageio_ffmpeg  # only mp4 writing needs the bundled ffmpeg

    frames = _mp4_ready(frames)
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (frames.shape[2], frames.shape[1]),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        quality=8,
        macro_block_size=1,
        ffmpeg_log_level="error",
    )
    writer.send(None)  # start ffmpeg
    try:
        for frame in frames:
            writer.send(frame)
    finally:
        writer.close()


def _write_gif(frames: np.ndarray, path: Path, fps: float) -> None:
    images = [Image.fromarray(f) for f in frames]
    # GIF stores delays in 1/100 s; Pillow merges identical consecutive frames into one longer frame.
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=round(1000 / fps),
        loop=0,
        disposal=1,
    )


def write_video(
    frames: Frames, path: str | Path, fps: float = 8, value_range: tuple[float, float] = (-1.0, 1.0)
) -> Path:
    """Write frames as a video, format chosen by extension, atomically.

    ``.mp4``: H.264 (libx264, yuv420p, crf ~10). Frames smaller than 64 px on a side are upscaled by an
    integer factor (nearest) so common players accept them, and an odd height/width is padded by one
    edge pixel (yuv420p needs even sizes). ``.gif``: Pillow, loops forever.

    Args:
        frames: see :func:`to_uint8_frames`.
        path: output file ending in .mp4 or .gif.
        fps: frames per second (the authors' videos are 8 fps).
        value_range: range of float inputs.

    Returns:
        The written path.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in VIDEO_WRITE_EXTENSIONS:
        raise DreamVideoError(f"{path}: cannot write '{ext or 'no extension'}' (use .mp4 or .gif)")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    arr = to_uint8_frames(frames, value_range)
    if len(arr) == 0:
        raise ValueError(f"{path}: no frames to write")
    with atomic_path(path, keep_suffix=True) as tmp:
        (_write_mp4 if ext == ".mp4" else _write_gif)(arr, tmp, fps)
    return path


def write_frames_png(
    frames: Frames, folder: str | Path, value_range: tuple[float, float] = (-1.0, 1.0)
) -> list[Path]:
    """Write each frame as ``000.png``, ``001.png``, ... in ``folder`` (created if needed); each atomically.

    Args:
        frames: see :func:`to_uint8_frames`.
        folder: output folder.
        value_range: range of float inputs.
    """
    folder = Path(folder)
    arr = to_uint8_frames(frames, value_range)
    digits = max(3, len(str(len(arr) - 1)))
    paths = []
    for i, frame in enumerate(arr):
        path = folder / f"{i:0{digits}d}.png"
        with atomic_path(path, keep_suffix=True) as tmp:
            Image.fromarray(frame).save(tmp, format="PNG")
        paths.append(path)
    return paths


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    if not text:
        return 0, 0
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


def contact_sheet(
    rows: Sequence[tuple[str, Frames]],
    path: str | Path,
    scale: int = 2,
    headers: Sequence[str] | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    label_width: int = 28,
) -> None:
    """Save one PNG grid: a row per case with its label at the left, a column per frame.

    Frames are enlarged ``scale`` times (nearest). Cells are as large as the largest frame; rows with
    fewer frames leave blank cells. Labels are wrapped at ``label_width`` characters.

    Args:
        rows: ``(label, frames)`` pairs; frames as in :func:`to_uint8_frames`.
        path: output .png file (written atomically).
        scale: integer enlargement of every frame.
        headers: optional column headers drawn above the columns (e.g. ``["t=0", "t=1", ...]``).
        value_range: range of float inputs.
        label_width: wrap width of labels, in characters.
    """
    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    grids = [to_uint8_frames(frames, value_range) for _, frames in rows]
    labels = [textwrap.fill(label, label_width) for label, _ in rows]
    headers = list(headers or [])
    cell_h = max(g.shape[1] for g in grids) * scale
    cell_w = max(g.shape[2] for g in grids) * scale
    columns = max(max(len(g) for g in grids), len(headers))

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = 6
    label_w = max(_text_size(measure, t, font)[0] for t in labels) + 2 * pad
    header_h = max(_text_size(measure, t, font)[1] for t in headers) + 2 * pad if headers else 0
    row_hs = [max(cell_h, _text_size(measure, t, font)[1] + 2 * pad) for t in labels]

    sheet = Image.new("RGB", (label_w + columns * cell_w, header_h + sum(row_hs)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for col, text in enumerate(headers):
        draw.text((label_w + col * cell_w + pad, pad), text, fill=(0, 0, 0), font=font)
    y = header_h
    for label, grid, row_h in zip(labels, grids, row_hs, strict=True):
        draw.multiline_text((pad, y + pad), label, fill=(0, 0, 0), font=font)
        for col, frame in enumerate(grid):
            image = Image.fromarray(frame)
            if scale > 1:
                image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
            sheet.paste(image, (label_w + col * cell_w, y))
        y += row_h
    path = Path(path)
    with atomic_path(path, keep_suffix=True) as tmp:
        sheet.save(tmp, format="PNG")
