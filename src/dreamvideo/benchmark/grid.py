"""The benchmark grid: methods and ablations as entries, the JSON config and the ``--quick``/``--full`` presets."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamvideo.fileio import DreamVideoError, read_json

CASES = ("subject", "motion", "joint")
METRICS = {  # key -> (title, cases where it is meaningful)
    "clip_t": ("CLIP-T", CASES),
    "clip_i": ("CLIP-I", ("subject", "joint")),
    "t_cons": ("T.Cons", CASES),
    "subject_fidelity": ("Subject fid.", ("subject", "joint")),
    "motion_fidelity": ("Motion fid.", ("motion", "joint")),
    "background_ok": ("Background acc.", CASES),
    "track_motion_fidelity": ("Track MF", ("motion", "joint")),  # DMT's score on point tracks
    "dynamic_degree": ("Dyn. deg.", CASES),  # VBench: share of videos with large optical flow
}
# How the benchmark scores motion besides the oracle (``dreamvideo.motion_metrics``; "none" turns one off).
DEFAULT_MOTION_METRICS: dict[str, Any] = {
    "tracker": "lk",
    "tracker_weights": None,
    "flow": "farneback",
    "flow_weights": None,
    "grid": 16,
}
CELL_FILE = "cell.json"
ENCODER_ENTRY = "appearance-encoder"


class BenchmarkError(DreamVideoError):
    pass


# ----------------------------------------------------------------------------- entries: methods and ablations


@dataclass(frozen=True)
class Part:
    """How one side of an entry is learned: a method and DreamVideo ablation flags (``train_token``,
    ``identity_sites``, ``motion_sites``, ``placement``, ``appearance_guidance``; ``settings_of``: whose
    ``method_settings`` it trains with, when not its method's)."""

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
    return tuple(
        c for c, ok in (("subject", subject), ("motion", motion), ("joint", subject and motion)) if ok
    )


def _ablation(
    name: str, title: str, subject: dict | None, motion: dict | None, cases: tuple[str, ...] | None = None
) -> Entry:
    """A DreamVideo variant: ``{}`` keeps DreamVideo's side, a dict of flags (or ``"method"``) changes it, ``None``
    drops it. It is evaluated on the cases its changes touch (and always on joint customization)."""
    default = cases or tuple(
        c for c, changed in (("subject", subject), ("motion", motion), ("joint", True)) if changed
    )
    s = (
        Part(subject.pop("method", "dreamvideo"), tuple(sorted(subject.items())))
        if subject is not None
        else None
    )
    m = (
        Part(motion.pop("method", "dreamvideo"), tuple(sorted(motion.items())))
        if motion is not None
        else None
    )
    return Entry(name, title, "ablation", s, m, default)


def builtin_ablations() -> dict[str, Entry]:
    """The paper's ablations of DreamVideo (method.md section 8), by key."""
    entries = [
        _ablation("no-textual-identity", "w/o textual identity", {"train_token": False}, {}),
        # DreamVideo's own textual inversion (its learning rate, the very same run), without the identity adapter
        _ablation(
            "no-identity-adapter",
            "w/o identity adapter",
            {"method": "textual-inversion", "settings_of": "dreamvideo"},
            {},
        ),
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
    """``base`` (no customization) and every registered method (:func:`dreamvideo.methods.names`)."""
    from dreamvideo import methods

    entries = {"base": Entry("base", "base model", "base", None, None, CASES)}
    for name in methods.names():
        s = Part(name) if name in methods.names("subject") else None
        mo = Part(name) if name in methods.names("motion") else None
        entries[name] = Entry(name, name, "method", s, mo, _cases(s, mo))
    # section 9: one encoder trained once per base, any reference image at generation; joint with DreamVideo's motion
    entries[ENCODER_ENTRY] = Entry(
        ENCODER_ENTRY,
        "appearance encoder, zero-shot",
        "method",
        Part(ENCODER_ENTRY),
        Part("dreamvideo"),
        ("subject", "joint"),
    )
    return entries


# ----------------------------------------------------------------------------- configuration

# Learning rates: chosen per method by the same search on the validation subject and motion (lantern, leap), 0.1x,
# 0.3x, 1x, 3x and 10x the pre-search defaults (benchmarks/toy_method_search.py --reference
# docs/benchmark_search/reference.json; results in docs/benchmark_search/).
DEFAULT_TRAINING: dict[
    str, Any
] = {  # toy-model scale; the learning rates here are DreamVideo's (and its ablations')
    "ti_steps": 200,
    "ti_lr": 1.5e-2,
    "identity_steps": 150,
    "identity_lr": 3e-3,
    "subject_batch_size": 4,
    "motion_steps": 250,
    "motion_lr": 1e-3,
    "motion_batch_size": 2,
    "num_frames": 8,
    "subject_caption": "a {token} {word} stays still",  # the photos are still: their true caption
    "use_masks": True,
    "encoder_steps": 2000,
    "encoder_lr": 1e-4,
    "encoder_batch_size": 2,
    "encoder_pairs": None,
}
# The baselines' learning rates from the same search (full fine-tuning far lower than adapters and LoRA).
DEFAULT_METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "textual-inversion": {"ti_lr": 1.5e-3},
    "dreamix": {"subject_lr": 1e-5},
    "finetune": {"subject_lr": 1e-5, "motion_lr": 1e-3},
    "animatediff": {"subject_lr": 1e-5, "motion_lr": 3e-3},
    "tune-a-video": {"motion_lr": 3e-4},
    "lora": {"subject_lr": 3e-4, "motion_lr": 1e-2, "rank": 4},
}
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
        subjects: ``[{"name"}]`` for a toy subject (``NOVEL_SUBJECTS``, ``VALIDATION_SUBJECTS``) or ``{"name", "images", "class_word"}``.
        motions: ``[{"name"}]`` for a toy motion (``NOVEL_MOTIONS``, ``VALIDATION_MOTIONS``) or ``{"name", "videos"}``.
        prompts: per case a list of prompts; ``{subject}`` becomes the learned subject's words ("<sks> square").
        seeds: each seed trains every entry and samples every prompt once; tables give mean ± std over seeds.
        methods: entries of :func:`builtin_methods` to run (default all; ``"base"`` is always included).
        ablations: keys of :func:`builtin_ablations` to run.
        training: step counts, learning rates and batch sizes (see ``DEFAULT_TRAINING``). One-stage subject
            baselines get ``ti_steps + identity_steps`` steps, motion baselines ``motion_steps``.
        method_settings: per method ``subject_lr``, ``motion_lr``, ``subject_steps``, ``motion_steps``, ``rank``;
            ``ti_lr``, ``identity_lr`` for DreamVideo's two subject stages (``dreamvideo``, ``textual-inversion``;
            DreamVideo's ablations use ``dreamvideo``'s, ``no-identity-adapter`` too).
        sampling: ``steps``, ``guidance_scale`` (``None``: the base's default), ``num_frames``.
        tradeoff: DreamVideo joint videos at ``identity_steps`` x ``motion_steps`` adapter checkpoints (``null``:
            off; default: half and all of each stage's steps).
        analysis: ``{"steps", "lr"}`` of the weight-change analysis, or ``null``.
        motion_metrics: track motion fidelity and dynamic degree (``DEFAULT_MOTION_METRICS``: ``tracker``
            ``lk``/``cotracker``/``none``, ``flow`` ``farneback``/``raft``/``none``, their ``*_weights``, ``grid``),
            or ``null`` for neither. One that cannot be loaded here is skipped with a note in ``results.md``.
        motion_references: motion prompt -> image of its foreground, the appearance image of DreamVideo's motion
            adapter in the motion case (section 6); on the toy world a prompt without one gets its sprite rendered
            on its background, elsewhere the zero vector.
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
    motion_metrics: dict[str, Any] | None = field(default_factory=dict)
    motion_references: dict[str, str] = field(default_factory=dict)
    root: Path = Path(".")

    def __post_init__(self) -> None:
        self.training = DEFAULT_TRAINING | self.training
        self.method_settings = {
            k: DEFAULT_METHOD_SETTINGS.get(k, {}) | self.method_settings.get(k, {})
            for k in set(DEFAULT_METHOD_SETTINGS) | set(self.method_settings)
        }
        self.sampling = {"steps": 25, "guidance_scale": None, "num_frames": 8} | self.sampling
        if self.motion_metrics is not None:
            self.motion_metrics = DEFAULT_MOTION_METRICS | self.motion_metrics
        if self.oracle is None:
            self.oracle = self.base in ("toy", "dreamvideo-toy")
        if self.tradeoff is not None and not self.tradeoff:
            t = self.training
            self.tradeoff = {
                "identity_steps": sorted({max(1, t["identity_steps"] // 2), t["identity_steps"]}),
                "motion_steps": sorted({max(1, t["motion_steps"] // 2), t["motion_steps"]}),
            }

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], root: Path = Path("."), source: str = "config"
    ) -> BenchmarkConfig:
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
        for key, items, toy, path_key in (
            ("subjects", self.subjects, world.CUSTOM_SUBJECTS, "images"),
            ("motions", self.motions, world.CUSTOM_MOTIONS, "videos"),
        ):
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
                    raise BenchmarkError(
                        f"{source}: {key} {name!r} is not a toy {key[:-1]} ({list(toy)}); "
                        f"give '{path_key}' for your own data"
                    )
        if self.motion_metrics is not None:
            from dreamvideo.motion_metrics import FLOWS, TRACKERS

            unknown = sorted(set(self.motion_metrics) - set(DEFAULT_MOTION_METRICS))
            if unknown:
                raise BenchmarkError(
                    f"{source}: motion_metrics: unknown key(s) {unknown}; known: {list(DEFAULT_MOTION_METRICS)}"
                )
            for key, choices in (("tracker", TRACKERS), ("flow", FLOWS)):
                if self.motion_metrics[key] not in choices:
                    raise BenchmarkError(
                        f"{source}: motion_metrics: {key} {self.motion_metrics[key]!r}; choose from {choices}"
                    )
            grid = self.motion_metrics["grid"]
            if not isinstance(grid, int) or grid < 2:
                raise BenchmarkError(f"{source}: motion_metrics: grid must be an integer >= 2, got {grid!r}")
        for template, image in self.motion_references.items():
            if template not in self.prompts.get("motion", []):
                raise BenchmarkError(
                    f"{source}: motion_references: {template!r} is not one of prompts['motion']"
                )
            if not (self.root / image).is_file():
                raise BenchmarkError(f"{source}: motion_references: {self.root / image} not found")
        for case in CASES:
            if case not in self.prompts or not self.prompts[case]:
                raise BenchmarkError(f"{source}: prompts needs a non-empty list for '{case}'")

    def entries(self) -> list[Entry]:
        methods, ablations = builtin_methods(), builtin_ablations()
        names = self.methods if self.methods is not None else list(methods)
        names = ["base"] + [
            n for n in names if n != "base"
        ]  # the plain base model is always the reference row
        return [methods[n] for n in names] + [ablations[n] for n in self.ablations]


def quick_config() -> BenchmarkConfig:
    """``--quick``: every method and ablation on one toy subject and motion, one prompt per case, one seed, short
    training: a smoke run of the whole grid (21 minutes measured on 2 shared CPU cores with ``--threads 1``)."""
    return BenchmarkConfig(
        prompts={case: prompts[:1] for case, prompts in TOY_PROMPTS.items()},
        seeds=[0],
        ablations=list(builtin_ablations()),
        training={"ti_steps": 100, "identity_steps": 60, "motion_steps": 100, "encoder_steps": 100},
        sampling={"steps": 15},
        analysis={"steps": 30, "lr": 1e-4},
    )


def full_config() -> BenchmarkConfig:
    """``--full``: every method and ablation, every toy subject and novel motion, all toy prompts, three seeds.

    The appearance encoder (zero-shot, not one of the paper's baselines; 20 minutes of training per seed on a CPU)
    has its own grid, ``docs/benchmark_encoder/grid.json``.
    """
    from dreamvideo.toy import world

    return BenchmarkConfig(
        methods=[name for name in builtin_methods() if name != ENCODER_ENTRY],
        subjects=[{"name": n} for n in world.NOVEL_SUBJECTS],
        motions=[{"name": n} for n in world.NOVEL_MOTIONS],
        seeds=[0, 1, 2],
        ablations=list(builtin_ablations()),
        analysis={"steps": 200, "lr": 1e-4},
    )
