"""Evaluation metrics: each checked against a hand computation with a tiny random CLIP / DINO ViT."""

from __future__ import annotations

import json
import math
import shutil
import sys
import types

import numpy as np
import pytest
import torch
from conftest import tiny_layers, tiny_vision
from PIL import Image
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTokenizer,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

from dreamvideo import metrics
from dreamvideo.cli import main
from dreamvideo.fileio import DreamVideoError
from dreamvideo.metrics import ClipScorer, DinoScorer, ManifestError, MetricsError, replace_placeholder
from dreamvideo.video_io import write_video

CHARS = "abcdefghijklmnopqrstuvwxyz<>"


def _tokenizer(folder) -> CLIPTokenizer:
    """A real BPE CLIPTokenizer with one token per character (no merges)."""
    vocab = list(CHARS) + [c + "</w>" for c in CHARS] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=32, pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A random CLIPModel, its tokenizer and image processor saved together in one folder."""
    root = tmp_path_factory.mktemp("clip")
    tok = _tokenizer(root)
    torch.manual_seed(0)
    n = len(tok)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=n,
            **tiny_layers(32),
            max_position_embeddings=32,
            bos_token_id=n - 2,
            eos_token_id=n - 1,
            pad_token_id=n - 1,
        ),
        vision_config=tiny_vision(32),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(root)
    tok.save_pretrained(root)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(
        root
    )
    return root


@pytest.fixture(scope="module")
def clip(clip_dir) -> ClipScorer:
    return ClipScorer.from_pretrained(clip_dir, device="cpu", batch_size=3)


@pytest.fixture(scope="module")
def dino() -> DinoScorer:
    torch.manual_seed(1)
    model = ViTModel(ViTConfig(**tiny_vision(24)))
    return DinoScorer(model, ViTImageProcessor(size={"height": 16, "width": 16}), device="cpu", batch_size=2)


def _frames(n=5, size=20, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _cos(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _feats(out) -> np.ndarray:
    out = out if isinstance(out, torch.Tensor) else out.pooler_output
    return out.detach().double().numpy()


def _hand_image(scorer: ClipScorer, frames) -> np.ndarray:
    """CLIP image features straight from the model (unnormalised)."""
    pixels = scorer.image_processor(images=[Image.fromarray(f) for f in frames], return_tensors="pt")[
        "pixel_values"
    ]
    with torch.no_grad():
        return _feats(scorer.model.get_image_features(pixel_values=pixels))


def _hand_text(scorer: ClipScorer, prompt: str) -> np.ndarray:
    ids = scorer.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        return _feats(scorer.model.get_text_features(input_ids=ids["input_ids"]))[0]


# ----------------------------------------------------------------------------- metrics vs hand computation


def test_clip_t_matches_hand_computation(clip):
    frames = _frames()
    mean = _unit(_hand_image(clip, frames)).mean(0)
    expected = _cos(mean, _hand_text(clip, "a red dog"))
    assert clip.clip_t(frames, "a red dog") == pytest.approx(expected, abs=1e-5)
    # A single (H,W,3) frame and a PIL list are accepted too.
    assert clip.clip_t(frames[0], "a red dog") == pytest.approx(
        _cos(_hand_image(clip, frames[:1])[0], _hand_text(clip, "a red dog")), abs=1e-5
    )
    assert clip.clip_t([Image.fromarray(f) for f in frames], "a red dog") == pytest.approx(expected, abs=1e-5)


def test_clip_t_replaces_placeholder(clip):
    frames = _frames(3)
    replaced = clip.clip_t(frames, "a <sks> runs", placeholder="<sks>", class_word="dog")
    assert replaced == pytest.approx(clip.clip_t(frames, "a dog runs"), abs=1e-6)
    assert replaced != pytest.approx(clip.clip_t(frames, "a <sks> runs"), abs=1e-4)


def test_replace_placeholder():
    assert replace_placeholder("a <sks> runs", "<sks>", "dog") == "a dog runs"
    assert replace_placeholder("a <sks> dog runs", "<sks>", "dog") == "a dog runs"
    assert replace_placeholder("a <sks> doggy", "<sks>", "dog") == "a dog doggy"
    assert replace_placeholder("a <sks> star on grass", "<sks>", None) == "a star on grass"
    assert replace_placeholder("a <sks> star", None, "dog") == "a <sks> star"
    assert replace_placeholder("S* and S*", "S*", r"a\1") == r"a\1 and a\1"


def test_clip_i_and_dino_i_match_hand_computation(clip, dino):
    frames, refs = _frames(4, seed=0), _frames(3, size=24, seed=1)
    mean = _unit(_hand_image(clip, frames)).mean(0)
    expected = np.mean([_cos(mean, r) for r in _hand_image(clip, refs)])
    assert clip.clip_i(frames, refs) == pytest.approx(expected, abs=1e-5)

    def cls(images):
        pixels = dino.image_processor(images=[Image.fromarray(f) for f in images], return_tensors="pt")
        with torch.no_grad():
            return dino.model(pixel_values=pixels["pixel_values"]).last_hidden_state[:, 0].double().numpy()

    mean = _unit(cls(frames)).mean(0)
    expected = np.mean([_cos(mean, r) for r in cls(refs)])
    assert dino.dino_i(frames, list(refs)) == pytest.approx(expected, abs=1e-5)
    assert dino.dino_i(frames, frames[:1]) != pytest.approx(dino.dino_i(frames, refs), abs=1e-4)


def test_temporal_consistency(clip):
    frames = _frames(4)
    e = _hand_image(clip, frames)
    expected = np.mean([_cos(e[i], e[i + 1]) for i in range(3)])
    assert clip.temporal_consistency(frames) == pytest.approx(expected, abs=1e-5)
    assert clip.temporal_consistency(np.repeat(frames[:1], 5, axis=0)) == pytest.approx(1.0, abs=1e-6)
    assert clip.temporal_consistency(frames[:1]) == 1.0
    assert expected < 0.9999  # the identical-frame check above is not trivially 1


def test_bad_frames_are_refused(clip):
    with pytest.raises(MetricsError, match="uint8"):
        clip.image_embeds(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(MetricsError, match="no frames"):
        clip.image_embeds([])


# ----------------------------------------------------------------------------- manifest, folder evaluation, reports


def _write_case(root, name, frames, fmt="gif"):
    if fmt == "frames":
        (root / name).mkdir()
        for i, f in enumerate(frames):
            Image.fromarray(f).save(root / name / f"{i}.png")
    else:
        write_video(frames, root / name, fps=8)


@pytest.fixture()
def folder(tmp_path):
    """Videos for 2 methods x 2 cases, subject reference images and a motion reference video."""
    videos = tmp_path / "videos"
    videos.mkdir()
    (tmp_path / "refs").mkdir()
    for i in range(2):
        Image.fromarray(_frames(1, 24, seed=10 + i)[0]).save(tmp_path / "refs" / f"{i}.png")
    write_video(_frames(4, 16, seed=20), tmp_path / "refs" / "motion.gif", fps=8)
    entries = []
    for m, method in enumerate(["dreamvideo", "lora"]):
        for c, case in enumerate(["dog", "cat"]):
            name = f"{method}_{case}" + (".gif" if c == 0 else "")
            _write_case(videos, name, _frames(4, 16, seed=100 + 10 * m + c), "gif" if c == 0 else "frames")
            entries.append(
                {
                    "video": name,
                    "prompt": f"a <sks> {case} moves left",
                    "class_word": case,
                    "placeholder": "<sks>",
                    "subject_refs": ["refs/0.png", "refs/1.png"],
                    "motion_refs": ["refs/motion.gif"],
                    "method": method,
                    "case": case,
                    "seed": 0,
                }
            )
    (tmp_path / "manifest.json").write_text(json.dumps(entries))
    return tmp_path


def test_evaluate_folder_rows_summary_and_reports(folder, clip, dino):
    from dreamvideo.data import load_video

    out = folder / "out"
    rows = metrics.evaluate_folder(folder / "videos", folder / "manifest.json", clip, dino, out_dir=out)
    assert len(rows) == 4
    refs = [np.asarray(Image.open(folder / "refs" / f"{i}.png").convert("RGB")) for i in range(2)]
    for row in rows:
        frames, _ = load_video(folder / "videos" / row["video"])
        assert row["eval_prompt"] == f"a {row['case']} moves left"
        assert row["clip_t"] == pytest.approx(clip.clip_t(frames, row["eval_prompt"]), abs=1e-6)
        assert row["clip_i"] == pytest.approx(clip.clip_i(frames, refs), abs=1e-6)
        assert row["dino_i"] == pytest.approx(dino.dino_i(frames, refs), abs=1e-6)
        assert row["t_cons"] == pytest.approx(clip.temporal_consistency(frames), abs=1e-6)
        assert row["num_frames"] == 4 and row["seed"] == 0

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    summary = saved["summary"]
    assert summary["metrics"] == ["clip_t", "clip_i", "dino_i", "t_cons"]
    assert summary["group_by"] == ["method", "case"] and len(summary["groups"]) == 4
    lora = next(g for g in summary["by_method"] if g["method"] == "lora")
    values = [r["clip_i"] for r in rows if r["method"] == "lora"]
    assert lora["n"] == 2
    assert lora["metrics"]["clip_i"]["mean"] == pytest.approx(np.mean(values))
    assert lora["metrics"]["clip_i"]["std"] == pytest.approx(np.std(values))
    assert summary["overall"]["metrics"]["t_cons"]["mean"] == pytest.approx(
        np.mean([r["t_cons"] for r in rows])
    )

    md = (out / "metrics.md").read_text()
    assert "| method | n | CLIP-T | CLIP-I | DINO-I | T.Cons |" in md
    m = lora["metrics"]["clip_t"]
    assert f"| lora | 2 | {m['mean']:.4f} ± {m['std']:.4f} |" in md
    assert "lora_cat" in md and "not computed" not in md


def test_evaluate_without_dino_says_so(folder, clip):
    rows = metrics.evaluate_folder(folder / "videos", folder / "manifest.json", clip)
    assert all("dino_i" not in r for r in rows)
    md = (folder / "videos" / "metrics.md").read_text()  # default output folder: the videos folder
    assert "DINO-I not computed" in md and "DINO-I |" not in md


def test_summarize_without_groups():
    rows = [{"video": "a", "clip_t": 0.2, "seed": 1}, {"video": "b", "clip_t": 0.4, "seed": 2, "flag": True}]
    s = metrics.summarize(rows)
    assert s["metrics"] == ["clip_t"] and s["groups"] == [] and "by_method" not in s
    assert s["overall"]["metrics"]["clip_t"] == pytest.approx({"mean": 0.3, "std": 0.1, "n": 2})


class _Untouchable:
    name = "untouchable"

    def __getattr__(self, item):
        raise AssertionError("a model was used before the manifest was validated")


def test_manifest_missing_files_named_before_any_computation(folder):
    entries = json.loads((folder / "manifest.json").read_text())
    entries[1]["video"] = "nope.mp4"
    entries[2]["subject_refs"] = ["refs/0.png", "refs/ghost.png"]
    entries[3]["motion_refs"] = ["refs/gone.gif"]
    (folder / "manifest.json").write_text(json.dumps(entries))
    with pytest.raises(ManifestError) as err:
        metrics.evaluate_folder(folder / "videos", folder / "manifest.json", _Untouchable(), _Untouchable())
    msg = str(err.value)
    assert "3 file(s)" in msg and "nope.mp4" in msg and "ghost.png" in msg and "gone.gif" in msg
    assert not (folder / "videos" / "metrics.json").exists()


@pytest.mark.parametrize(
    "content, match",
    [
        ("{}", "non-empty JSON list"),
        ("[]", "non-empty JSON list"),
        ('["a.gif"]', "entry 0: expected an object"),
        ('[{"video": "a.gif"}]', "'prompt' must be a non-empty string"),
        ('[{"video": "a.gif", "prompt": "p", "class_word": 3}]', "'class_word' must be a string or null"),
        ('[{"video": "a.gif", "prompt": "p", "subject_refs": "x.png"}]', "'subject_refs' must be a list"),
        ("[{", "not valid JSON"),
    ],
)
def test_manifest_malformed(tmp_path, content, match):
    (tmp_path / "m.json").write_text(content)
    with pytest.raises(DreamVideoError, match=match):
        metrics.load_manifest(tmp_path / "m.json")


def test_manifest_subject_folder_expands_to_images(tmp_path):
    (tmp_path / "subj" / "images").mkdir(parents=True)
    for name in ("b.png", "a.jpg", ".hidden.png", "notes.txt"):
        (tmp_path / "subj" / "images" / name).write_bytes(b"")
    (tmp_path / "v.gif").write_bytes(b"")
    (tmp_path / "m.json").write_text(
        json.dumps([{"video": "v.gif", "prompt": "p", "subject_refs": ["subj"]}])
    )
    item = metrics.load_manifest(tmp_path / "m.json")[0]
    assert [p.name for p in item.subject_refs] == ["a.jpg", "b.png"]
    assert item.video == tmp_path / "v.gif" and item.info == {}


# ----------------------------------------------------------------------------- toy oracle


def test_oracle_metrics_on_toy_world(tmp_path, clip):
    from dreamvideo.toy import oracle, world

    subject = world.write_subject_folder("totem", tmp_path / "totem", n=2)
    motion = world.write_motion_folder("spiral", tmp_path / "spiral", n=1)
    spec = world.ClipSpec(world.NOVEL_SUBJECTS["totem"], "blue sky", "spiral")
    frames = world.render_clip(spec).frames
    write_video(frames, tmp_path / "gen.gif", fps=8)
    entry = {
        "video": "gen.gif",
        "prompt": "a <sks> square moves on blue sky",
        "class_word": "square",
        "placeholder": "<sks>",
        "subject_refs": ["totem"],
        "motion_refs": ["spiral/00.gif"],
    }
    (tmp_path / "m.json").write_text(json.dumps([entry]))
    row = metrics.evaluate_folder(tmp_path, tmp_path / "m.json", clip, oracle=True)[0]
    assert row["oracle_background"] == "blue sky" and row["oracle_background_ok"] == 1.0

    from dreamvideo.data import load_video

    video, _ = load_video(tmp_path / "gen.gif")
    images = [np.asarray(Image.open(subject / "images" / f"0{i}.png").convert("RGB")) for i in range(2)]
    masks = [np.asarray(Image.open(subject / "masks" / f"0{i}.png")) > 127 for i in range(2)]
    assert row["oracle_subject_fidelity"] == pytest.approx(oracle.subject_fidelity(video, images, masks))
    ref, _ = load_video(motion / "00.gif")
    assert row["oracle_motion_fidelity"] == pytest.approx(oracle.motion_fidelity(video, [ref]))
    assert row["oracle_temporal_consistency"] == pytest.approx(oracle.temporal_consistency(video))
    assert row["oracle_subject_fidelity"] > 0.5 and row["oracle_motion_fidelity"] > 0.5


# ----------------------------------------------------------------------------- loading and CLI


def test_toy_clip_resolution(tmp_path, monkeypatch, clip_dir):
    fake = types.ModuleType("dreamvideo.toy.model")
    fake.TOY_MODEL_DIR = tmp_path
    monkeypatch.setitem(sys.modules, "dreamvideo.toy.model", fake)
    with pytest.raises(MetricsError, match="toy CLIP is missing"):
        ClipScorer.from_pretrained("toy")
    for sub in ("clip", "tokenizer", "feature_extractor"):
        shutil.copytree(clip_dir, tmp_path / sub)
    scorer = ClipScorer.from_pretrained("toy", device="cpu")
    assert scorer.text_embeds(["a dog", "a cat"]).shape == (2, 16)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(MetricsError, match="no-such-dir.*cannot load a CLIPModel"):
        ClipScorer.from_pretrained(tmp_path / "no-such-dir")
    with pytest.raises(MetricsError, match="cannot load a DINO model"):
        DinoScorer.from_pretrained(tmp_path)


def _evaluate(folder, clip, *flags) -> int:
    """``dreamvideo evaluate`` of ``folder``'s videos and manifest with the CLIP ``clip``."""
    videos, manifest = str(folder / "videos"), str(folder / "manifest.json")
    return main(["evaluate", "--videos", videos, "--manifest", manifest, "--clip", str(clip), *flags])


def test_cli_evaluate(folder, clip_dir, capsys):
    out = folder / "report"
    code = _evaluate(folder, clip_dir, "--out", str(out), "--device", "cpu")
    assert code == 0
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert len(rows) == 4 and all(-1 <= r["clip_t"] <= 1 for r in rows)
    assert "## Per method" in capsys.readouterr().out

    shutil.rmtree(folder / "videos" / "lora_cat")
    code = _evaluate(folder, folder / "missing-clip")
    err = capsys.readouterr().err
    assert code == 2 and "lora_cat" in err and "not found" in err  # the manifest is checked before the model


def test_paired_difference_by_hand():
    d = metrics.paired_difference([0.5, 0.25, 1.0], [0.25, 0.25, 0.5])
    # differences 0.25, 0, 0.5: mean 0.25, sample std 0.25, standard error 0.25 / sqrt(3)
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.25) and d["stderr"] == pytest.approx(0.25 / 3**0.5)
    assert math.isnan(metrics.paired_difference([1.0], [0.0])["stderr"])
    with pytest.raises(ValueError, match="2 values but 1"):
        metrics.paired_difference([1.0, 2.0], [0.0])


def test_paired_difference_by_group_averages_each_group_first():
    # differences 0.25, 0, 0.5, 0.75 in groups x, x, y, y: group means 0.125 and 0.625, std 0.3536, s.e. 0.25
    d = metrics.paired_difference([0.5, 0.25, 1.0, 1.0], [0.25, 0.25, 0.5, 0.25], groups=["x", "x", "y", "y"])
    assert d["n"] == 4 and d["groups"] == 2 and d["mean"] == pytest.approx(0.375)
    assert d["stderr_by_group"] == pytest.approx(0.25)
    assert d["stderr"] == pytest.approx(np.std([0.25, 0, 0.5, 0.75], ddof=1) / 2)
    with pytest.raises(ValueError, match="4 pairs but 3 group labels"):
        metrics.paired_difference([0.5, 0.25, 1.0, 1.0], [0.25, 0.25, 0.5, 0.25], groups=["x", "x", "y"])


@pytest.mark.parametrize(
    "key, value",
    [
        ("video", "../outside.gif"),
        ("subject_refs", ["../../etc/shadow"]),
        ("motion_refs", ["/etc/passwd"]),
    ],
)
def test_manifest_paths_stay_inside_its_folder(tmp_path, key, value):
    inner = tmp_path / "inner"
    inner.mkdir()
    write_video(_frames(2, 16, seed=1), tmp_path / "outside.gif", fps=8)
    write_video(_frames(2, 16, seed=1), inner / "v.gif", fps=8)
    entry = {"video": "v.gif", "prompt": "a dog", key: value}
    (inner / "m.json").write_text(json.dumps([entry]))
    with pytest.raises(ManifestError, match="outside the manifest's folder.*--allow-outside"):
        metrics.load_manifest(inner / "m.json")
    if key == "video":
        assert metrics.load_manifest(inner / "m.json", allow_outside=True)[0].video.name == "outside.gif"


def test_cli_evaluate_refuses_outside_paths_before_reading_them(tmp_path, capsys):
    (tmp_path / "m.json").write_text(json.dumps([{"video": "../../etc/shadow", "prompt": "x"}]))
    code = main(["evaluate", "--manifest", str(tmp_path / "m.json"), "--clip", str(tmp_path / "no-clip")])
    err = capsys.readouterr().err
    assert code == 2 and "outside the manifest's folder" in err
