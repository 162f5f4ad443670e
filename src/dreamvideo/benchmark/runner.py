"""Running a grid: train every subject/motion once, generate and score every cell, resumably, then report."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamvideo import distributed
from dreamvideo.benchmark.grid import (
    CASES,
    CELL_FILE,
    ENCODER_ENTRY,
    BenchmarkConfig,
    Entry,
    Part,
    builtin_methods,
)
from dreamvideo.benchmark.report import summarize, write_report
from dreamvideo.fileio import atomic_path, read_json, write_json

# ----------------------------------------------------------------------------- grid cells


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass
class Learned:
    """A trained subject or motion folder and what a prompt calls it."""

    folder: Path
    words: str | None = None  # subject: its words in prompts ("<sks> square"); motion: None
    token: str | None = None  # subject: the token CLIP-T replaces by the class word


class Benchmark:
    """Runs a :class:`BenchmarkConfig` into ``out`` (see the module docstring).

    Args:
        config: the grid.
        out: output folder (created; reused to resume).
        device: torch device for training and sampling.
        progress: show progress bars.
    """

    def __init__(
        self, config: BenchmarkConfig, out: str | Path, device: str | None = None, progress: bool = True
    ) -> None:
        self.config, self.out, self.progress = config, Path(out), progress
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.stats = {"trained": 0, "training_skipped": 0, "generated": 0, "generation_skipped": 0}
        self._clip = None
        self._motion = None  # MotionScorer, built on first use
        self._refs: dict[str, Any] = {}
        self._ti_runs: dict[str, Path] = {}  # textual-inversion settings -> a subject folder that ran them

    # ------------------------------------------------------------------ data
    def _subject_data(self, item: dict[str, Any]) -> tuple[Path, str]:
        from dreamvideo.toy import world

        if "images" in item:
            return self.config.root / item["images"], item["class_word"]
        folder = self.out / "data" / "subjects" / item["name"]
        if not (folder / "images").is_dir():
            world.write_subject_folder(item["name"], folder, n=item.get("n", 5))
        return folder, world.CUSTOM_SUBJECTS[item["name"]].class_word

    def _motion_data(self, item: dict[str, Any]) -> Path:
        from dreamvideo.toy import world

        if "videos" in item:
            return self.config.root / item["videos"]
        folder = self.out / "data" / "motions" / item["name"]
        if not (folder / "captions.json").is_file():
            world.write_motion_folder(item["name"], folder, n=item.get("n", 3))
        return folder

    def _rel(self, path: Path) -> str:
        """A path relative to the output folder when inside it (cells stay valid if the folder moves)."""
        try:
            return str(Path(path).resolve().relative_to(self.out.resolve()))
        except ValueError:
            return str(Path(path).resolve())

    def _pipe(self):
        from dreamvideo.pipeline import DreamVideoPipeline

        pipe = DreamVideoPipeline.from_pretrained(self.config.base, device=self.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # ------------------------------------------------------------------ training
    def _stage(self, steps: int, lr: float, batch: int, seed: int):
        from dreamvideo.training import StageConfig

        return StageConfig(
            steps=steps, lr=lr, batch_size=batch, seed=seed, checkpoint_every=max(1, steps // 2)
        )

    def _method_settings(self, part: Part) -> dict[str, Any]:
        """The ``method_settings`` a part trains with: its method's, or ``settings_of``'s (an ablation's)."""
        return self.config.method_settings.get(part.flag("settings_of", part.method), {})

    def _subject_spec(self, part: Part, class_word: str, seed: int) -> tuple[Any, Any, dict]:
        from dreamvideo import adapters as ad
        from dreamvideo.methods import SubjectSettings

        t, ms = self.config.training, self._method_settings(part)
        settings = SubjectSettings(
            token="<sks>",
            init_word=class_word,
            caption=t["subject_caption"],
            use_masks=t["use_masks"],
            textual_inversion=self._stage(
                t["ti_steps"], ms.get("ti_lr", t["ti_lr"]), t["subject_batch_size"], seed
            ),
            identity=self._stage(
                t["identity_steps"], ms.get("identity_lr", t["identity_lr"]), t["subject_batch_size"], seed
            ),
            identity_adapter=ad.identity_adapter_config(
                sites=tuple(part.flag("identity_sites", ["attn2"])),
                placement=part.flag("placement", "parallel"),
            ),
            train_token=part.flag("train_token", True),
        )
        steps = ms.get("subject_steps", t["ti_steps"] + t["identity_steps"])
        stage = self._stage(steps, ms.get("subject_lr", t["identity_lr"]), t["subject_batch_size"], seed)
        options = {"rank": ms["rank"]} if part.method == "lora" and "rank" in ms else {}
        return settings, stage, options

    def _motion_spec(self, part: Part, seed: int, condition_dim: int | None) -> tuple[Any, dict]:
        from dreamvideo import adapters as ad
        from dreamvideo.methods import MotionSettings

        t, ms = self.config.training, self.config.method_settings.get(part.method, {})
        guidance = part.flag("appearance_guidance", True) and part.method == "dreamvideo"
        stage = self._stage(
            ms.get("motion_steps", t["motion_steps"]),
            ms.get("motion_lr", t["motion_lr"]),
            t["motion_batch_size"],
            seed,
        )
        settings = MotionSettings(
            num_frames=t["num_frames"],
            stage=stage,
            appearance_guidance=guidance,
            motion_adapter=ad.motion_adapter_config(
                condition_dim if guidance else None,
                sites=tuple(part.flag("motion_sites", ["attn1", "attn2", "ff"])),
                placement=part.flag("placement", "parallel"),
            ),
        )
        options = {"rank": ms["rank"]} if part.method == "lora" and "rank" in ms else {}
        return settings, options

    def _encoder_job(self, seed: int) -> dict[str, Any]:
        """The appearance encoder: trained once per seed for every subject (none of which it sees)."""
        from dreamvideo.reference.encoder import ENCODER_INFO

        t = self.config.training
        spec = {
            k: t[k]
            for k in ("encoder_steps", "encoder_lr", "encoder_batch_size", "encoder_pairs", "num_frames")
        }
        key = _hash({"kind": "encoder", "spec": spec, "base": self.config.base})
        return {
            "kind": "encoder",
            "seed": seed,
            "spec": spec,
            "marker": ENCODER_INFO,
            "folder": self.out / "train" / "encoder" / f"{key}-seed{seed}",
            "ti_key": None,
        }

    def _train_encoder(self, job: dict[str, Any]) -> None:
        from dreamvideo.reference.training import EncoderSettings, learn_appearance_encoder

        if (job["folder"] / job["marker"]).is_file():
            self.stats["training_skipped"] += 1
            return
        s = job["spec"]
        settings = EncoderSettings(
            num_frames=s["num_frames"],
            stage=self._stage(s["encoder_steps"], s["encoder_lr"], s["encoder_batch_size"], job["seed"]),
        )
        pairs = self.config.root / s["encoder_pairs"] if s["encoder_pairs"] else None
        print(f"[benchmark] training the appearance encoder (seed {job['seed']}) -> {job['folder']}")
        learn_appearance_encoder(
            self._pipe(), job["folder"], settings, pairs=pairs, resume=True, progress=self.progress
        )
        self.stats["trained"] += 1

    def _job(self, kind: str, part: Part, item: dict[str, Any], seed: int) -> dict[str, Any]:
        """Where one subject/motion of the grid is trained, and with what (nothing is run here)."""
        from dreamvideo.artifacts import MOTION_FILE, SUBJECT_FILE

        if kind == "subject" and part.method == ENCODER_ENTRY:
            return self._encoder_job(seed) | {"item": item, "part": part}

        if kind == "subject":
            data, class_word = self._subject_data(item)
            settings, stage, options = self._subject_spec(part, class_word, seed)
            spec = {"settings": settings, "stage": stage}
        else:
            data, stage = self._motion_data(item), None
            settings, options = self._motion_spec(part, seed, None)
            spec = {"settings": settings}
        # The motion spec is hashed without the base's condition dim (known only once the base is loaded).
        key = _hash(
            {
                "kind": kind,
                "method": part.method,
                "flags": part.flags,
                "data": self._rel(data),
                "spec": spec,
                "options": options,
            }
        )
        ti_key = None
        if kind == "subject" and part.method in ("dreamvideo", "textual-inversion") and settings.train_token:
            ti = (
                settings.textual_inversion
            )  # DreamVideo variants share their (identical) textual inversion run
            ti_key = _hash(
                {
                    "data": self._rel(data),
                    "ti": ti,
                    "token": settings.token,
                    "word": settings.init_word,
                    "caption": settings.caption,
                    "masks": settings.use_masks,
                }
            )
        return {
            "kind": kind,
            "part": part,
            "item": item,
            "seed": seed,
            "data": data,
            "settings": settings,
            "stage": stage,
            "options": options,
            "ti_key": ti_key,
            "marker": SUBJECT_FILE if kind == "subject" else MOTION_FILE,
            "folder": self.out / "train" / kind / item["name"] / f"{part.method}-{key}-seed{seed}",
        }

    def _train(self, job: dict[str, Any]) -> None:
        """Train one job unless its folder already holds the finished result."""
        from dreamvideo import methods

        if job["kind"] == "encoder":
            return self._train_encoder(job)
        kind, part, item, seed, folder = job["kind"], job["part"], job["item"], job["seed"], job["folder"]
        if (folder / job["marker"]).is_file():
            self.stats["training_skipped"] += 1
        else:
            if job["ti_key"] in self._ti_runs:
                _reuse_textual_inversion(self._ti_runs[job["ti_key"]], folder)
            pipe = self._pipe()
            flags = f" {dict(part.flags)}" if part.flags else ""
            print(
                f"[benchmark] training {kind} {item['name']} with {part.method}{flags} (seed {seed}) -> {folder}"
            )
            if kind == "subject":
                methods.learn_subject(
                    pipe,
                    job["data"],
                    folder,
                    job["settings"],
                    method=part.method,
                    stage=job["stage"],
                    resume=True,
                    progress=self.progress,
                    **job["options"],
                )
            else:
                settings, options = self._motion_spec(part, seed, pipe.condition_dim)
                methods.learn_motion(
                    pipe,
                    job["data"],
                    folder,
                    settings,
                    method=part.method,
                    resume=True,
                    progress=self.progress,
                    **options,
                )
            self.stats["trained"] += 1
        if job["ti_key"] is not None:
            self._ti_runs.setdefault(job["ti_key"], folder)

    def _learned(self, job: dict[str, Any]) -> Learned:
        folder = job["folder"]
        if job["kind"] == "encoder":  # zero-shot: the prompt names the subject by its class word
            return Learned(folder, self._subject_data(job["item"])[1], None)
        if job["kind"] == "motion":
            return Learned(folder)
        info = read_json(folder / job["marker"])
        token = info.get("token")
        return Learned(folder, f"{token} {info['class_word']}" if token else info["class_word"], token)

    # ------------------------------------------------------------------ cells
    def _learn_all(self) -> dict[tuple, Learned]:
        """Train (or find) every subject and motion the entries need, keyed ``(entry, kind, item, seed)``.

        Under ``accelerate launch`` the distinct trainings are split between the processes, each training its
        share alone (as a single process would, so the results do not depend on the number of processes).
        """
        if distributed.is_main_process():  # bundled toy data is written once, before anyone reads it
            for item in self.config.subjects:
                self._subject_data(item)
            for item in self.config.motions:
                self._motion_data(item)
        distributed.wait_for_everyone()
        jobs: dict[tuple, dict[str, Any]] = {}
        for entry in self.config.entries():
            for seed in self.config.seeds:
                for kind, part, items in (
                    ("subject", entry.subject, self.config.subjects),
                    ("motion", entry.motion, self.config.motions),
                ):
                    if part is None:
                        continue
                    for item in items:
                        jobs[entry.name, kind, item["name"], seed] = self._job(kind, part, item, seed)
        distinct = list({str(job["folder"]): job for job in jobs.values()}.values())
        mine = distributed.shard(distinct)  # outside local_only(): split between the real processes
        with distributed.local_only():
            for job in mine:
                self._train(job)
        distributed.wait_for_everyone()
        return {key: self._learned(job) for key, job in jobs.items()}

    def _cells(self, learned: dict[tuple, Learned]) -> list[dict[str, Any]]:
        """Every video of the grid (plus DreamVideo's checkpoint trade-off grid) as a cell description."""
        cfg = self.config
        cells = []
        for entry in cfg.entries():
            for case in entry.cases:
                subjects = cfg.subjects if case in ("subject", "joint") else [None]
                motions = cfg.motions if case in ("motion", "joint") else [None]
                for seed in cfg.seeds:
                    for s_item in subjects:
                        for m_item in motions:
                            s = learned.get((entry.name, "subject", s_item["name"], seed)) if s_item else None
                            m = learned.get((entry.name, "motion", m_item["name"], seed)) if m_item else None
                            for template in cfg.prompts[case]:
                                cells.append(self._cell(entry, case, seed, s_item, m_item, s, m, template))
        dv = builtin_methods()["dreamvideo"]
        if cfg.tradeoff and "dreamvideo" in [e.name for e in cfg.entries()]:
            for seed in cfg.seeds:
                for s_item in cfg.subjects:
                    for m_item in cfg.motions:
                        s = learned["dreamvideo", "subject", s_item["name"], seed]
                        m = learned["dreamvideo", "motion", m_item["name"], seed]
                        for i in cfg.tradeoff["identity_steps"]:
                            for j in cfg.tradeoff["motion_steps"]:
                                cell = self._cell(
                                    dv,
                                    "joint",
                                    seed,
                                    s_item,
                                    m_item,
                                    s,
                                    m,
                                    cfg.prompts["joint"][0],
                                    steps=(i, j),
                                )
                                cell["row"]["group"] = "tradeoff"
                                cells.append(cell)
        return cells

    def _cell(
        self,
        entry: Entry,
        case: str,
        seed: int,
        s_item,
        m_item,
        s: Learned | None,
        m: Learned | None,
        template: str,
        steps: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        class_word = self._subject_data(s_item)[1] if s_item else None
        prompt = template.format(subject=s.words if s else class_word)
        t = self.config.training
        # checkpoints at the last step are the final weights: share those cells with the main grid
        s_step = None if steps is None or steps[0] >= t["identity_steps"] else steps[0]
        m_step = None if steps is None or steps[1] >= t["motion_steps"] else steps[1]
        appearance = None
        guided = m is not None and read_json(m.folder / "motion.json").get("appearance_guidance")
        if guided and case == "joint" and s_item is not None:
            appearance = self._subject_refs(s_item)["paths"][0]  # section 6: e from a subject image
        elif guided and case == "motion":  # section 6: e from an image of the desired foreground
            appearance = self._foreground_reference(template)
        encoder = s is not None and entry.subject is not None and entry.subject.method == ENCODER_ENTRY
        load = {
            "subject": self._rel(s.folder) if s and not encoder else None,
            "subject_step": s_step,
            "motion": self._rel(m.folder) if m else None,
            "motion_step": m_step,
        }
        if encoder:  # the appearance encoder with the subject's first image as its reference
            load["encoder"] = self._rel(s.folder)
            appearance = self._subject_refs(s_item)["paths"][0]
        key = _hash(
            {
                **load,
                "prompt": prompt,
                "seed": seed,
                "sampling": self.config.sampling,
                "base": self.config.base,
                "appearance": self._rel(appearance) if appearance else None,
            }
        )
        row = {
            "entry": entry.name,
            "title": entry.title,
            "group": entry.group,
            "case": case,
            "seed": seed,
            "subject": s_item["name"] if s_item else None,
            "motion": m_item["name"] if m_item else None,
            "template": template,
            "prompt": prompt,
            "cell": f"videos/{key}",
        }
        if steps is not None:
            row["identity_step"], row["motion_step"] = steps
        return {
            "key": key,
            "load": load,
            "appearance": appearance,
            "row": row,
            "class_word": class_word,
            "token": s.token if s else None,
            "s_item": s_item,
            "m_item": m_item,
        }

    # ------------------------------------------------------------------ references and metrics
    def _subject_refs(self, item: dict[str, Any]) -> dict[str, Any]:
        key = "subject:" + item["name"]
        if key not in self._refs:
            from dreamvideo.data import load_subject_images
            from dreamvideo.toy import oracle

            folder, _ = self._subject_data(item)
            data = load_subject_images(folder, self._size())
            images = [_to_uint8(x) for x in data.images]
            if data.masks is not None:
                masks = [m[0].numpy() > 0.5 for m in data.masks]
            else:
                masks = [oracle.segment_foreground(img)[0] for img in images]
            self._refs[key] = {"paths": data.paths, "images": images, "masks": masks}
        return self._refs[key]

    def _foreground_reference(self, template: str) -> Path | None:
        """The image a motion-only prompt's appearance guidance takes: ``config.motion_references[template]``, or
        on the toy world the prompt's sprite rendered on its background (None: no image, the zero vector)."""
        if template in self.config.motion_references:
            return self.config.root / self.config.motion_references[template]
        if not self.config.oracle:
            return None
        from PIL import Image

        from dreamvideo.toy import world

        image = world.foreground_image(template, self._size())
        if image is None:
            return None
        path = self.out / "data" / "foregrounds" / f"{_hash(template)}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                Image.fromarray(image).save(tmp, format="PNG")
        return path

    def _appearance_image(self, cell: dict[str, Any]) -> np.ndarray | None:
        """The cell's appearance image as uint8 pixels at the model's size (a subject photo or a foreground)."""
        if cell["appearance"] is None:
            return None
        if cell["s_item"] is not None:
            return self._subject_refs(cell["s_item"])["images"][0]
        from dreamvideo.data import load_image

        return _to_uint8(load_image(cell["appearance"], self._size()))

    def _motion_refs(self, item: dict[str, Any]) -> list[np.ndarray]:
        key = "motion:" + item["name"]
        if key not in self._refs:
            from dreamvideo.data import load_motion_videos

            data = load_motion_videos(self._motion_data(item), self._size())
            self._refs[key] = [np.stack([_to_uint8(f) for f in video]) for video in data.videos]
        return self._refs[key]

    def _size(self) -> int:
        if "size" not in self._refs:
            from dreamvideo.base import resolve_base
            from dreamvideo.fileio import read_json as rj

            root = resolve_base(self.config.base)
            unet, vae = rj(root / "unet" / "config.json"), rj(root / "vae" / "config.json")
            sample = unet["sample_size"]
            sample = sample[0] if isinstance(sample, list) else sample
            self._refs["size"] = sample * 2 ** (len(vae["block_out_channels"]) - 1)
        return self._refs["size"]

    def _clip_scorer(self):
        if self._clip is None:
            from dreamvideo.metrics import ClipScorer

            clip = self.config.clip
            if isinstance(clip, dict):
                root = self.config.root
                self._clip = ClipScorer.from_pretrained(
                    root / clip["model"],
                    tokenizer=root / clip["tokenizer"] if clip.get("tokenizer") else None,
                    image_processor=root / clip["image_processor"] if clip.get("image_processor") else None,
                    device=self.device,
                )
            else:
                self._clip = ClipScorer.from_pretrained(
                    clip if clip == "toy" else self.config.root / clip, device=self.device
                )
        return self._clip

    def _motion_scorer(self):
        """The track/flow scorer of ``config.motion_metrics`` (None when off); what cannot load becomes a note."""
        spec = self.config.motion_metrics
        if spec is None:
            return None
        if self._motion is None:
            from dreamvideo.motion_metrics import build_scorer

            self._motion = build_scorer(**spec, device=self.device)
        return self._motion

    def _motion_keys(self, cell: dict[str, Any]) -> list[str]:
        """The metrics the motion scorer gives this cell (track fidelity needs a learned motion's videos)."""
        scorer = self._motion_scorer()
        if scorer is None:
            return []
        keys = ["dynamic_degree", "flow_top5_mean"] if scorer.flow else []
        if scorer.tracker and cell["m_item"] and cell["row"]["case"] in ("motion", "joint"):
            keys.append("track_motion_fidelity")
        return keys

    def _score_motion(self, cell: dict[str, Any], frames: np.ndarray) -> dict[str, float]:
        """Track motion fidelity against the motion's training videos, dynamic degree (``_motion_keys``)."""
        keys = self._motion_keys(cell)
        if not keys:
            return {}
        refs, ref_keys = None, None
        if "track_motion_fidelity" in keys:
            refs = self._motion_refs(cell["m_item"])
            ref_keys = [f"{cell['m_item']['name']}:{i}" for i in range(len(refs))]
        return {k: float(v) for k, v in self._motion_scorer().score(frames, refs, ref_keys).items()}

    def _score(self, cell: dict[str, Any], frames: np.ndarray) -> dict[str, float]:
        from dreamvideo.metrics import consecutive_score, image_score, replace_placeholder, text_score
        from dreamvideo.toy import oracle
        from dreamvideo.toy.world import BACKGROUNDS

        clip, row = self._clip_scorer(), cell["row"]
        embeds = clip.image_embeds(frames)
        prompt = replace_placeholder(row["prompt"], cell["token"], cell["class_word"])
        scores = {
            "clip_t": text_score(embeds, clip.text_embeds(prompt)[0]),
            "t_cons": consecutive_score(embeds),
        }
        subject = cell["s_item"] and row["case"] in ("subject", "joint")
        motion = cell["m_item"] and row["case"] in ("motion", "joint")
        if subject:
            refs = self._subject_refs(cell["s_item"])
            if "clip" not in refs:
                refs["clip"] = clip.image_embeds(refs["images"])
            scores["clip_i"] = image_score(embeds, refs["clip"])
        if self.config.oracle:
            masks = oracle.segment_foreground(frames)
            if subject:
                refs = self._subject_refs(cell["s_item"])
                scores["subject_fidelity"] = oracle.subject_fidelity(
                    frames, refs["images"], refs["masks"], masks
                )
            if motion:
                scores["motion_fidelity"] = oracle.motion_fidelity(
                    frames, self._motion_refs(cell["m_item"]), masks
                )
            found = [b for b in BACKGROUNDS if b in row["prompt"]]
            if len(found) == 1:
                scores["background_ok"] = float(oracle.background_class(frames) == found[0])
        scores.update(self._score_motion(cell, frames))
        return {k: float(v) for k, v in scores.items()}

    # ------------------------------------------------------------------ generation
    def _generate(self, cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Generate and score every cell; under ``accelerate launch`` the processes split the loaded models."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for cell in cells:
            groups.setdefault(json.dumps(cell["load"], sort_keys=True), []).append(cell)
        rows = []
        done: dict[str, dict[str, Any]] = {}
        mine = distributed.shard(list(groups))
        with distributed.local_only():
            for load_key in mine:
                self._generate_group(json.loads(load_key), groups[load_key], done)
        distributed.wait_for_everyone()
        for cell in cells:
            data = read_json(self.out / "videos" / cell["key"] / CELL_FILE)
            rows.append(cell["row"] | data["metrics"] | data["by_reference"][_reference(cell)])
        return rows

    def _complete(self, cell: dict[str, Any]) -> None:
        """Score a saved video for this cell where its ``cell.json`` lacks it: the metrics against this cell's
        subject/motion (one video can stand in several cells: the base model's video of a motion prompt serves every
        motion), and motion metrics configured after it was scored. Computed from its frames, no new video."""
        path = self.out / "videos" / cell["key"] / CELL_FILE
        data = read_json(path)
        if "by_reference" not in data:
            # scored before metrics were kept per reference: against which reference is unknown
            data["metrics"] = {k: v for k, v in data["metrics"].items() if k not in REFERENCE_METRICS}
            data["by_reference"] = {}
        ref = _reference(cell)
        missing = [
            k for k in self._motion_keys(cell) if k not in REFERENCE_METRICS and k not in data["metrics"]
        ]
        if ref in data["by_reference"] and not missing:
            return
        frames = _load_strip(path.parent / "frames.png", self.config.sampling["num_frames"])
        free, against = _split_scores(self._score(cell, frames))
        data["metrics"] = free | data["metrics"]  # what was stored stays (scored on the video itself)
        data["by_reference"][ref] = against
        write_json(data, path)

    def _generate_group(
        self, load: dict[str, Any], members: list[dict[str, Any]], done: dict[str, Any]
    ) -> None:
        """Generate and score the cells that share one loaded subject/motion (finished cells are skipped)."""
        from dreamvideo.video_io import write_video

        todo, saved = [], []  # saved: cells whose video exists (on disk, or made below for another cell)
        for cell in members:
            if cell["key"] in done or (self.out / "videos" / cell["key"] / CELL_FILE).is_file():
                saved.append(cell)
            else:
                todo.append(cell)
            done[cell["key"]] = cell
        self.stats["generation_skipped"] += len(members) - len(todo)
        if todo:
            pipe = self._pipe()
            if load["subject"]:
                pipe.load_subject(
                    self.out / load["subject"]
                    if not Path(load["subject"]).is_absolute()
                    else load["subject"],
                    step=load["subject_step"],
                )
            if load["motion"]:
                pipe.load_motion(
                    self.out / load["motion"] if not Path(load["motion"]).is_absolute() else load["motion"],
                    step=load["motion_step"],
                )
            if load.get("encoder"):
                pipe.load_appearance_encoder(self.out / load["encoder"])
            for cell in todo:
                row, folder = cell["row"], self.out / "videos" / cell["key"]
                appearance = self._appearance_image(cell)
                sampling = self.config.sampling
                extra = {"reference_image": appearance} if load.get("encoder") else {}
                frames = pipe(
                    row["prompt"],
                    num_frames=sampling["num_frames"],
                    num_inference_steps=sampling["steps"],
                    guidance_scale=sampling["guidance_scale"],
                    appearance_image=appearance,
                    generator=torch.Generator().manual_seed(row["seed"]),
                    progress=False,
                    **extra,
                ).frames[0]
                scores = self._score(cell, frames)
                free, against = _split_scores(scores)
                folder.mkdir(parents=True, exist_ok=True)
                _save_strip(frames, folder / "frames.png")
                write_video(frames, folder / "video.gif")
                write_json(
                    {
                        "load": cell["load"],
                        "prompt": row["prompt"],
                        "appearance": self._rel(cell["appearance"]) if cell["appearance"] else None,
                        "seed": row["seed"],
                        "sampling": self.config.sampling,
                        "metrics": free,
                        "by_reference": {_reference(cell): against},
                    },
                    folder / CELL_FILE,
                )
                self.stats["generated"] += 1
                print(
                    f"[benchmark] {row['title']} / {row['case']} / seed {row['seed']}: {row['prompt']!r} "
                    + " ".join(f"{k}={v:.3f}" for k, v in scores.items())
                )
            del pipe
        for cell in saved:
            self._complete(cell)

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any] | None:
        """Train, generate, score, analyse and report; return the results (also in ``results.json``).

        With several processes only the main one analyses, reports and returns the results (the others ``None``).
        """
        started = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        if distributed.is_main_process():
            write_json(_config_dict(self.config), self.out / "config.json")
        learned = self._learn_all()
        cells = self._cells(learned)
        rows = self._generate(cells)
        self.stats = distributed.sum_counts(self.stats)  # each process counted its share of the work
        if not distributed.is_main_process():
            return None
        with distributed.local_only():
            analysis = self._analysis()
        records = {}
        from dreamvideo.methods import training_record

        for (entry, kind, item, seed), item_learned in learned.items():
            records[f"{entry}|{kind}|{item}|{seed}"] = _record(item_learned.folder, training_record)
        scorer = self._motion_scorer()
        results = {
            "config": _config_dict(self.config),
            "stats": self.stats,
            "rows": rows,
            "training": records,
            "analysis": analysis,
            "motion_metrics": None if scorer is None else {"models": scorer.models(), "notes": scorer.notes},
        }
        results["summary"] = summarize(rows, records, self.config.entries())
        results["seconds"] = round(time.perf_counter() - started, 1)
        write_report(results, self.config.entries(), self.out)
        self._contact_sheets(cells)
        return results

    def _analysis(self) -> dict[str, Any] | None:
        spec = self.config.analysis
        if not spec:
            return None
        folder = self.out / "analysis"
        settings = {
            "steps": spec["steps"],
            "lr": spec.get("lr", 1e-4),
            "subject": self.config.subjects[0]["name"],
            "motion": self.config.motions[0]["name"],
        }
        key = _hash(settings | {"base": self.config.base})
        done = folder / "weight_change.json"
        if done.is_file() and read_json(done).get("key") == key:
            return read_json(done)
        from dreamvideo.methods.analysis import analyze_weight_change, plot_weight_change

        images, class_word = self._subject_data(self.config.subjects[0])
        result = analyze_weight_change(
            self._pipe(),
            images,
            self._motion_data(self.config.motions[0]),
            spec["steps"],
            class_word=class_word,
            lr=settings["lr"],
            batch_size=self.config.training["subject_batch_size"],
            num_frames=self.config.training["num_frames"],
            progress=self.progress,
        )
        result["key"] = key
        write_json(result, done)
        plot_weight_change(result, self.out / "plots" / "weight_change.png")
        return result

    def _contact_sheets(self, cells: list[dict[str, Any]]) -> None:
        """One sheet per case: every entry on the first subject, motion, prompt and seed."""
        from dreamvideo.video_io import contact_sheet

        cfg = self.config
        for case in CASES:
            chosen = [
                c
                for c in cells
                if c["row"]["case"] == case
                and c["row"]["group"] != "tradeoff"
                and c["row"]["seed"] == cfg.seeds[0]
                and c["row"]["template"] == cfg.prompts[case][0]
                and c["row"]["subject"] in (None, cfg.subjects[0]["name"])
                and c["row"]["motion"] in (None, cfg.motions[0]["name"])
            ]
            if not chosen:
                continue
            rows = [
                (
                    f"{c['row']['title']}: {c['row']['prompt']}",
                    _load_strip(self.out / c["row"]["cell"] / "frames.png", cfg.sampling["num_frames"]),
                )
                for c in chosen
            ]
            contact_sheet(rows, self.out / f"contact_{case}.png", scale=2, label_width=40)


def _record(folder: Path, training_record) -> dict[str, Any]:
    """A training record; the appearance encoder's is its one-off training (0 s per subject)."""
    from dreamvideo.reference.encoder import ENCODER_INFO

    if not (folder / ENCODER_INFO).is_file():
        return training_record(folder)
    info = read_json(folder / ENCODER_INFO)
    return {
        "method": ENCODER_ENTRY,
        "kind": "subject",
        "trainable_parameters": int(info["trainable_parameters"]),
        "training_seconds": float(info["training"]["seconds"]),
        "one_off": True,
        "per_subject_seconds": 0.0,
    }


def _reuse_textual_inversion(source: Path, folder: Path) -> None:
    """Start ``folder``'s run from ``source``'s final textual-inversion checkpoint: with ``resume`` the stage is
    then already complete (same settings and seed give the same embedding), and only the later stage trains."""
    import shutil

    from dreamvideo.training import latest_checkpoint

    last = latest_checkpoint(source / "checkpoints" / "textual_inversion")
    target = folder / "checkpoints" / "textual_inversion"
    if last is None or target.exists():
        return
    target.mkdir(parents=True)
    shutil.copytree(last, target / last.name)
    from dreamvideo.fileio import read_json, write_json

    info = read_json(target / last.name / "trainer.json")  # another run's checkpoint, adopted on purpose:
    write_json(info | {"run_id": None, "copied_from": str(last)}, target / last.name / "trainer.json")


# ----------------------------------------------------------------------------- frames on disk


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def _save_strip(frames: np.ndarray, path: Path) -> None:
    """Frames (F, H, W, 3) as one lossless PNG, stacked vertically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate(list(frames), axis=0)).save(tmp, format="PNG")


# Metrics that compare a video with its cell's subject images or motion videos (the others need the video only).
REFERENCE_METRICS = frozenset({"clip_i", "subject_fidelity", "motion_fidelity", "track_motion_fidelity"})


def _reference(cell: dict[str, Any]) -> str:
    """The subject and motion a cell's ``REFERENCE_METRICS`` compare against (its case's items)."""
    case = cell["row"]["case"]
    s = cell["s_item"]["name"] if cell["s_item"] and case in ("subject", "joint") else "-"
    m = cell["m_item"]["name"] if cell["m_item"] and case in ("motion", "joint") else "-"
    return f"subject={s} motion={m}"


def _split_scores(scores: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """``scores`` as (metrics of the video alone, metrics against the cell's references)."""
    free = {k: v for k, v in scores.items() if k not in REFERENCE_METRICS}
    return free, {k: v for k, v in scores.items() if k in REFERENCE_METRICS}


def _load_strip(path: Path, num_frames: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        strip = np.asarray(img.convert("RGB"))
    return strip.reshape(num_frames, strip.shape[0] // num_frames, *strip.shape[1:])


def _config_dict(config: BenchmarkConfig) -> dict[str, Any]:
    data = {k: getattr(config, k) for k in config.__dataclass_fields__ if k != "root"}
    return json.loads(json.dumps(data, default=str))
