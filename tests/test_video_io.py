"""Video output: conversions, mp4/gif round trips, PNG frames, contact sheets, atomic writes."""

import numpy as np
import pytest
import torch
from PIL import Image

from dreamvideo import video_io
from dreamvideo.data import load_video
from dreamvideo.fileio import DreamVideoError
from dreamvideo.video_io import contact_sheet, to_uint8_frames, write_frames_png, write_video


def _ramp(num_frames=6, h=64, w=64):
    """torch (F, 3, H, W) in [-1, 1]: a horizontal ramp whose brightness rises with the frame index."""
    x = torch.linspace(-0.8, 0.2, w).view(1, 1, 1, w)
    t = torch.linspace(0, 0.6, num_frames).view(num_frames, 1, 1, 1)
    return (x + t).expand(num_frames, 3, h, w).clone()


def test_to_uint8_frames_ranges_and_layouts():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 4).expand(2, 3, 1, 4)
    out = to_uint8_frames(x)
    assert out.shape == (2, 1, 4, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 128, 255, 255]  # clipped above the range
    assert to_uint8_frames(x.clamp(0, 1), value_range=(0, 1))[0, 0, :, 0].tolist() == [0, 0, 255, 255]
    arr = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    assert np.array_equal(to_uint8_frames(arr), arr)
    assert np.array_equal(to_uint8_frames(torch.from_numpy(arr).permute(0, 3, 1, 2)), arr)
    assert to_uint8_frames(x[0].bfloat16()).shape == (1, 1, 4, 3)
    with pytest.raises(ValueError, match="shape"):
        to_uint8_frames(torch.zeros(2, 4, 8, 8))


@pytest.mark.parametrize("ext", [".mp4", ".gif"])
def test_round_trip(tmp_path, ext):
    frames = _ramp()
    path = write_video(frames, tmp_path / f"out{ext}", fps=8)
    back, fps = load_video(path)
    assert back.shape == (6, 64, 64, 3)
    assert fps == pytest.approx(8.0, rel=0.05)
    expected = to_uint8_frames(frames).astype(np.float32)
    assert np.abs(back.astype(np.float32) - expected).mean() < 4.0
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_tiny_and_odd_mp4_frames(tmp_path):
    back, _ = load_video(write_video(_ramp(3, 16, 16), tmp_path / "tiny.mp4"))
    assert back.shape == (3, 64, 64, 3)  # upscaled x4 (nearest)
    back, _ = load_video(write_video(_ramp(3, 65, 81), tmp_path / "odd.mp4"))
    assert back.shape == (3, 66, 82, 3)  # padded to even sizes for yuv420p


def test_unsupported_extension(tmp_path):
    with pytest.raises(DreamVideoError, match="out.avi"):
        write_video(_ramp(), tmp_path / "out.avi")
    assert not any(tmp_path.iterdir())


def test_write_frames_png(tmp_path):
    frames = _ramp(3, 8, 12)
    paths = write_frames_png(frames, tmp_path / "frames")
    assert [p.name for p in paths] == ["000.png", "001.png", "002.png"]
    assert np.array_equal(np.asarray(Image.open(paths[2])), to_uint8_frames(frames)[2])


def test_contact_sheet_dimensions_and_pixels(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    contact_sheet([("dog", a), ("cat", b)], tmp_path / "sheet.png", scale=2)
    sheet = np.asarray(Image.open(tmp_path / "sheet.png"))
    h, w, _ = sheet.shape
    assert h == 2 * 32  # two rows of 16 px frames enlarged 2x, short labels fit in a row
    label_w = w - 4 * 32
    assert 10 < label_w < 60
    assert sheet[:, :label_w].min() < 100  # label text was drawn
    big = lambda f: f.repeat(2, axis=0).repeat(2, axis=1)  # noqa: E731
    assert np.array_equal(sheet[:32, label_w : label_w + 32], big(a[0]))
    assert np.array_equal(sheet[32:, label_w + 64 : label_w + 96], big(b[2]))
    assert (sheet[32:, label_w + 96 :] == 255).all()  # row 2 has 3 frames: the 4th cell stays white

    contact_sheet(
        [("dog", a), ("a much longer label that wraps over lines", b)],
        tmp_path / "s2.png",
        scale=1,
        headers=["t0", "t1", "t2", "t3"],
    )
    h2, w2 = Image.open(tmp_path / "s2.png").size[::-1]
    assert h2 > 2 * 16 + 10  # header band and a taller wrapped label row
    assert w2 > 4 * 16


def _crashing_writer(frames, path, fps):
    path.write_bytes(b"partial")
    raise RuntimeError("encoder crashed")


def test_failed_video_write_is_atomic(tmp_path, monkeypatch):
    target = write_video(_ramp(), tmp_path / "keep.mp4")
    before = target.read_bytes()
    monkeypatch.setattr(video_io, "_write_mp4", _crashing_writer)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        write_video(_ramp(), target)
    assert target.read_bytes() == before  # the old video is untouched
    with pytest.raises(RuntimeError):
        write_video(_ramp(), tmp_path / "new.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]  # no partial or temp file


def test_failed_contact_sheet_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "sheet.png"
    target.write_bytes(b"old sheet")

    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        contact_sheet([("row", _ramp(2, 8, 8))], target)
    assert target.read_bytes() == b"old sheet"
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.png"]
