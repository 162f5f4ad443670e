"""``dreamvideo benchmark``: DreamVideo, the paper's baselines and its ablations on one grid.

A grid is subjects x motions x prompts x seeds. Every entry (a method, an ablation, or the plain base model) learns
each subject and/or motion once per seed with the same data, seed and step budget, then generates every prompt of
the cases it supports (subject, motion, joint customization) with the same sampling seed. Each video is scored with
the toy CLIP (CLIP-T, CLIP-I, T.Cons) and, on the toy world, the oracle (subject fidelity, motion fidelity,
background accuracy).

Work is cached cell by cell under ``--out``: a trained folder (``train/...``, marker JSON last) or a generated
video with its metrics (``videos/.../cell.json``) is never recomputed, and an interrupted training run resumes from
its last checkpoint. Cells are keyed by a hash of everything that determines them, so changing a setting makes new
cells instead of reusing stale ones.

Outputs: ``results.md`` / ``results.json`` (tables in the paper's layout: mean ± std over seeds, trainable
parameters, training time), ``plots/`` (metric bars, identity-vs-motion trade-off, weight-change analysis) and
``contact_<case>.png`` (every entry on the same prompt and seed).

Under ``accelerate launch`` the processes split the distinct trainings and the generation groups between them (each
works alone on its share, so results match a single-process run); the main process then analyses and reports.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamvideo import distributed
from dreamvideo.fileio import DreamVideoError, atomic_path, read_json, write_json
from dreamvideo.metrics import paired_difference

CASES = ("subject", "motion", "joint")
METRICS = {  # key -> (title, cases where it is meaningful)
    "clip_t": ("CLIP-T", CASES),
    "clip_i": ("CLIP-I", ("subject", "joint")),
    "t_cons": ("T.Cons", CASES),
    "subject_fidelity": ("Subject fid.", ("subject", "joint")),
    "motion_fidelity": ("Motion fid.", ("motion", "joint")),
    "background_ok": ("Background acc.", CASES),
}
CELL_FILE = "cell.json"


class BenchmarkError(DreamVideoError):
    pass


# ----------------------------------------------------------------------------- entries: methods and ablations


@dataclass(frozen=True)
class Part:
    """How one side of an entry is learned: a method and DreamVideo ablation flags (``train_token``,
    ``identity_sites``, ``motion_sites``, ``placement``, ``appearance_guidance``)."""

    method: str
    flags: tuple[tuple[str, Any], ...] = ()

    def flag(self, name: str, default: Any = None) -> Any:
        return dict(self.flags).get(name, default)


@dataclass(frozen=True)
class Entry:
    """A row of the tables: ``group`` is ``"base"``, ``"method"`` or ``"ablation"``."""

    name: str
    title: str
    group: str
    subject: Part | None
    motion: Part | None
    cases: tuple[str, ...]


def _cases(subject: Part | None, motion: Part | None) -> tuple[str, ...]:
    return tuple(c for c, ok in (("subject", subject), ("motion", motion), ("joint", subject and motion)) if ok)


def _ablation(name: str, title: str, subject: dict | None, motion: dict | None,
              cases: tuple[str, ...] | None = None) -> Entry:  # fmt: skip
    """A DreamVideo variant: ``{}`` keeps DreamVideo's side, a dict of flags (or ``"method"``) changes it, ``None``
    drops it. It is evaluated on the cases its changes touch (and always on joint customization)."""
    default = cases or tuple(c for c, changed in (("subject", subject), ("motion", motion), ("joint", True))
                             if changed)  # fmt: skip
    s = Part(subject.pop("method", "dreamvideo"), tuple(sorted(subject.items()))) if subject is not None else None
    m = Part(motion.pop("method", "dreamvideo"), tuple(sorted(motion.items()))) if motion is not None else None
    return Entry(name, title, "ablation", s, m, default)


def builtin_ablations() -> dict[str, Entry]:
    """The paper's ablations of DreamVideo (method.md section 8), by key."""
    entries = [
        _ablation("no-textual-identity", "w/o textual identity", {"train_token": False}, {}),
        _ablation("no-identity-adapter", "w/o identity adapter", {"method": "textual-inversion"}, {}),
        _ablation("no-motion-adapter", "w/o motion adapter", {}, None, ("joint",)),
        _ablation("no-appearance-guidance", "w/o appearance guidance", {}, {"appearance_guidance": False}),
        _ablation("identity-attn1", "identity adapter in self-attention", {"identity_sites": ["attn1"]}, {}),
        _ablation("identity-ff", "identity adapter in FFN", {"identity_sites": ["ff"]}, {}),
        _ablation("motion-attn1", "motion adapter in attn1 only", {}, {"motion_sites": ["attn1"]}),
        _ablation("motion-ff", "motion adapter in FFN only", {}, {"motion_sites": ["ff"]}),
        _ablation("serial", "serial adapters", {"placement": "serial"}, {"placement": "serial"}),
    ]
    return {e.name: e for e in entries}


def builtin_methods() -> dict[str, Entry]:
    """``base`` (no customization) and every method of :data:`dreamvideo.baselines.METHODS`."""
    from dreamvideo.baselines import METHODS

    entries = {"base": Entry("base", "base model", "base", None, None, CASES)}
    for name, m in METHODS.items():
        s = Part(name) if m.subject_ref else None
        mo = Part(name) if m.motion_ref else None
        entries[name] = Entry(name, name, "method", s, mo, _cases(s, mo))
    return entries


# ----------------------------------------------------------------------------- configuration

DEFAULT_TRAINING: dict[str, Any] = {  # toy-model scale (the demo's settings)
    "ti_steps": 200, "ti_lr": 5e-3, "identity_steps": 150, "identity_lr": 1e-3, "subject_batch_size": 4,
    "motion_steps": 250, "motion_lr": 1e-3, "motion_batch_size": 2, "num_frames": 8,
    "subject_caption": "a {token} {word}", "use_masks": True,
}  # fmt: skip
# Per-method learning rates of the one-stage baselines: full fine-tuning far lower than adapters and LoRA. On the toy
# model 1e-4 and 3e-5 (LoRA 1e-3 and 3e-4) were compared; the differences were within the noise of a few videos.
DEFAULT_METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "dreamix": {"subject_lr": 1e-4}, "finetune": {"subject_lr": 1e-4, "motion_lr": 1e-4},
    "animatediff": {"subject_lr": 1e-4, "motion_lr": 1e-3}, "tune-a-video": {"motion_lr": 1e-4},
    "lora": {"subject_lr": 1e-3, "motion_lr": 1e-3, "rank": 4},
}  # fmt: skip
TOY_PROMPTS = {
    "subject": ["a {subject} moves right on blue sky", "a {subject} stays still on yellow sand"],
    "motion": ["a red circle moves on green grass", "a white star moves on dark night"],
    "joint": ["a {subject} moves on blue sky", "a {subject} moves on yellow sand"],
}


@dataclass
class BenchmarkConfig:
    """A benchmark grid (JSON keys of the same names; relative paths are relative to the config file).

    Args:
        base: base model (``"toy"``, a folder or hub id).
        clip: CLIP for the metrics: ``"toy"``, a folder, or ``{"model", "tokenizer", "image_processor"}``.
        oracle: add the toy world's oracle metrics (default: when the base is the toy model).
        subjects: ``[{"name"}]`` for a toy subject (``NOVEL_SUBJECTS``) or ``{"name", "images", "class_word"}``.
        motions: ``[{"name"}]`` for a toy motion (``NOVEL_MOTIONS``) or ``{"name", "videos"}``.
        prompts: per case a list of prompts; ``{subject}`` becomes the learned subject's words ("<sks> square").
        seeds: each seed trains every entry and samples every prompt once; tables give mean ± std over seeds.
        methods: entries of :func:`builtin_methods` to run (default all; ``"base"`` is always included).
        ablations: keys of :func:`builtin_ablations` to run.
        training: step counts, learning rates and batch sizes (see ``DEFAULT_TRAINING``). One-stage subject
            baselines get ``ti_steps + identity_steps`` steps, motion baselines ``motion_steps``.
        method_settings: per method ``subject_lr``, ``motion_lr``, ``subject_steps``, ``motion_steps``, ``rank``.
        sampling: ``steps``, ``guidance_scale``, ``num_frames``.
        tradeoff: DreamVideo joint videos at ``identity_steps`` x ``motion_steps`` adapter checkpoints (``null``:
            off; default: half and all of each stage's steps).
        analysis: ``{"steps", "lr"}`` of the weight-change analysis, or ``null``.
    """

    base: str = "toy"
    clip: str | dict[str, str] = "toy"
    oracle: bool | None = None
    subjects: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "totem"}])
    motions: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "pendulum"}])
    prompts: dict[str, list[str]] = field(default_factory=lambda: copy.deepcopy(TOY_PROMPTS))
    seeds: list[int] = field(default_factory=lambda: [0])
    methods: list[str] | None = None
    ablations: list[str] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    method_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)
    tradeoff: dict[str, list[int]] | None = field(default_factory=dict)
    analysis: dict[str, Any] | None = None
    root: Path = Path(".")

    def __post_init__(self) -> None:
        self.training = DEFAULT_TRAINING | self.training
        self.method_settings = {k: DEFAULT_METHOD_SETTINGS.get(k, {}) | self.method_settings.get(k, {})
                                for k in set(DEFAULT_METHOD_SETTINGS) | set(self.method_settings)}  # fmt: skip
        self.sampling = {"steps": 25, "guidance_scale": 9.0, "num_frames": 8} | self.sampling
        if self.oracle is None:
            self.oracle = self.base in ("toy", "dreamvideo-toy")
        if self.tradeoff is not None and not self.tradeoff:
            t = self.training
            self.tradeoff = {"identity_steps": sorted({max(1, t["identity_steps"] // 2), t["identity_steps"]}),
                             "motion_steps": sorted({max(1, t["motion_steps"] // 2), t["motion_steps"]})}

    @classmethod
    def from_dict(cls, data: dict[str, Any], root: Path = Path("."), source: str = "config") -> BenchmarkConfig:
        """Build and validate a config; errors name ``source`` and the offending key."""
        if not isinstance(data, dict):
            raise BenchmarkError(f"{source}: expected a JSON object")
        known = set(cls.__dataclass_fields__) - {"root"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BenchmarkError(f"{source}: unknown key(s) {unknown}; known: {sorted(known)}")
        config = cls(**data, root=root)
        config.validate(source)
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> BenchmarkConfig:
        path = Path(path)
        return cls.from_dict(read_json(path), path.parent, str(path))

    def validate(self, source: str) -> None:
        from dreamvideo.toy import world

        methods, ablations = builtin_methods(), builtin_ablations()
        for name in self.methods or []:
            if name not in methods:
                raise BenchmarkError(f"{source}: methods: unknown {name!r}; choose from {list(methods)}")
        for name in self.ablations:
            if name not in ablations:
                raise BenchmarkError(f"{source}: ablations: unknown {name!r}; choose from {list(ablations)}")
        if not self.seeds or not all(isinstance(s, int) for s in self.seeds):
            raise BenchmarkError(f"{source}: seeds must be a non-empty list of integers")
        for key, items, toy, path_key in (("subjects", self.subjects, world.NOVEL_SUBJECTS, "images"),
                                          ("motions", self.motions, world.NOVEL_MOTIONS, "videos")):  # fmt: skip
            if not items:
                raise BenchmarkError(f"{source}: {key} must not be empty")
            for item in items:
                name = item.get("name") if isinstance(item, dict) else None
                if not name:
                    raise BenchmarkError(f"{source}: every entry of {key} needs a 'name'")
                if path_key in item:
                    folder = self.root / item[path_key]
                    if not folder.exists():
                        raise BenchmarkError(f"{source}: {key} {name!r}: {folder} not found")
                    if key == "subjects" and not item.get("class_word"):
                        raise BenchmarkError(f"{source}: subject {name!r} with images needs a 'class_word'")
                elif name not in toy:
                    raise BenchmarkError(f"{source}: {key} {name!r} is not a toy {key[:-1]} ({list(toy)}); "
                                         f"give '{path_key}' for your own data")  # fmt: skip
        for case in CASES:
            if case not in self.prompts or not self.prompts[case]:
                raise BenchmarkError(f"{source}: prompts needs a non-empty list for '{case}'")

    def entries(self) -> list[Entry]:
        methods, ablations = builtin_methods(), builtin_ablations()
        names = self.methods if self.methods is not None else list(methods)
        names = ["base"] + [n for n in names if n != "base"]  # the plain base model is always the reference row
        return [methods[n] for n in names] + [ablations[n] for n in self.ablations]


def quick_config() -> BenchmarkConfig:
    """``--quick``: every method and ablation on one toy subject and motion, one prompt per case, one seed, short
    training: a smoke run of the whole grid (21 minutes measured on 2 shared CPU cores with ``--threads 1``)."""
    return BenchmarkConfig(
        prompts={case: prompts[:1] for case, prompts in TOY_PROMPTS.items()},
        seeds=[0],
        ablations=list(builtin_ablations()),
        training={"ti_steps": 100, "identity_steps": 60, "motion_steps": 100},
        sampling={"steps": 15},
        analysis={"steps": 30, "lr": 1e-4},
    )


def full_config() -> BenchmarkConfig:
    """``--full``: every method and ablation, every toy subject and novel motion, all toy prompts, three seeds."""
    from dreamvideo.toy import world

    return BenchmarkConfig(
        subjects=[{"name": n} for n in world.NOVEL_SUBJECTS],
        motions=[{"name": n} for n in world.NOVEL_MOTIONS],
        seeds=[0, 1, 2],
        ablations=list(builtin_ablations()),
        analysis={"steps": 200, "lr": 1e-4},
    )


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

    def __init__(self, config: BenchmarkConfig, out: str | Path, device: str | None = None,
                 progress: bool = True) -> None:  # fmt: skip
        self.config, self.out, self.progress = config, Path(out), progress
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.stats = {"trained": 0, "training_skipped": 0, "generated": 0, "generation_skipped": 0}
        self._clip = None
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
        return folder, world.NOVEL_SUBJECTS[item["name"]].class_word

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

        return StageConfig(steps=steps, lr=lr, batch_size=batch, seed=seed, checkpoint_every=max(1, steps // 2))

    def _subject_spec(self, part: Part, class_word: str, seed: int) -> tuple[Any, Any, dict]:
        from dreamvideo import adapters as ad
        from dreamvideo.stages import SubjectSettings

        t, ms = self.config.training, self.config.method_settings.get(part.method, {})
        settings = SubjectSettings(
            token="<sks>", init_word=class_word, caption=t["subject_caption"], use_masks=t["use_masks"],
            textual_inversion=self._stage(t["ti_steps"], t["ti_lr"], t["subject_batch_size"], seed),
            identity=self._stage(t["identity_steps"], t["identity_lr"], t["subject_batch_size"], seed),
            identity_adapter=ad.identity_adapter_config(sites=tuple(part.flag("identity_sites", ["attn2"])),
                                                        placement=part.flag("placement", "parallel")),
            train_token=part.flag("train_token", True),
        )  # fmt: skip
        steps = ms.get("subject_steps", t["ti_steps"] + t["identity_steps"])
        stage = self._stage(steps, ms.get("subject_lr", t["identity_lr"]), t["subject_batch_size"], seed)
        options = {"rank": ms["rank"]} if part.method == "lora" and "rank" in ms else {}
        return settings, stage, options

    def _motion_spec(self, part: Part, seed: int, condition_dim: int | None) -> tuple[Any, dict]:
        from dreamvideo import adapters as ad
        from dreamvideo.stages import MotionSettings

        t, ms = self.config.training, self.config.method_settings.get(part.method, {})
        guidance = part.flag("appearance_guidance", True) and part.method == "dreamvideo"
        stage = self._stage(ms.get("motion_steps", t["motion_steps"]), ms.get("motion_lr", t["motion_lr"]),
                            t["motion_batch_size"], seed)  # fmt: skip
        settings = MotionSettings(
            num_frames=t["num_frames"], stage=stage, appearance_guidance=guidance,
            motion_adapter=ad.motion_adapter_config(condition_dim if guidance else None,
                                                    sites=tuple(part.flag("motion_sites", ["attn1", "attn2", "ff"])),
                                                    placement=part.flag("placement", "parallel")),
        )  # fmt: skip
        options = {"rank": ms["rank"]} if part.method == "lora" and "rank" in ms else {}
        return settings, options

    def _job(self, kind: str, part: Part, item: dict[str, Any], seed: int) -> dict[str, Any]:
        """Where one subject/motion of the grid is trained, and with what (nothing is run here)."""
        from dreamvideo.pipeline import MOTION_FILE, SUBJECT_FILE

        if kind == "subject":
            data, class_word = self._subject_data(item)
            settings, stage, options = self._subject_spec(part, class_word, seed)
            spec = {"settings": settings, "stage": stage}
        else:
            data, stage = self._motion_data(item), None
            settings, options = self._motion_spec(part, seed, None)
            spec = {"settings": settings}
        # The motion spec is hashed without the base's condition dim (known only once the base is loaded).
        key = _hash({"kind": kind, "method": part.method, "flags": part.flags, "data": self._rel(data),
                     "spec": spec, "options": options})  # fmt: skip
        ti_key = None
        if kind == "subject" and part.method in ("dreamvideo", "textual-inversion") and settings.train_token:
            ti = settings.textual_inversion  # DreamVideo variants share their (identical) textual inversion run
            ti_key = _hash({"data": self._rel(data), "ti": ti, "token": settings.token, "word": settings.init_word,
                            "caption": settings.caption, "masks": settings.use_masks})  # fmt: skip
        return {"kind": kind, "part": part, "item": item, "seed": seed, "data": data, "settings": settings,
                "stage": stage, "options": options, "ti_key": ti_key,
                "marker": SUBJECT_FILE if kind == "subject" else MOTION_FILE,
                "folder": self.out / "train" / kind / item["name"] / f"{part.method}-{key}-seed{seed}"}  # fmt: skip

    def _train(self, job: dict[str, Any]) -> None:
        """Train one job unless its folder already holds the finished result."""
        from dreamvideo import baselines

        kind, part, item, seed, folder = job["kind"], job["part"], job["item"], job["seed"], job["folder"]
        if (folder / job["marker"]).is_file():
            self.stats["training_skipped"] += 1
        else:
            if job["ti_key"] in self._ti_runs:
                _reuse_textual_inversion(self._ti_runs[job["ti_key"]], folder)
            pipe = self._pipe()
            flags = f" {dict(part.flags)}" if part.flags else ""
            print(f"[benchmark] training {kind} {item['name']} with {part.method}{flags} (seed {seed}) -> {folder}")
            if kind == "subject":
                baselines.learn_subject(part.method, pipe, job["data"], folder, job["settings"], job["stage"],
                                        resume=True, progress=self.progress, **job["options"])  # fmt: skip
            else:
                settings, options = self._motion_spec(part, seed, pipe.condition_dim)
                baselines.learn_motion(part.method, pipe, job["data"], folder, settings, resume=True,
                                       progress=self.progress, **options)  # fmt: skip
            self.stats["trained"] += 1
        if job["ti_key"] is not None:
            self._ti_runs.setdefault(job["ti_key"], folder)

    @staticmethod
    def _learned(job: dict[str, Any]) -> Learned:
        folder = job["folder"]
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
                for kind, part, items in (("subject", entry.subject, self.config.subjects),
                                          ("motion", entry.motion, self.config.motions)):  # fmt: skip
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
                                cell = self._cell(dv, "joint", seed, s_item, m_item, s, m, cfg.prompts["joint"][0],
                                                  steps=(i, j))  # fmt: skip
                                cell["row"]["group"] = "tradeoff"
                                cells.append(cell)
        return cells

    def _cell(self, entry: Entry, case: str, seed: int, s_item, m_item, s: Learned | None, m: Learned | None,
              template: str, steps: tuple[int, int] | None = None) -> dict[str, Any]:  # fmt: skip
        class_word = self._subject_data(s_item)[1] if s_item else None
        prompt = template.format(subject=s.words if s else class_word)
        t = self.config.training
        # checkpoints at the last step are the final weights: share those cells with the main grid
        s_step = None if steps is None or steps[0] >= t["identity_steps"] else steps[0]
        m_step = None if steps is None or steps[1] >= t["motion_steps"] else steps[1]
        appearance = None
        if case == "joint" and m is not None and s_item is not None and read_json(
            m.folder / "motion.json"
        ).get("appearance_guidance"):
            appearance = self._subject_refs(s_item)["paths"][0]  # section 6: e from a subject image
        load = {"subject": self._rel(s.folder) if s else None, "subject_step": s_step,
                "motion": self._rel(m.folder) if m else None, "motion_step": m_step}  # fmt: skip
        key = _hash({**load, "prompt": prompt, "seed": seed, "sampling": self.config.sampling, "base":
                     self.config.base, "appearance": self._rel(appearance) if appearance else None})  # fmt: skip
        row = {"entry": entry.name, "title": entry.title, "group": entry.group, "case": case, "seed": seed,
               "subject": s_item["name"] if s_item else None, "motion": m_item["name"] if m_item else None,
               "template": template, "prompt": prompt, "cell": f"videos/{key}"}  # fmt: skip
        if steps is not None:
            row["identity_step"], row["motion_step"] = steps
        return {"key": key, "load": load, "appearance": appearance, "row": row, "class_word": class_word,
                "token": s.token if s else None, "s_item": s_item, "m_item": m_item}  # fmt: skip

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
                    root / clip["model"], tokenizer=root / clip["tokenizer"] if clip.get("tokenizer") else None,
                    image_processor=root / clip["image_processor"] if clip.get("image_processor") else None,
                    device=self.device)  # fmt: skip
            else:
                self._clip = ClipScorer.from_pretrained(clip if clip == "toy" else self.config.root / clip,
                                                        device=self.device)  # fmt: skip
        return self._clip

    def _score(self, cell: dict[str, Any], frames: np.ndarray) -> dict[str, float]:
        from dreamvideo.metrics import consecutive_score, image_score, replace_placeholder, text_score
        from dreamvideo.toy import oracle
        from dreamvideo.toy.world import BACKGROUNDS

        clip, row = self._clip_scorer(), cell["row"]
        embeds = clip.image_embeds(frames)
        prompt = replace_placeholder(row["prompt"], cell["token"], cell["class_word"])
        scores = {"clip_t": text_score(embeds, clip.text_embeds(prompt)[0]), "t_cons": consecutive_score(embeds)}
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
                scores["subject_fidelity"] = oracle.subject_fidelity(frames, refs["images"], refs["masks"], masks)
            if motion:
                scores["motion_fidelity"] = oracle.motion_fidelity(frames, self._motion_refs(cell["m_item"]), masks)
            found = [b for b in BACKGROUNDS if b in row["prompt"]]
            if len(found) == 1:
                scores["background_ok"] = float(oracle.background_class(frames) == found[0])
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
            metrics = read_json(self.out / "videos" / cell["key"] / CELL_FILE)["metrics"]
            rows.append(cell["row"] | metrics)
        return rows

    def _generate_group(self, load: dict[str, Any], members: list[dict[str, Any]], done: dict[str, Any]) -> None:
        """Generate and score the cells that share one loaded subject/motion (finished cells are skipped)."""
        from dreamvideo.video_io import write_video

        todo = []
        for cell in members:
            folder = self.out / "videos" / cell["key"]
            if cell["key"] in done or (folder / CELL_FILE).is_file():
                continue
            todo.append(cell)
            done[cell["key"]] = cell
        self.stats["generation_skipped"] += len(members) - len(todo)
        if todo:
            pipe = self._pipe()
            if load["subject"]:
                pipe.load_subject(self.out / load["subject"] if not Path(load["subject"]).is_absolute()
                                  else load["subject"], step=load["subject_step"])  # fmt: skip
            if load["motion"]:
                pipe.load_motion(self.out / load["motion"] if not Path(load["motion"]).is_absolute()
                                 else load["motion"], step=load["motion_step"])  # fmt: skip
            for cell in todo:
                row, folder = cell["row"], self.out / "videos" / cell["key"]
                appearance = None
                if cell["appearance"] is not None:
                    appearance = self._subject_refs(cell["s_item"])["images"][0]
                sampling = self.config.sampling
                frames = pipe(row["prompt"], num_frames=sampling["num_frames"],
                              num_inference_steps=sampling["steps"], guidance_scale=sampling["guidance_scale"],
                              appearance_image=appearance, generator=torch.Generator().manual_seed(row["seed"]),
                              progress=False).frames[0]  # fmt: skip
                scores = self._score(cell, frames)
                folder.mkdir(parents=True, exist_ok=True)
                _save_strip(frames, folder / "frames.png")
                write_video(frames, folder / "video.gif")
                write_json({"load": cell["load"], "prompt": row["prompt"], "seed": row["seed"],
                            "sampling": self.config.sampling, "metrics": scores}, folder / CELL_FILE)  # fmt: skip
                self.stats["generated"] += 1
                print(f"[benchmark] {row['title']} / {row['case']} / seed {row['seed']}: {row['prompt']!r} "
                      + " ".join(f"{k}={v:.3f}" for k, v in scores.items()))  # fmt: skip
            del pipe

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
        if not distributed.is_main_process():
            return None
        with distributed.local_only():
            analysis = self._analysis()
        records = {}
        from dreamvideo.baselines import training_record

        for (entry, kind, item, seed), item_learned in learned.items():
            records[f"{entry}|{kind}|{item}|{seed}"] = training_record(item_learned.folder)
        results = {"config": _config_dict(self.config), "stats": self.stats, "rows": rows, "training": records,
                   "analysis": analysis}  # fmt: skip
        results["summary"] = summarize(rows, records, self.config.entries())
        results["seconds"] = round(time.perf_counter() - started, 1)
        write_json(results, self.out / "results.json")
        with atomic_path(self.out / "results.md") as tmp:
            tmp.write_text(format_markdown(results, self.config.entries()))
        plot_results(results, self.config.entries(), self.out / "plots")
        self._contact_sheets(cells)
        return results

    def _analysis(self) -> dict[str, Any] | None:
        spec = self.config.analysis
        if not spec:
            return None
        folder = self.out / "analysis"
        settings = {"steps": spec["steps"], "lr": spec.get("lr", 1e-4), "subject": self.config.subjects[0]["name"],
                    "motion": self.config.motions[0]["name"]}  # fmt: skip
        key = _hash(settings | {"base": self.config.base})
        done = folder / "weight_change.json"
        if done.is_file() and read_json(done).get("key") == key:
            return read_json(done)
        from dreamvideo.baselines.analysis import analyze_weight_change, plot_weight_change

        images, class_word = self._subject_data(self.config.subjects[0])
        result = analyze_weight_change(self._pipe(), images, self._motion_data(self.config.motions[0]),
                                       spec["steps"], class_word=class_word, lr=settings["lr"],
                                       batch_size=self.config.training["subject_batch_size"],
                                       num_frames=self.config.training["num_frames"], progress=self.progress)
        result["key"] = key
        write_json(result, done)
        plot_weight_change(result, self.out / "plots" / "weight_change.png")
        return result

    def _contact_sheets(self, cells: list[dict[str, Any]]) -> None:
        """One sheet per case: every entry on the first subject, motion, prompt and seed."""
        from dreamvideo.video_io import contact_sheet

        cfg = self.config
        for case in CASES:
            chosen = [c for c in cells if c["row"]["case"] == case and c["row"]["group"] != "tradeoff"
                      and c["row"]["seed"] == cfg.seeds[0] and c["row"]["template"] == cfg.prompts[case][0]
                      and c["row"]["subject"] in (None, cfg.subjects[0]["name"])
                      and c["row"]["motion"] in (None, cfg.motions[0]["name"])]  # fmt: skip
            if not chosen:
                continue
            rows = [(f"{c['row']['title']}: {c['row']['prompt']}", _load_strip(self.out / c["row"]["cell"] /
                                                                              "frames.png", cfg.sampling["num_frames"]))
                    for c in chosen]  # fmt: skip
            contact_sheet(rows, self.out / f"contact_{case}.png", scale=2, label_width=40)


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


# ----------------------------------------------------------------------------- frames on disk


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def _save_strip(frames: np.ndarray, path: Path) -> None:
    """Frames (F, H, W, 3) as one lossless PNG, stacked vertically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate(list(frames), axis=0)).save(tmp, format="PNG")


def _load_strip(path: Path, num_frames: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        strip = np.asarray(img.convert("RGB"))
    return strip.reshape(num_frames, strip.shape[0] // num_frames, *strip.shape[1:])


def _config_dict(config: BenchmarkConfig) -> dict[str, Any]:
    data = {k: getattr(config, k) for k in config.__dataclass_fields__ if k != "root"}
    return json.loads(json.dumps(data, default=str))


# ----------------------------------------------------------------------------- tables


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def _seed_stats(rows: list[dict[str, Any]], keys: list[str]) -> dict[str, dict[str, float]]:
    """Per metric: the mean over each seed's videos, then mean and (population) std over seeds."""
    out = {}
    for k in keys:
        per_seed: dict[int, list[float]] = {}
        for r in rows:
            if isinstance(r.get(k), (int, float)) and math.isfinite(r[k]):
                per_seed.setdefault(r["seed"], []).append(float(r[k]))
        if per_seed:
            out[k] = _mean_std([float(np.mean(v)) for v in per_seed.values()])
    return out


PAIRED_BY = ("subject", "motion", "template", "seed")  # a video and the base model's video of the same prompt


def _vs_base(rows: list[dict[str, Any]], base_rows: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Per metric: the paired difference to the base model's videos (mean, standard error, pairs)."""
    base = {tuple(r.get(k) for k in PAIRED_BY): r for r in base_rows}
    out = {}
    for k in keys:
        pairs = [(float(r[k]), float(b[k])) for r in rows if (b := base.get(tuple(r.get(x) for x in PAIRED_BY)))
                 and all(isinstance(v.get(k), (int, float)) and math.isfinite(v[k]) for v in (r, b))]  # fmt: skip
        if pairs:
            out[k] = paired_difference([p[0] for p in pairs], [p[1] for p in pairs])
    return out


def summarize(rows: list[dict[str, Any]], records: dict[str, dict[str, Any]], entries: list[Entry]) -> dict[str, Any]:
    """Per entry and case: metrics (mean ± std over seeds), trainable parameters and training seconds; plus the
    DreamVideo checkpoint trade-off.

    Args:
        rows: one per video (``entry``, ``case``, ``seed``, ``group`` and metric fields).
        records: :func:`dreamvideo.baselines.training_record` by ``"entry|kind|item|seed"``.
        entries: the benchmark's entries, in table order.
    """
    table = []
    for entry in entries:
        for case in entry.cases:
            sel = [r for r in rows if r["entry"] == entry.name and r["case"] == case and r["group"] != "tradeoff"]
            if not sel:
                continue
            kinds = [k for k, part in (("subject", entry.subject), ("motion", entry.motion))
                     if part is not None and (case == "joint" or case == k)]  # fmt: skip
            params = seconds = 0.0
            for kind in kinds:
                recs = [v for k, v in records.items() if k.startswith(f"{entry.name}|{kind}|")]
                params += float(np.mean([r["trainable_parameters"] for r in recs])) if recs else 0.0
                seconds += float(np.mean([r["training_seconds"] for r in recs])) if recs else 0.0
            keys = [k for k, (_, cases) in METRICS.items() if case in cases]
            base_rows = [r for r in rows if r["entry"] == "base" and r["case"] == case and r["group"] != "tradeoff"]
            table.append({"entry": entry.name, "title": entry.title, "group": entry.group, "case": case,
                          "videos": len(sel), "seeds": len({r["seed"] for r in sel}),
                          "metrics": _seed_stats(sel, keys), "trainable_parameters": int(params),
                          "training_seconds": round(seconds, 1),
                          "vs_base": {} if entry.name == "base" else _vs_base(sel, base_rows, keys)})  # fmt: skip
    trade = [r for r in rows if r["group"] == "tradeoff"]
    points = []
    for i, j in sorted({(r["identity_step"], r["motion_step"]) for r in trade}):
        sel = [r for r in trade if r["identity_step"] == i and r["motion_step"] == j]
        points.append({"identity_step": i, "motion_step": j, "metrics": _seed_stats(sel, list(METRICS))})
    return {"table": table, "tradeoff": points}


def _cell_text(stats: dict[str, float] | None) -> str:
    return "-" if not stats else f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def _case_table(items: list[dict[str, Any]], case: str) -> list[str]:
    keys = [k for k, (_, cases) in METRICS.items() if case in cases]
    head = ["method", *(METRICS[k][0] for k in keys), "trainable params", "train time (s)", "videos"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for it in items:
        cells = [it["title"], *(_cell_text(it["metrics"].get(k)) for k in keys),
                 f"{it['trainable_parameters']:,}", f"{it['training_seconds']:.0f}", str(it["videos"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def format_markdown(results: dict[str, Any], entries: list[Entry]) -> str:
    """The tables of ``results.md``: subject, motion and joint customization, ablations, trade-off, analysis."""
    cfg, summary = results["config"], results["summary"]
    table = summary["table"]
    t = cfg["training"]
    lines = [
        "# DreamVideo benchmark", "",
        f"Base `{cfg['base']}`; subjects {[s['name'] for s in cfg['subjects']]}; motions "
        f"{[m['name'] for m in cfg['motions']]}; seeds {cfg['seeds']}; prompts per case "
        f"{ {c: len(p) for c, p in cfg['prompts'].items()} }; {cfg['sampling']['steps']} DDIM steps, guidance "
        f"{cfg['sampling']['guidance_scale']}, {cfg['sampling']['num_frames']} frames.",
        f"Training: textual inversion {t['ti_steps']} steps, identity adapter {t['identity_steps']}, motion adapter "
        f"{t['motion_steps']}; one-stage subject baselines {t['ti_steps'] + t['identity_steps']} steps, motion "
        f"baselines {t['motion_steps']} (per-method learning rates in results.json).",
        "Metrics: mean ± std over seeds of the per-seed mean over videos. CLIP-T/CLIP-I/T.Cons with the toy CLIP; "
        "subject fidelity, motion fidelity and background accuracy from the toy-world oracle. Train time: "
        "seconds spent in optimisation steps, all stages (subject + motion for joint; shared on a busy CPU, "
        "so compare within one run).", "",
    ]  # fmt: skip
    titles = {"subject": "Subject customization", "motion": "Motion customization", "joint": "Joint customization"}
    for case in CASES:
        items = [it for it in table if it["case"] == case and it["group"] in ("base", "method")]
        if items:
            lines += [f"## {titles[case]}", "", *_case_table(items, case), ""]
    paired = [it for it in table if it.get("vs_base")]
    if paired:
        keys = [k for k in METRICS if any(k in it["vs_base"] for it in paired)]
        lines += ["## Difference to the base model (paired)", "",
                  "Each video minus the base model's video of the same prompt template, subject, motion and seed; "
                  "mean ± standard error over the pairs (positive: higher than the base). A difference within about "
                  "two standard errors of 0 is not evidence either way.", "",
                  "| method | case | " + " | ".join(METRICS[k][0] for k in keys) + " | pairs |",
                  "|---|---|" + "---|" * (len(keys) + 1)]  # fmt: skip
        for it in paired:
            d = it["vs_base"]
            cells = [f"{d[k]['mean']:+.3f} ± {d[k]['stderr']:.3f}" if k in d else "-" for k in keys]
            lines.append(f"| {it['title']} | {it['case']} | " + " | ".join(cells)
                         + f" | {max(v['n'] for v in d.values())} |")  # fmt: skip
        lines.append("")
    ablations = [it for it in table if it["group"] == "ablation"]
    if ablations:
        lines += ["## Ablations of DreamVideo", ""]
        for case in CASES:
            items = [it for it in table if it["case"] == case and it["entry"] == "dreamvideo"]
            items += [it for it in ablations if it["case"] == case]
            if len(items) > len([i for i in items if i["entry"] == "dreamvideo"]):
                lines += [f"### {titles[case]}", "", *_case_table(items, case), ""]
    if summary["tradeoff"]:
        keys = [k for k in ("subject_fidelity", "motion_fidelity", "clip_i", "clip_t") if
                any(k in p["metrics"] for p in summary["tradeoff"])]  # fmt: skip
        lines += ["## Identity vs motion: DreamVideo adapter checkpoints (joint, first joint prompt)", "",
                  "| identity step | motion step | " + " | ".join(METRICS[k][0] for k in keys) + " |",
                  "|---|---|" + "---|" * len(keys)]  # fmt: skip
        for p in summary["tradeoff"]:
            lines.append(f"| {p['identity_step']} | {p['motion_step']} | "
                         + " | ".join(_cell_text(p["metrics"].get(k)) for k in keys) + " |")  # fmt: skip
        lines.append("")
    if results.get("analysis"):
        a = results["analysis"]
        lines += [f"## Model analysis: relative weight change ||W1 - W0|| / ||W0|| after {a['settings']['steps']} "
                  f"full fine-tuning steps (lr {a['settings']['lr']})", "", "| weights | layer type | change |",
                  "|---|---|---|"]  # fmt: skip
        for group, label in (("spatial", "spatial, on the subject"), ("temporal", "temporal, on the motion")):
            for kind, value in a[group].items():
                lines.append(f"| {label} | {kind} | {value:.5f} |")
        lines.append("")
    s = results["stats"]
    lines += [f"Cells: {s['trained']} trained, {s['training_skipped']} reused; {s['generated']} videos generated, "
              f"{s['generation_skipped']} reused. Wall time of this run: {results['seconds']} s.", ""]  # fmt: skip
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots


def plot_results(results: dict[str, Any], entries: list[Entry], folder: str | Path) -> None:
    """Metric bars per case (methods; ablations) and the identity-vs-motion trade-off scatter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = results["summary"]["table"]
    for case in CASES:
        for name, groups in (("metrics", ("base", "method")), ("ablations", ("ablation",))):
            items = [it for it in table if it["case"] == case and it["group"] in groups]
            if name == "ablations" and items:
                items = [it for it in table if it["case"] == case and it["entry"] == "dreamvideo"] + items
            keys = [k for k in METRICS if any(k in it["metrics"] for it in items)]
            if not items or not keys:
                continue
            fig, axes = plt.subplots(1, len(keys), figsize=(2.2 * len(keys) + 1, 0.28 * len(items) + 1.6),
                                     squeeze=False)  # fmt: skip
            for ax, k in zip(axes[0], keys, strict=True):
                values = [it["metrics"].get(k, {"mean": np.nan, "std": 0}) for it in items]
                ax.barh(range(len(items)), [v["mean"] for v in values], xerr=[v["std"] for v in values],
                        color=["tab:red" if it["entry"] == "dreamvideo" else "tab:gray" for it in items])
                ax.set_title(METRICS[k][0], fontsize=8)
                ax.set_yticks(range(len(items)))
                ax.set_yticklabels([it["title"] for it in items] if ax is axes[0][0] else [], fontsize=7)
                ax.invert_yaxis()
                ax.tick_params(axis="x", labelsize=7)
            fig.suptitle(f"{case} customization ({name})", fontsize=9)
            fig.tight_layout()
            fig.savefig(folder / f"{name}_{case}.png", dpi=110)
            plt.close(fig)
    joint = [it for it in table if it["case"] == "joint" and it["group"] in ("base", "method")]
    trade = results["summary"]["tradeoff"]
    x_key, y_key = ("motion_fidelity", "subject_fidelity") if any(
        "motion_fidelity" in it["metrics"] for it in joint) else ("clip_t", "clip_i")  # fmt: skip
    if joint or trade:
        fig, ax = plt.subplots(figsize=(5.5, 4.2))
        for it in joint:
            if x_key in it["metrics"] and y_key in it["metrics"]:
                ax.scatter(it["metrics"][x_key]["mean"], it["metrics"][y_key]["mean"], color="tab:gray", s=18)
                ax.annotate(it["title"], (it["metrics"][x_key]["mean"], it["metrics"][y_key]["mean"]), fontsize=6)
        pts = [p for p in trade if x_key in p["metrics"] and y_key in p["metrics"]]
        if pts:
            ax.scatter([p["metrics"][x_key]["mean"] for p in pts], [p["metrics"][y_key]["mean"] for p in pts],
                       color="tab:red", s=24, label="DreamVideo checkpoints (identity step / motion step)")
            for p in pts:
                ax.annotate(f"{p['identity_step']}/{p['motion_step']}",
                            (p["metrics"][x_key]["mean"], p["metrics"][y_key]["mean"]), fontsize=7, color="tab:red")
            ax.legend(fontsize=7)
        ax.set_xlabel(METRICS[x_key][0])
        ax.set_ylabel(METRICS[y_key][0])
        ax.set_title("joint customization: identity vs motion", fontsize=9)
        fig.tight_layout()
        fig.savefig(folder / "tradeoff.png", dpi=110)
        plt.close(fig)


# ----------------------------------------------------------------------------- CLI


def config_from_args(args: argparse.Namespace) -> tuple[BenchmarkConfig, Path]:
    """The grid and output folder that ``dreamvideo benchmark`` arguments select."""
    if args.config:
        config, default_out = BenchmarkConfig.from_file(args.config), Path(f"benchmark_{Path(args.config).stem}")
    elif args.quick:
        config, default_out = quick_config(), Path("benchmark_quick")
    else:
        config, default_out = full_config(), Path("benchmark_full")
    if args.seeds is not None:  # a piece of the grid: the same folders and cells as in the whole run
        config.seeds = list(args.seeds)
    return config, Path(args.out or default_out)


def cmd_benchmark(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    config, out = config_from_args(args)
    results = Benchmark(config, out, device=args.device, progress=not args.quiet).run()
    if results is None:  # not the main process of a multi-process run
        return 0
    print((out / "results.md").read_text())
    print(f"results.md, results.json, plots/ and contact sheets in {out} ({results['seconds']} s)")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dreamvideo benchmark``."""
    p = subparsers.add_parser("benchmark", help="run DreamVideo, the baselines and the ablations on one grid")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", type=Path, help="JSON grid (see dreamvideo.benchmark.BenchmarkConfig)")
    which.add_argument("--quick", action="store_true", help="small toy grid (~20 min on 2 CPU cores)")
    which.add_argument("--full", action="store_true", help="every toy subject and motion, three seeds")
    p.add_argument("--out", type=Path, help="output folder, reused to resume (default benchmark_<name>)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--seeds", type=int, nargs="+",
                   help="run only these of the grid's seeds (a resumable piece: a later run reuses its cells)")
    p.add_argument("--threads", type=int, help="CPU threads of torch (1 is much faster on a CPU shared with other jobs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_benchmark)
