"""The paper's evaluation metrics (CLIP-T, CLIP-I, DINO-I, T.Cons) and the ``dreamvideo evaluate`` command.

Definitions (method sheet section 7), with ``e`` an L2-normalised embedding and ``cos`` the cosine similarity:

- frame mean ``m``: the mean of the normalised CLIP image embeddings of all frames (not re-normalised; the
  cosines below normalise it).
- CLIP-T: ``cos(m, t)`` with ``t`` the projected CLIP text embedding (``get_text_features``) of the prompt, the
  placeholder token (e.g. ``<sks>``) replaced by the subject's class word.
- CLIP-I: ``mean_r cos(m, e_r)`` over the reference subject images ``r``.
- DINO-I: as CLIP-I with DINO features: the CLS token of the ViT's ``last_hidden_state`` (after the final
  layer norm). DINO v1 checkpoints (``facebook/dino-vits16``) ship no trained pooler, so the pooler output is
  not used; for ``Dinov2Model`` the CLS token is exactly its ``pooler_output``.
- T.Cons: ``mean_i cos(e_i, e_{i+1})`` over consecutive frames with CLIP image embeddings (1.0 for one frame).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dreamvideo.fileio import DreamVideoError, atomic_path, read_json, write_json
from dreamvideo.motion_metrics import add_cli_args, scorer_from_args

Frames = np.ndarray | Sequence[np.ndarray] | Sequence[Image.Image]
TOY_NAMES = ("toy", "dreamvideo-toy")
METRIC_NAMES = ("clip_t", "clip_i", "dino_i", "t_cons")
METRIC_TITLES = {"clip_t": "CLIP-T", "clip_i": "CLIP-I", "dino_i": "DINO-I", "t_cons": "T.Cons"}
_NOT_METRICS = ("seed", "num_frames")  # numeric row fields that are not averaged
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


class MetricsError(DreamVideoError):
    """A metric model could not be loaded or an input could not be scored."""


class ManifestError(MetricsError):
    """The evaluation manifest is malformed or names files that do not exist."""


# ----------------------------------------------------------------------------- helpers


def _default_device(device: str | torch.device | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _to_pil(frames: Frames) -> list[Image.Image]:
    """uint8 (N,H,W,3) / (H,W,3) arrays or PIL images -> list of RGB PIL images."""
    if isinstance(frames, Image.Image):
        return [frames.convert("RGB")]
    if isinstance(frames, np.ndarray):
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise MetricsError(f"expected uint8 frames of shape (N,H,W,3), got {frames.dtype} {frames.shape}")
    out = []
    for f in frames:
        if isinstance(f, Image.Image):
            out.append(f.convert("RGB"))
        else:
            f = np.asarray(f)
            if f.ndim != 3 or f.shape[-1] != 3 or f.dtype != np.uint8:
                raise MetricsError(f"expected uint8 frames of shape (H,W,3), got {f.dtype} {f.shape}")
            out.append(Image.fromarray(f))
    if not out:
        raise MetricsError("no frames to score")
    return out


def _features(output: Any) -> torch.Tensor:
    # transformers >= 5 returns a model output whose pooler_output is the projected feature; 4.x a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1, eps=1e-12)


def frame_mean(frame_embeds: torch.Tensor) -> torch.Tensor:
    """Mean of the L2-normalised frame embeddings ``(F, D) -> (D,)``."""
    return _normalize(frame_embeds).mean(0)


def text_score(frame_embeds: torch.Tensor, text_embed: torch.Tensor) -> float:
    """CLIP-T from embeddings: cosine of the frame mean with the text embedding."""
    return float(_cos(frame_mean(frame_embeds), text_embed.reshape(-1)))


def image_score(frame_embeds: torch.Tensor, ref_embeds: torch.Tensor) -> float:
    """CLIP-I / DINO-I from embeddings: cosine of the frame mean with each reference, averaged."""
    return float(_cos(frame_mean(frame_embeds)[None], ref_embeds).mean())


def consecutive_score(frame_embeds: torch.Tensor) -> float:
    """T.Cons from embeddings: mean cosine of consecutive frames (1.0 for a single frame)."""
    if len(frame_embeds) < 2:
        return 1.0
    return float(_cos(frame_embeds[:-1], frame_embeds[1:]).mean())


def replace_placeholder(prompt: str, placeholder: str | None, class_word: str | None) -> str:
    """The prompt CLIP-T is computed on: ``placeholder`` replaced by ``class_word``.

    ``"a <sks> dog"`` with class word ``"dog"`` becomes ``"a dog"`` (not ``"a dog dog"``); with no class word the
    placeholder is dropped.

    Args:
        prompt: generation prompt.
        placeholder: the learned token, e.g. ``"<sks>"`` (None: prompt unchanged).
        class_word: the subject's class, e.g. ``"dog"``.
    """
    if not placeholder:
        return prompt
    if class_word:
        pattern = rf"{re.escape(placeholder)}(\s+{re.escape(class_word)}(?!\w))?"
        prompt = re.sub(pattern, lambda _: class_word, prompt)
    else:
        prompt = prompt.replace(placeholder, "")
    return " ".join(prompt.split())


def _load_error(what: str, path: str | os.PathLike, err: Exception) -> MetricsError:
    where = (
        "no such folder, and not a hub id" if not Path(path).exists() and str(path).count("/") != 1 else err
    )
    return MetricsError(f"{path}: cannot load {what} ({where})")


def _load(what: str, cls, path: str | os.PathLike):
    """``cls.from_pretrained(path)``, its failure a :class:`MetricsError` that says what could not be loaded."""
    try:
        return cls.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise _load_error(what, path, err) from err


def toy_clip_dirs() -> tuple[Path, Path, Path]:
    """(model, tokenizer, image processor) folders of the toy CLIP shipped with the toy text-to-video model."""
    try:
        from dreamvideo.toy.model import TOY_MODEL_DIR
    except ImportError as err:
        raise MetricsError(
            f"the built-in toy model is not available ({err}); pass --clip PATH_OR_ID"
        ) from err
    root = Path(TOY_MODEL_DIR)
    dirs = (root / "clip", root / "tokenizer", root / "feature_extractor")
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise MetricsError(f"the built-in toy CLIP is missing ({', '.join(missing)}); pass --clip PATH_OR_ID")
    return dirs


# ----------------------------------------------------------------------------- scorers


class _ImageScorer:
    """What the scorers share: the model on its device in eval mode and batched image embeddings.

    Args:
        model: the vision model.
        image_processor: its image processor.
        device: where to run (default cuda if available).
        batch_size: images per forward pass.
    """

    def __init__(
        self, model, image_processor, device: str | torch.device | None = None, batch_size: int = 32
    ):
        self.device = _default_device(device)
        self.model = model.to(self.device).eval()
        self.image_processor = image_processor
        self.batch_size = batch_size
        self.name = getattr(model.config, "_name_or_path", "") or type(model).__name__

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The model's ``(N, D)`` features of a batch of pixel values."""
        raise NotImplementedError

    @torch.no_grad()
    def image_embeds(self, frames: Frames) -> torch.Tensor:
        """L2-normalised image embeddings ``(N, D)`` (float32, CPU).

        Args:
            frames: uint8 array ``(N,H,W,3)`` (or one ``(H,W,3)``), or a list of PIL images / uint8 arrays.
        """
        images = _to_pil(frames)
        dtype = next(self.model.parameters()).dtype
        out = []
        for i in range(0, len(images), self.batch_size):
            pixels = self.image_processor(images=images[i : i + self.batch_size], return_tensors="pt")[
                "pixel_values"
            ]
            out.append(_normalize(self._image_features(pixels.to(self.device, dtype))).cpu())
        return torch.cat(out)


class ClipScorer(_ImageScorer):
    """CLIP-T, CLIP-I and T.Cons with any transformers ``CLIPModel``.

    Args:
        model: a ``CLIPModel``.
        tokenizer: its tokenizer.
        image_processor: its image processor (``CLIPImageProcessor``).
        device: where to run (default cuda if available).
        batch_size: images or prompts per forward pass.
    """

    def __init__(
        self,
        model,
        tokenizer,
        image_processor,
        device: str | torch.device | None = None,
        batch_size: int = 32,
    ):
        super().__init__(model, image_processor, device, batch_size)
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        tokenizer: str | os.PathLike | None = None,
        image_processor: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
    ) -> ClipScorer:
        """Load a CLIP model folder or hub id (e.g. ``openai/clip-vit-base-patch32``); ``"toy"`` is the toy CLIP.

        Args:
            path: folder or hub id of the ``CLIPModel``.
            tokenizer: folder or hub id of the tokenizer (default: ``path``).
            image_processor: folder or hub id of the image processor (default: ``path``).
            device: where to run.
            batch_size: images or prompts per forward pass.
        """
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        if str(path) in TOY_NAMES:
            path, tok_dir, proc_dir = toy_clip_dirs()
            tokenizer, image_processor = tokenizer or tok_dir, image_processor or proc_dir
        tokenizer, image_processor = tokenizer or path, image_processor or path
        model = _load("a CLIPModel", CLIPModel, path)
        tok = _load("a CLIP tokenizer", AutoTokenizer, tokenizer)
        proc = _load("a CLIP image processor", AutoImageProcessor, image_processor)
        scorer = cls(model, tok, proc, device=device, batch_size=batch_size)
        scorer.name = str(path)
        return scorer

    @torch.no_grad()
    def text_embeds(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """L2-normalised projected text embeddings ``(N, D)`` (float32, CPU).

        Args:
            prompts: one prompt or a list (used as given: no placeholder replacement here).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        max_len = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
        out = []
        for i in range(0, len(prompts), self.batch_size):
            batch = self.tokenizer(
                prompts[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            )
            batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            out.append(_normalize(_features(self.model.get_text_features(**batch))).cpu())
        return torch.cat(out)

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The projected image embeddings (``get_image_features``)."""
        return _features(self.model.get_image_features(pixel_values=pixel_values))

    def clip_t(
        self, frames: Frames, prompt: str, placeholder: str | None = None, class_word: str | None = None
    ) -> float:
        """CLIP-T of a video.

        Args:
            frames: the video's frames.
            prompt: its prompt; ``placeholder`` in it is replaced by ``class_word`` first.
            placeholder: learned token, e.g. ``"<sks>"``.
            class_word: subject class word, e.g. ``"dog"``.
        """
        text = self.text_embeds(replace_placeholder(prompt, placeholder, class_word))[0]
        return text_score(self.image_embeds(frames), text)

    def clip_i(self, frames: Frames, ref_images: Frames) -> float:
        """CLIP-I of a video against reference subject images.

        Args:
            frames: the video's frames.
            ref_images: reference photos of the subject.
        """
        return image_score(self.image_embeds(frames), self.image_embeds(ref_images))

    def temporal_consistency(self, frames: Frames) -> float:
        """T.Cons: mean CLIP cosine of consecutive frames.

        Args:
            frames: the video's frames.
        """
        return consecutive_score(self.image_embeds(frames))


class DinoScorer(_ImageScorer):
    """DINO-I with a transformers ViT (``ViTModel``, e.g. ``facebook/dino-vits16``, or ``Dinov2Model``).

    Args:
        model: the ViT; its feature is the CLS token of ``last_hidden_state``.
        image_processor: its image processor.
        device: where to run (default cuda if available).
        batch_size: images per forward pass.
    """

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        image_processor: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
    ) -> DinoScorer:
        """Load a DINO ViT folder or hub id (e.g. ``facebook/dino-vits16``, the paper's ViT-S/16).

        Args:
            path: folder or hub id of the model.
            image_processor: folder or hub id of the image processor (default: ``path``).
            device: where to run.
            batch_size: images per forward pass.
        """
        from transformers import AutoImageProcessor, AutoModel

        image_processor = image_processor or path
        model = _load("a DINO model", AutoModel, path)
        proc = _load("a DINO image processor", AutoImageProcessor, image_processor)
        scorer = cls(model, proc, device=device, batch_size=batch_size)
        scorer.name = str(path)
        return scorer

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The CLS token of ``last_hidden_state``."""
        return self.model(pixel_values=pixel_values).last_hidden_state[:, 0]

    def dino_i(self, frames: Frames, ref_images: Frames) -> float:
        """DINO-I of a video against reference subject images.

        Args:
            frames: the video's frames.
            ref_images: reference photos of the subject.
        """
        return image_score(self.image_embeds(frames), self.image_embeds(ref_images))


# ----------------------------------------------------------------------------- manifest


@dataclass
class EvalItem:
    """One manifest entry with resolved paths; ``info`` holds ``method``/``case``/``seed`` and other extras."""

    video: Path
    name: str
    prompt: str
    class_word: str | None = None
    placeholder: str | None = None
    subject_refs: list[Path] = field(default_factory=list)
    motion_refs: list[Path] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def _resolve(base: Path, value: str, roots: list[Path] | None = None, where: str = "") -> Path:
    """``value`` relative to ``base``; with ``roots``, refuse a path that leaves them (``..``, absolute, links).

    Args:
        base: the folder relative paths start from.
        value: the manifest's path.
        roots: allowed folders (``None``: any path).
        where: manifest and entry, for the message.
    """
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if roots is not None:
        real = path.resolve()
        if not any(real == r.resolve() or r.resolve() in real.parents for r in roots):
            raise ManifestError(
                f"{where}: path {value!r} is outside the manifest's folder "
                f"({', '.join(str(r) for r in roots)}); pass --allow-outside to allow it"
            )
    return path


def _image_files(folder: Path) -> list[Path]:
    folder = folder / "images" if (folder / "images").is_dir() else folder
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted(p for p in files if p.suffix.lower() in _IMAGE_EXTENSIONS)


def load_manifest(
    manifest_path: str | os.PathLike, videos_dir: str | os.PathLike | None = None, allow_outside: bool = False
) -> list[EvalItem]:
    """Read and validate an evaluation manifest; every file it names must exist.

    The manifest is a JSON list of ``{"video", "prompt", "class_word", "placeholder", "subject_refs",
    "motion_refs", and optional "method", "case", "seed", ...}``. ``video`` is relative to ``videos_dir``
    (default: the manifest's folder), reference paths to the manifest's folder. A ``subject_refs`` entry may be
    a folder: its images (or those of its ``images/`` subfolder) are used.

    Args:
        manifest_path: the JSON file.
        videos_dir: folder of the generated videos.
        allow_outside: accept paths outside the manifest's folder and ``videos_dir`` (default: refused, before any
            file is opened).

    Raises:
        ManifestError: malformed entries, or (all) missing files listed in one message.
    """
    manifest_path = Path(manifest_path)
    entries = read_json(manifest_path)
    base = manifest_path.parent
    videos = Path(videos_dir) if videos_dir is not None else base
    roots = None if allow_outside else [base, videos]
    if not isinstance(entries, list) or not entries:
        raise ManifestError(f"{manifest_path}: expected a non-empty JSON list of entries")
    items, missing = [], []
    for i, entry in enumerate(entries):
        where = f"{manifest_path}: entry {i}"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: expected an object, got {type(entry).__name__}")
        for key in ("video", "prompt"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise ManifestError(f"{where}: '{key}' must be a non-empty string")
        for key in ("class_word", "placeholder"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise ManifestError(f"{where}: '{key}' must be a string or null")
        refs: dict[str, list[Path]] = {}
        for key in ("subject_refs", "motion_refs"):
            value = entry.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ManifestError(f"{where}: '{key}' must be a list of paths or null")
            refs[key] = [_resolve(base, v, roots, where) for v in value]
            missing += [str(p) for p in refs[key] if not p.exists()]
        subject = []
        for p in refs["subject_refs"]:
            if p.is_dir():
                files = _image_files(p)
                if not files:
                    raise ManifestError(f"{where}: subject reference folder {p} holds no images")
                subject += files
            else:
                subject.append(p)
        video = _resolve(videos, entry["video"], roots, where)
        if not video.exists():
            missing.append(str(video))
        known = ("video", "prompt", "class_word", "placeholder", "subject_refs", "motion_refs")
        items.append(
            EvalItem(
                video=video,
                name=entry["video"],
                prompt=entry["prompt"],
                class_word=entry.get("class_word"),
                placeholder=entry.get("placeholder"),
                subject_refs=subject,
                motion_refs=refs["motion_refs"],
                info={k: v for k, v in entry.items() if k not in known},
            )
        )
    if missing:
        shown = ", ".join(dict.fromkeys(missing[:20])) + (
            f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        )
        raise ManifestError(
            f"{manifest_path}: {len(missing)} file(s) named in the manifest not found: {shown}"
        )
    return items


# ----------------------------------------------------------------------------- evaluation


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as err:
        raise MetricsError(f"{path}: not a readable image ({err})") from err


def _read_mask(image_path: Path) -> np.ndarray | None:
    """The mask ``<subject>/masks/<stem>.*`` next to ``<subject>/images/<stem>.*``, if there is one."""
    folder = image_path.parent.parent / "masks"
    if image_path.parent.name != "images" or not folder.is_dir():
        return None
    for ext in _IMAGE_EXTENSIONS:
        path = folder / f"{image_path.stem}{ext}"
        if path.is_file():
            try:
                with Image.open(path) as m:
                    return np.asarray(m.convert("L")) > 127
            except (OSError, ValueError) as err:
                raise MetricsError(f"{path}: not a readable mask ({err})") from err
    return None


def _oracle_metrics(item: EvalItem, frames: np.ndarray, ref_images: list[np.ndarray]) -> dict[str, Any]:
    """Toy-world oracle metrics (``dreamvideo.toy.oracle``), prefixed ``oracle_``."""
    from dreamvideo.data import load_video
    from dreamvideo.toy import oracle
    from dreamvideo.toy.world import BACKGROUNDS

    out: dict[str, Any] = {"oracle_temporal_consistency": oracle.temporal_consistency(frames)}
    background = oracle.background_class(frames)
    out["oracle_background"] = background
    # The expected background: the entry's "background" field, else the one background phrase in the prompt.
    found = [b for b in BACKGROUNDS if b in item.prompt]
    expected = item.info.get("background") or (found[0] if len(found) == 1 else None)
    if expected:
        out["oracle_background_ok"] = float(background == expected)
    if ref_images:
        masks = []
        for path, image in zip(item.subject_refs, ref_images, strict=True):
            mask = _read_mask(path)
            if mask is None or mask.shape != image.shape[:2]:
                mask = oracle.segment_foreground(image)[0]
            masks.append(mask)
        out["oracle_subject_fidelity"] = oracle.subject_fidelity(frames, ref_images, masks)
    if item.motion_refs:
        refs = [load_video(p)[0] for p in item.motion_refs]
        out["oracle_motion_fidelity"] = oracle.motion_fidelity(frames, refs)
    return out


def evaluate_folder(
    videos_dir: str | os.PathLike,
    manifest_path: str | os.PathLike,
    clip: ClipScorer,
    dino: DinoScorer | None = None,
    oracle: bool = False,
    out_dir: str | os.PathLike | None = None,
    allow_outside: bool = False,
    motion=None,
) -> list[dict]:
    """Score every video of a manifest; write ``metrics.json`` and ``metrics.md`` to ``out_dir``.

    All manifest files are checked before any model runs. Reference embeddings and text embeddings are
    cached across entries.

    Args:
        videos_dir: folder of the generated videos (``video`` entries are relative to it).
        manifest_path: the manifest (see :func:`load_manifest`).
        clip: scorer for CLIP-T, CLIP-I and T.Cons.
        dino: scorer for DINO-I (None: DINO-I omitted).
        oracle: also compute the toy world's oracle metrics (``oracle_*`` fields).
        out_dir: where to write the results (default ``videos_dir``; None and ``videos_dir`` None: nothing).
        allow_outside: accept manifest paths outside its folder (see :func:`load_manifest`).
        motion: a :class:`dreamvideo.motion_metrics.MotionScorer` for ``track_motion_fidelity`` (against the
            entry's ``motion_refs``), ``dynamic_degree`` and ``flow_top5_mean`` (None: not computed).

    Returns:
        one dict per entry: ``video``, ``prompt``, ``eval_prompt``, ``num_frames``, the manifest's extra fields
        (``method``, ``case``, ``seed``, ...), and the metrics ``clip_t``, ``t_cons``, ``clip_i``/``dino_i``
        (entries with subject references) and ``oracle_*``.
    """
    from dreamvideo.data import load_video

    items = load_manifest(manifest_path, videos_dir, allow_outside)
    ref_cache: dict[tuple[str, Path], torch.Tensor] = {}
    image_cache: dict[Path, np.ndarray] = {}
    video_cache: dict[str, np.ndarray] = {}

    def refs(scorer, key: str, paths: list[Path]) -> torch.Tensor:
        for p in paths:
            if (key, p) not in ref_cache:
                image_cache.setdefault(p, _read_image(p))
                ref_cache[key, p] = scorer.image_embeds(image_cache[p])[0]
        return torch.stack([ref_cache[key, p] for p in paths])

    rows = []
    for item in items:
        frames, _ = load_video(item.video)
        prompt = replace_placeholder(item.prompt, item.placeholder, item.class_word)
        embeds = clip.image_embeds(frames)
        row: dict[str, Any] = {
            "video": item.name,
            **item.info,
            "prompt": item.prompt,
            "eval_prompt": prompt,
            "num_frames": len(frames),
        }
        row["clip_t"] = text_score(embeds, clip.text_embeds(prompt)[0])
        if item.subject_refs:
            row["clip_i"] = image_score(embeds, refs(clip, "clip", item.subject_refs))
            if dino is not None:
                row["dino_i"] = image_score(dino.image_embeds(frames), refs(dino, "dino", item.subject_refs))
        row["t_cons"] = consecutive_score(embeds)
        if oracle:
            for p in item.subject_refs:
                image_cache.setdefault(p, _read_image(p))
            row.update(_oracle_metrics(item, frames, [image_cache[p] for p in item.subject_refs]))
        if motion is not None:
            keys = [str(p) for p in item.motion_refs]
            motion_videos = (
                [video_cache.setdefault(k, load_video(k)[0]) for k in keys] if motion.tracker else []
            )
            row.update(motion.score(frames, motion_videos, keys))
        rows.append(row)
    if out_dir is not None or videos_dir is not None:
        out = Path(out_dir if out_dir is not None else videos_dir)
        note = (
            None
            if dino is not None
            else "DINO-I not computed (no DINO model given; omitted on the toy world)."
        )
        models = {"clip": clip.name, "dino": dino.name if dino else None}
        if motion is not None:
            models.update(motion.models())
            note = " ".join([n for n in (note, *motion.notes) if n]) or None
        write_results(rows, out, models=models, note=note)
    return rows


# ----------------------------------------------------------------------------- summary and reports


def _metric_keys(rows: list[dict]) -> list[str]:
    keys: dict[str, None] = {}
    for row in rows:
        for k, v in row.items():
            if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys[k] = None
    ordered = [k for k in METRIC_NAMES if k in keys]
    return ordered + sorted(k for k in keys if k not in METRIC_NAMES)


def _stats(rows: list[dict], keys: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for k in keys:
        values = [float(r[k]) for r in rows if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        if values:
            out[k] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}
    return out


def _group(rows: list[dict], by: list[str], keys: list[str]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(b) for b in by), []).append(row)
    return [
        {**dict(zip(by, g, strict=True)), "n": len(members), "metrics": _stats(members, keys)}
        for g, members in groups.items()
    ]


def paired_difference(
    values: Sequence[float], reference: Sequence[float], groups: Sequence[Any] | None = None
) -> dict[str, float]:
    """Mean of ``values[i] - reference[i]`` and its standard error (pairs share prompt and seed), as
    ``{"mean", "stderr", "n"}``; ``stderr`` is NaN with fewer than two pairs.

    With ``groups`` (one label per pair: e.g. the trained subject/motion and seed a video came from) the pairs of
    one group are not independent draws: the result also has ``stderr_by_group``, the standard error over the
    groups' mean differences (``groups`` of them), which is the honest one when the groups are the trainings.

    Args:
        values: a metric per video of one method.
        reference: the same metric for the paired videos of the reference (e.g. the base model).
        groups: optional label per pair; pairs with equal labels are averaged before the standard error.
    """
    if len(values) != len(reference):
        raise ValueError(f"paired_difference: {len(values)} values but {len(reference)} reference values")
    diffs = np.asarray(values, dtype=float) - np.asarray(reference, dtype=float)
    out = {
        "mean": float(diffs.mean()) if len(diffs) else float("nan"),
        "stderr": _stderr(diffs),
        "n": len(diffs),
    }
    if groups is not None:
        if len(groups) != len(diffs):
            raise ValueError(f"paired_difference: {len(diffs)} pairs but {len(groups)} group labels")
        by: dict[Any, list[float]] = {}
        for g, d in zip(groups, diffs, strict=True):
            by.setdefault(g, []).append(float(d))
        means = np.array([np.mean(v) for v in by.values()])
        out |= {"stderr_by_group": _stderr(means), "groups": len(means)}
    return out


def _stderr(x: np.ndarray) -> float:
    """Sample standard deviation / sqrt(n); NaN below two values."""
    return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def summarize(rows: list[dict]) -> dict:
    """Mean and (population) standard deviation of every numeric metric, overall and per group.

    Groups are the distinct values of ``method`` and ``case`` (whichever fields the rows have); with both,
    ``by_method`` also aggregates each method over its cases (the paper's table). Non-finite values are skipped.

    Args:
        rows: as returned by :func:`evaluate_folder`.

    Returns:
        ``{"metrics": [names], "group_by": [fields], "groups": [{method, case, n, metrics: {name: {mean, std,
        n}}}], "by_method": [...] (with both fields), "overall": {n, metrics}}``.
    """
    keys = _metric_keys(rows)
    by = [b for b in ("method", "case") if any(b in r for r in rows)]
    summary: dict[str, Any] = {"metrics": keys, "group_by": by}
    summary["groups"] = _group(rows, by, keys) if by else []
    if len(by) == 2:
        summary["by_method"] = _group(rows, ["method"], keys)
    summary["overall"] = {"n": len(rows), "metrics": _stats(rows, keys)}
    return summary


def _title(key: str) -> str:
    return METRIC_TITLES.get(key, key)


def _cell(stats: dict | None) -> str:
    return "-" if not stats else f"{stats['mean']:.4f} ± {stats['std']:.4f}"


def _table(groups: list[dict], by: list[str], keys: list[str]) -> list[str]:
    lines = [
        "| " + " | ".join([*by, "n", *map(_title, keys)]) + " |",
        "|" + "---|" * (len(by) + 1 + len(keys)),
    ]
    for g in groups:
        cells = [str(g.get(b)) if g.get(b) is not None else "-" for b in by]
        lines.append(
            "| " + " | ".join([*cells, str(g["n"]), *(_cell(g["metrics"].get(k)) for k in keys)]) + " |"
        )
    return lines


def format_markdown(rows: list[dict], summary: dict, note: str | None = None) -> str:
    """A markdown report: summary tables (mean ± std) and one row per video.

    Args:
        rows: per-video results.
        summary: :func:`summarize` of ``rows``.
        note: a line printed under the title (e.g. why DINO-I is missing).
    """
    keys, by = summary["metrics"], summary["group_by"]
    lines = ["# Evaluation", ""]
    if note:
        lines += [note, ""]
    if "by_method" in summary:
        lines += ["## Per method", "", *_table(summary["by_method"], ["method"], keys), ""]
    if by:
        lines += [f"## Per {' and '.join(by)}", "", *_table(summary["groups"], by, keys), ""]
    lines += ["## Overall", "", *_table([summary["overall"]], [], keys), ""]
    lines += [
        "## Per video",
        "",
        "| video | " + " | ".join(map(_title, keys)) + " |",
        "|" + "---|" * (len(keys) + 1),
    ]
    for r in rows:
        cells = [f"{r[k]:.4f}" if isinstance(r.get(k), (int, float)) else "-" for k in keys]
        lines.append(f"| {r['video']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(
    rows: list[dict], out_dir: str | os.PathLike, models: dict | None = None, note: str | None = None
) -> dict:
    """Write ``metrics.json`` (rows, summary, models) and ``metrics.md``; return the summary.

    Args:
        rows: per-video results.
        out_dir: output folder (created).
        models: names of the metric models, stored in the JSON.
        note: a line for the markdown report.
    """
    out_dir = Path(out_dir)
    summary = summarize(rows)
    write_json(
        {"models": models or {}, "note": note, "summary": summary, "rows": rows}, out_dir / "metrics.json"
    )
    with atomic_path(out_dir / "metrics.md") as tmp:
        tmp.write_text(format_markdown(rows, summary, note))
    return summary


# ----------------------------------------------------------------------------- CLI


def cmd_evaluate(args: argparse.Namespace) -> int:
    manifest = Path(args.manifest)
    videos = Path(args.videos) if args.videos else manifest.parent
    from dreamvideo.validate import check_writable_folder

    load_manifest(manifest, videos, args.allow_outside)  # fail on bad input before loading any model
    out = Path(args.out) if args.out else videos
    check_writable_folder(out, "--out")  # before scoring, not after
    clip = ClipScorer.from_pretrained(args.clip, device=args.device)
    dino = DinoScorer.from_pretrained(args.dino, device=args.device) if args.dino else None
    motion = scorer_from_args(args)
    rows = evaluate_folder(
        videos,
        manifest,
        clip,
        dino,
        oracle=args.oracle,
        out_dir=out,
        allow_outside=args.allow_outside,
        motion=motion,
    )
    print((out / "metrics.md").read_text())
    print(f"{len(rows)} video(s) scored; wrote {out / 'metrics.json'} and {out / 'metrics.md'}")
    return 0


def register_cli(subparsers) -> None:
    """Add ``dreamvideo evaluate``."""
    p = subparsers.add_parser(
        "evaluate", help="score generated videos: CLIP-T, CLIP-I, DINO-I, T.Cons (+ toy oracle)"
    )
    p.add_argument("--videos", type=Path, help="folder of generated videos (default: the manifest's folder)")
    p.add_argument(
        "--manifest", type=Path, required=True, help="JSON list of {video, prompt, class_word, ...}"
    )
    p.add_argument(
        "--clip",
        default="toy",
        help="CLIP folder or hub id, e.g. openai/clip-vit-base-patch32 "
        "(default: the toy CLIP shipped with the toy model)",
    )
    p.add_argument("--dino", help="DINO ViT folder or hub id, e.g. facebook/dino-vits16 (default: no DINO-I)")
    p.add_argument("--oracle", action="store_true", help="add the toy world's oracle metrics")
    p.add_argument("--out", type=Path, help="where to write metrics.json/.md (default: --videos)")
    p.add_argument(
        "--allow-outside",
        action="store_true",
        help="accept manifest paths outside the manifest's folder and --videos (default: refused)",
    )
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    add_cli_args(p)
    p.set_defaults(func=cmd_evaluate)
