"""Data pipeline: image modes, EXIF, sizes, masks, videos, captions and clip sampling."""

import json
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from dreamvideo import data
from dreamvideo.data import (
    DataError,
    MotionData,
    SubjectData,
    frame_stride_for_fps,
    load_image,
    load_mask,
    load_motion_videos,
    load_subject_images,
    load_video,
    sample_clip,
)
from dreamvideo.video_io import write_video


def _rgb(w, h, color):
    return Image.new("RGB", (w, h), color)


def _split_lr(w, h, left=(255, 0, 0), right=(0, 0, 255)):
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = left
    arr[:, w // 2 :] = right
    return Image.fromarray(arr)


def _video(num_frames, size=64):
    """Frames whose brightness encodes their index: frame i is uniform grey 10 + 20 * i."""
    return np.stack([np.full((size, size, 3), 10 + 20 * i, np.uint8) for i in range(num_frames)])


# ----------------------------------------------------------------------------- images


def test_rgb_image_range_shape_and_values(tmp_path):
    _rgb(40, 40, (255, 0, 0)).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png", 32)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x[:, 5, 5], torch.tensor([1.0, -1.0, -1.0]))


def test_grayscale_and_palette(tmp_path):
    Image.new("L", (32, 32), 255).save(tmp_path / "g.png")
    Image.new("RGB", (32, 32), (0, 255, 0)).convert("P").save(tmp_path / "p.png")
    g, p = load_image(tmp_path / "g.png", 16), load_image(tmp_path / "p.png", 16)
    assert g.shape == p.shape == (3, 16, 16)
    assert torch.allclose(g, torch.ones_like(g))
    assert torch.allclose(p[:, 8, 8], torch.tensor([-1.0, 1.0, -1.0]))


def test_rgba_composited_on_white(tmp_path):
    arr = np.zeros((32, 32, 4), np.uint8)
    arr[:, :16] = (0, 0, 0, 255)  # opaque black left, transparent right
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png", 32)
    assert torch.allclose(x[:, 10, 2], torch.tensor([-1.0, -1.0, -1.0]))
    assert torch.allclose(x[:, 10, 29], torch.tensor([1.0, 1.0, 1.0]))  # white, not black


def test_16bit_png_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((32, 32), 32896, np.uint16)).save(tmp_path / "d.png")  # 32896 = 128 * 257
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    x = load_image(tmp_path / "d.png", 16)
    assert torch.allclose(x, torch.full_like(x, 128 / 127.5 - 1), atol=1e-5)


def test_cmyk_jpeg(tmp_path):
    _rgb(32, 32, (255, 255, 255)).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    x = load_image(tmp_path / "c.jpg", 16)
    assert x.shape == (3, 16, 16) and x.min() > 0.9


def test_exif_rotation_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 deg clockwise: the left (red) half ends up on top
    _split_lr(80, 40).save(tmp_path / "r.jpg", exif=exif, quality=95)
    x = load_image(tmp_path / "r.jpg", 32)
    assert x[0, 2, 16] > 0.8 and x[2, 2, 16] < -0.8  # top row red
    assert x[2, 29, 16] > 0.8 and x[0, 29, 16] < -0.8  # bottom row blue


def test_centre_crop_keeps_middle(tmp_path):
    arr = np.zeros((40, 120, 3), np.uint8)
    arr[:, 40:80] = 255  # only the central square is white
    Image.fromarray(arr).save(tmp_path / "w.png")
    assert load_image(tmp_path / "w.png", 20).min() > 0.95


def test_large_image_is_decoded_reduced(tmp_path, monkeypatch):
    _split_lr(4000, 3000).save(tmp_path / "big.jpg", quality=90)
    decoded = []
    real = data.ImageOps.exif_transpose
    monkeypatch.setattr(
        data.ImageOps, "exif_transpose", lambda im, **kw: decoded.append(im.size) or real(im, **kw)
    )
    start = time.perf_counter()
    x = load_image(tmp_path / "big.jpg", 64)
    assert time.perf_counter() - start < 2.0
    assert decoded == [(500, 375)]  # JPEG draft decoded at 1/8 scale, never the full 12 Mpx
    assert x.shape == (3, 64, 64)
    assert x[0, 32, 5] > 0.9 and x[2, 32, 58] > 0.9  # red left, blue right after the centre crop


def test_tiny_image_refused(tmp_path):
    _rgb(10, 40, (0, 0, 0)).save(tmp_path / "tiny.png")
    with pytest.raises(DataError, match="tiny.png.*too small"):
        load_image(tmp_path / "tiny.png", 32)


def test_small_image_upscaled_with_warning(tmp_path):
    _rgb(20, 20, (0, 0, 255)).save(tmp_path / "small.png")
    with pytest.warns(UserWarning, match="small.png.*upscaling"):
        x = load_image(tmp_path / "small.png", 64)
    assert x.shape == (3, 64, 64)


def test_corrupt_and_truncated_files(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="bad.png"):
        load_image(tmp_path / "bad.png", 32)
    _split_lr(200, 200).save(tmp_path / "cut.jpg")
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg", 32)
    with pytest.raises(DataError, match="nope.png.*not found"):
        load_image(tmp_path / "nope.png", 32)


def test_mask_modes_and_binarisation(tmp_path):
    arr = np.zeros((32, 32), np.uint8)
    arr[:, :16] = 200
    Image.fromarray(arr).save(tmp_path / "m.png")
    Image.fromarray(arr).convert("RGB").save(tmp_path / "m_rgb.png")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, :16, 3] = 255  # alpha carries the mask
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m_alpha.png")
    for name in ("m.png", "m_rgb.png", "m_alpha.png"):
        m = load_mask(tmp_path / name, 16)
        assert m.shape == (1, 16, 16)
        assert set(m.unique().tolist()) == {0.0, 1.0}
        assert m[0, :, :8].min() == 1 and m[0, :, 8:].max() == 0, name


# ----------------------------------------------------------------------------- subject folders


def _subject(tmp_path, names=("a", "b"), with_masks=True):
    (tmp_path / "images").mkdir()
    for n in names:
        _split_lr(60, 40).save(tmp_path / "images" / f"{n}.jpg")
    if with_masks:
        (tmp_path / "masks").mkdir()
        for n in names:
            arr = np.zeros((80, 120), np.uint8)  # same aspect, twice the resolution
            arr[:, :60] = 255  # subject = left half of the original frame
            Image.fromarray(arr).save(tmp_path / "masks" / f"{n}.png")
    return tmp_path


def test_subject_layout_with_masks_same_crop(tmp_path):
    data = load_subject_images(_subject(tmp_path), 20)
    assert isinstance(data, SubjectData) and len(data) == 2
    assert [p.name for p in data.paths] == ["a.jpg", "b.jpg"]
    assert data.images.shape == (2, 3, 20, 20) and data.masks.shape == (2, 1, 20, 20)
    # crop x=10..50 of the 60 px image: the subject (x < 30) is exactly the left half of the crop
    assert data.masks[:, 0, :, :10].min() == 1 and data.masks[:, 0, :, 10:].max() == 0


def test_plain_folder_ignores_hidden_and_other_files(tmp_path):
    for n in ("b", "a", "c10", "c2"):
        _rgb(32, 32, (1, 2, 3)).save(tmp_path / f"{n}.png")
    _rgb(32, 32, (1, 2, 3)).save(tmp_path / ".hidden.png")
    (tmp_path / "notes.txt").write_text("hi")
    data = load_subject_images(tmp_path, 16)
    assert [p.name for p in data.paths] == ["a.png", "b.png", "c2.png", "c10.png"]
    assert data.masks is None


def test_empty_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*no images"):
        load_subject_images(tmp_path / "empty", 16)
    with pytest.raises(DataError, match="missing.*not found"):
        load_subject_images(tmp_path / "missing", 16)


def test_unreadable_image_in_folder_is_an_error(tmp_path):
    _rgb(32, 32, (1, 2, 3)).save(tmp_path / "ok.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(DataError, match="broken.jpg"):
        load_subject_images(tmp_path, 16)


def test_image_without_mask(tmp_path):
    _subject(tmp_path)
    (tmp_path / "masks" / "b.png").unlink()
    with pytest.raises(DataError, match=r"b\.jpg.*no mask.*masks"):
        load_subject_images(tmp_path, 16)


def test_mask_without_image(tmp_path):
    _subject(tmp_path)
    _rgb(120, 80, (0, 0, 0)).save(tmp_path / "masks" / "zzz.png")
    with pytest.raises(DataError, match=r"zzz\.png.*no matching image.*images"):
        load_subject_images(tmp_path, 16)


def test_mask_aspect_mismatch(tmp_path):
    _subject(tmp_path)
    Image.new("L", (60, 60)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(DataError, match=r"masks/a\.png.*images/a\.jpg.*aspect"):
        load_subject_images(tmp_path, 16)


def test_explicit_mask_folder(tmp_path):
    _subject(tmp_path)
    data = load_subject_images(tmp_path / "images", 16, masks=tmp_path / "masks")
    assert data.masks is not None and data.masks.shape == (2, 1, 16, 16)


# ----------------------------------------------------------------------------- videos


def test_mp4_round_trip(tmp_path):
    write_video(_video(8), tmp_path / "v.mp4", fps=8)
    frames, fps = load_video(tmp_path / "v.mp4")
    assert frames.shape == (8, 64, 64, 3) and frames.dtype == np.uint8
    assert fps == pytest.approx(8.0)
    means = frames.reshape(8, -1).mean(1)
    assert np.abs(means - (10 + 20 * np.arange(8))).max() < 4
    frames, _ = load_video(tmp_path / "v.mp4", max_frames=3)
    assert frames.shape[0] == 3


def test_gif_round_trip(tmp_path):
    write_video(_video(5, 32), tmp_path / "v.gif", fps=10)
    frames, fps = load_video(tmp_path / "v.gif")
    assert frames.shape == (5, 32, 32, 3)
    assert fps == pytest.approx(10.0)
    assert np.abs(frames.reshape(5, -1).mean(1) - (10 + 20 * np.arange(5))).max() < 4


def test_folder_of_frames(tmp_path):
    for i, frame in enumerate(_video(11, 24)):
        Image.fromarray(frame).save(tmp_path / f"f{i}.png")  # f10 must come after f9
    frames, fps = load_video(tmp_path)
    assert frames.shape == (11, 24, 24, 3) and fps is None
    assert frames[10, 0, 0, 0] == 210 and frames[9, 0, 0, 0] == 190


def test_folder_frames_of_different_sizes(tmp_path):
    _rgb(32, 32, (0, 0, 0)).save(tmp_path / "0.png")
    _rgb(40, 32, (0, 0, 0)).save(tmp_path / "1.png")
    with pytest.raises(DataError, match="frame 1"):
        load_video(tmp_path)


def test_corrupt_empty_and_unknown_videos(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"garbage" * 20)
    with pytest.raises(DataError, match="bad.mp4.*not a readable video"):
        load_video(tmp_path / "bad.mp4")
    (tmp_path / "bad.gif").write_bytes(b"GIF89a")
    with pytest.raises(DataError, match="bad.gif"):
        load_video(tmp_path / "bad.gif")
    (tmp_path / "frames").mkdir()
    with pytest.raises(DataError, match="frames.*no frame images"):
        load_video(tmp_path / "frames")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="x.txt.*not a video"):
        load_video(tmp_path / "x.txt")


def test_motion_folder_with_captions_json(tmp_path):
    write_video(_video(6, 48), tmp_path / "car_turning.mp4")
    write_video(_video(4, 32), tmp_path / "b.gif")
    (tmp_path / "frames").mkdir()
    for i, frame in enumerate(_video(3, 40)):
        Image.fromarray(frame).save(tmp_path / "frames" / f"{i:03d}.png")
    (tmp_path / "captions.json").write_text(json.dumps({"b.gif": "a ball is bouncing"}))
    data = load_motion_videos(tmp_path, 16)
    assert isinstance(data, MotionData) and len(data) == 3
    assert [p.name for p in data.paths] == ["b.gif", "car_turning.mp4", "frames"]
    assert data.captions == ["a ball is bouncing", "car turning", "frames"]
    assert [tuple(v.shape) for v in data.videos] == [(4, 3, 16, 16), (6, 3, 16, 16), (3, 3, 16, 16)]
    assert all(v.min() >= -1 and v.max() <= 1 for v in data.videos)
    assert data.fps[1] == pytest.approx(8.0) and data.fps[2] is None


def test_motion_caption_string_and_single_file(tmp_path):
    write_video(_video(5, 40), tmp_path / "v.mp4")
    data = load_motion_videos(tmp_path / "v.mp4", 16, captions="a dog is running", max_frames=3)
    assert data.captions == ["a dog is running"] and data.videos[0].shape == (3, 3, 16, 16)


def test_motion_errors_name_the_file(tmp_path):
    write_video(_video(5, 40), tmp_path / "v.mp4")
    (tmp_path / "captions.json").write_text(json.dumps({"typo.mp4": "x"}))
    with pytest.raises(DataError, match="captions.json.*typo.mp4"):
        load_motion_videos(tmp_path, 16)
    (tmp_path / "captions.json").write_text("{not json")
    with pytest.raises(DataError, match="captions.json.*not valid JSON"):
        load_motion_videos(tmp_path, 16)
    (tmp_path / "captions.json").unlink()
    with pytest.raises(DataError, match="v.mp4.*5 frames"):
        load_motion_videos(tmp_path, 16, min_frames=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*no videos"):
        load_motion_videos(tmp_path / "empty", 16)


# ----------------------------------------------------------------------------- clips


def test_sample_clip_window_and_stride():
    video = torch.arange(20).float().view(20, 1, 1, 1).expand(20, 3, 2, 2)
    gen = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(30):
        clip = sample_clip(video, 4, 3, gen)
        idx = clip[:, 0, 0, 0].long()
        assert clip.shape == (4, 3, 2, 2)
        assert torch.equal(idx - idx[0], torch.tensor([0, 3, 6, 9])) and idx[-1] <= 19
        starts.add(int(idx[0]))
    assert len(starts) > 3  # the window moves
    a = sample_clip(video, 4, 3, torch.Generator().manual_seed(5))
    assert torch.equal(a, sample_clip(video, 4, 3, torch.Generator().manual_seed(5)))


def test_short_video_loops_ping_pong_or_errors():
    video = torch.arange(4).float().view(4, 1, 1, 1).expand(4, 3, 1, 1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        idx = sample_clip(video, 10, 1, gen)[:, 0, 0, 0].long()
        assert idx.max() <= 3 and torch.all((idx[1:] - idx[:-1]).abs() == 1)  # no jump cut
    one = sample_clip(video[:1], 5, 2, gen)
    assert one.shape == (5, 3, 1, 1)
    with pytest.raises(DataError, match="clip.mp4.*4 frames"):
        sample_clip(video, 10, 1, gen, short="error", name="clip.mp4")


def test_frame_stride_for_fps():
    assert frame_stride_for_fps(24, 8) == 3
    assert frame_stride_for_fps(30) == 4
    assert frame_stride_for_fps(5, 8) == 1
    assert frame_stride_for_fps(None) == 1


def test_no_warning_for_large_enough_images(tmp_path):
    _rgb(64, 64, (0, 0, 0)).save(tmp_path / "ok.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(tmp_path / "ok.png", 64)


def test_one_frame_video_is_refused_as_a_motion(tmp_path):
    from dreamvideo.data import DataError, load_motion_videos
    from dreamvideo.video_io import write_video

    write_video(np.zeros((1, 16, 16, 3), np.uint8), tmp_path / "one.gif", fps=8)
    with pytest.raises(DataError, match="one.gif: has 1 frame, not a video"):
        load_motion_videos(tmp_path / "one.gif", 16)


def test_short_videos_are_padded_with_black_frames_as_the_authors_do():
    from dreamvideo.data import sample_clip

    idx = sample_clip(torch.arange(5), 8, 2, torch.Generator().manual_seed(0), short="pad")
    assert idx.tolist() == [0, 2, 4, -1, -1, -1, -1, -1]  # from the start, then black (-1)
    with pytest.raises(ValueError, match="index"):
        sample_clip(torch.zeros(5, 3, 4, 4), 8, 2, torch.Generator(), short="pad")


def test_motion_clips_default_to_32_frames_at_8_fps_of_the_source():
    from dreamvideo.methods import MotionSettings

    s = MotionSettings()
    assert s.num_frames == 32 and s.stage.steps == 3000
    assert (s.stride(24.0), s.stride(30.0), s.stride(8.0), s.stride(None)) == (3, 4, 1, 1)
    assert MotionSettings(frame_stride=2).stride(30.0) == 2
