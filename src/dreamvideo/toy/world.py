"""A procedurally generated toy video world: coloured sprites moving on textured backgrounds.

Every clip is fully described by a :class:`ClipSpec` and re-rendered exactly from it (pure numpy, ~2 ms a clip).
The vocabulary (colours, shapes, patterns, backgrounds, motions) is what the toy text-to-video model is
pretrained on; ``NOVEL_SUBJECTS`` and ``NOVEL_MOTIONS`` are never shown in pretraining and serve as the
customization targets (a subject from a few still images, a motion from a few videos).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from dreamvideo.fileio import DreamVideoError

IMAGE_SIZE = 64
NUM_FRAMES = 8

# Saturated or very light sprite colours, each >= ~90 RGB units away from every background mean colour.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (50, 215, 60),
    "blue": (40, 80, 235),
    "yellow": (245, 225, 40),
    "purple": (150, 55, 200),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "pink": (255, 120, 190),
}
SHAPES: list[str] = ["circle", "square", "triangle", "star", "diamond", "cross"]
PATTERNS: list[str] = ["plain", "striped", "dotted"]
# Mean colour of each background; the texture varies around it by a few tens of RGB units at most.
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "green grass": (70, 125, 50),
    "blue sky": (140, 180, 225),
    "yellow sand": (205, 185, 135),
    "gray road": (115, 115, 120),
    "dark night": (25, 30, 60),
}
BACKGROUNDS: list[str] = list(BACKGROUND_COLORS)
MOTIONS: list[str] = [
    "moves left",
    "moves right",
    "moves up",
    "moves down",
    "bounces",
    "circles",
    "zigzags",
    "shakes",
    "grows",
    "shrinks",
    "stays still",
]
NOVEL_MOTIONS: list[str] = ["figure-eight", "spiral", "pendulum", "hop-then-slide"]
# Held out like the novel motions, but kept out of every reported grid: hyper-parameters are chosen on it.
VALIDATION_MOTIONS: list[str] = ["leap"]
# Verb used in captions of videos showing a novel motion (its name is not in the model's vocabulary).
GENERIC_MOTION_WORD = "moves"


class WorldError(DreamVideoError):
    """An unknown word or subject name was given to the toy world."""


@dataclass(frozen=True)
class Sprite:
    """A single vocabulary sprite: "a red striped star"."""

    shape: str
    color: str
    pattern: str = "plain"


@dataclass(frozen=True)
class Part:
    """One part of a composite sprite; offset and scale are in units of the sprite radius."""

    shape: str
    color: str
    pattern: str = "plain"
    offset: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0


@dataclass(frozen=True)
class CompositeSprite:
    """A novel subject made of several parts; ``class_word`` is one vocabulary word to initialise its token."""

    parts: tuple[Part, ...]
    class_word: str


NOVEL_SUBJECTS: dict[str, CompositeSprite] = {
    "totem": CompositeSprite(
        (
            Part("square", "green", "striped", (0.0, 0.45), 0.55),
            Part("triangle", "red", "plain", (0.0, -0.45), 0.55),
        ),
        class_word="square",
    ),
    "eye": CompositeSprite(
        (Part("diamond", "blue", "plain"), Part("circle", "yellow", "plain", (0.0, 0.0), 0.42)),
        class_word="diamond",
    ),
    "badge": CompositeSprite(
        (Part("cross", "purple", "plain"), Part("circle", "orange", "dotted", (0.0, 0.0), 0.5)),
        class_word="cross",
    ),
}
# Held out like the novel subjects, but kept out of every reported grid: hyper-parameters are chosen on it.
VALIDATION_SUBJECTS: dict[str, CompositeSprite] = {
    "lantern": CompositeSprite(
        (
            Part("circle", "orange", "plain", (0.0, -0.3), 0.6),
            Part("square", "white", "dotted", (0.0, 0.45), 0.45),
        ),
        class_word="circle",
    ),
}
CUSTOM_SUBJECTS: dict[str, CompositeSprite] = NOVEL_SUBJECTS | VALIDATION_SUBJECTS
CUSTOM_MOTIONS: list[str] = NOVEL_MOTIONS + VALIDATION_MOTIONS


@dataclass
class ClipSpec:
    """Everything needed to re-render a clip exactly. Pixel quantities refer to a 64x64 frame.

    Args:
        sprite: the subject.
        background: one of ``BACKGROUNDS``.
        motion: one of ``MOTIONS`` or ``NOVEL_MOTIONS``.
        anchor: (x, y) reference point of the trajectory in pixels.
        size: sprite radius in pixels at scale 1.
        amplitude: motion extent in pixels.
        phase: start phase in [0, 1) of periodic motions (circles, shakes).
        texture_seed: seed of the background texture.
    """

    sprite: Sprite | CompositeSprite
    background: str
    motion: str
    anchor: tuple[float, float] = (32.0, 32.0)
    size: float = 10.0
    amplitude: float = 12.0
    phase: float = 0.0
    texture_seed: int = 0


@dataclass
class RenderedClip:
    """frames (F,H,W,3) uint8, masks (F,H,W) bool, centers (F,2) sprite centre (x, y), scales (F,) radius px."""

    frames: np.ndarray
    masks: np.ndarray
    centers: np.ndarray
    scales: np.ndarray


# ----------------------------------------------------------------------------- motions


def trajectory(motion: str, num_frames: int = NUM_FRAMES, amplitude: float = 12.0, phase: float = 0.0):
    """Offsets of the sprite centre from the anchor and its scale factor at each frame.

    Args:
        motion: a vocabulary or novel motion.
        num_frames: number of frames.
        amplitude: motion extent in pixels.
        phase: start phase in [0, 1) of periodic motions.

    Returns:
        ``(offsets (F,2) float, scale (F,) float)``; image y grows downwards.
    """
    t = np.linspace(0.0, 1.0, num_frames)  # clip time, both ends included
    tau = np.arange(num_frames) / num_frames  # one period without repeating the first frame
    alt = (-1.0) ** np.arange(num_frames)
    a, zero, one = amplitude, np.zeros(num_frames), np.ones(num_frames)
    scale = one
    if motion == "moves left":
        x, y = a * (1 - 2 * t), zero
    elif motion == "moves right":
        x, y = a * (2 * t - 1), zero
    elif motion == "moves up":
        x, y = zero, a * (1 - 2 * t)
    elif motion == "moves down":
        x, y = zero, a * (2 * t - 1)
    elif motion == "bounces":  # two bounces off an invisible floor
        x, y = zero, -1.5 * a * np.abs(np.sin(2 * np.pi * tau))
    elif motion == "circles":
        angle = 2 * np.pi * (tau + phase)
        x, y = a * np.cos(angle), a * np.sin(angle)
    elif motion == "zigzags":  # drifts right while flipping up and down every frame
        x, y = a * (2 * t - 1), 0.5 * a * alt
    elif motion == "shakes":  # left-right jitter in place
        x, y = 0.4 * a * alt * (1 if phase < 0.5 else -1), zero
    elif motion == "grows":
        x, y, scale = zero, zero, np.exp(np.linspace(np.log(0.6), np.log(1.5), num_frames))
    elif motion == "shrinks":
        x, y, scale = zero, zero, np.exp(np.linspace(np.log(1.5), np.log(0.6), num_frames))
    elif motion == "stays still":
        x, y = zero, zero
    elif motion == "figure-eight":
        x, y = a * np.sin(2 * np.pi * tau), 0.6 * a * np.sin(4 * np.pi * tau)
    elif motion == "spiral":  # one and a quarter turns with a growing radius
        radius, angle = a * (0.15 + 0.85 * t), 2.5 * np.pi * t
        x, y = radius * np.cos(angle), radius * np.sin(angle)
    elif motion == "pendulum":  # swings right -> left -> right along an arc hanging from a pivot above
        length, theta = 1.6 * a, 0.9 * np.cos(2 * np.pi * tau)
        x, y = length * np.sin(theta), length * np.cos(theta)
    elif motion == "leap":  # one arc from left to right, like a jump over an obstacle
        x, y = a * (2 * t - 1), -1.5 * a * np.sin(np.pi * t)
    elif motion == "hop-then-slide":  # a hop in place during the first half, then a slide right
        hop = t < 0.5
        x = np.where(hop, 0.0, 2 * a * (t - 0.5) / 0.5)
        y = np.where(hop, -1.5 * a * np.sin(2 * np.pi * t), 0.0)
    else:
        raise WorldError(f"unknown motion {motion!r}; choose from {MOTIONS + CUSTOM_MOTIONS}")
    return np.stack([x, y], axis=1).astype(np.float64), np.asarray(scale, dtype=np.float64)


def fit_anchor(
    rng: np.random.Generator,
    motion: str,
    size: float,
    amplitude: float,
    phase: float = 0.0,
    jitter: float | None = None,
):
    """Pick an anchor (and if needed a smaller amplitude) keeping the sprite inside the frame at all times.

    Args:
        rng: random generator.
        motion, size, amplitude, phase: as in :class:`ClipSpec`.
        jitter: ``None``: anywhere the whole path fits; else the path centred in the frame, up to +-``jitter``
            pixels on each axis (so that a motion word also says where the sprite is in each frame).

    Returns:
        ``(anchor (x, y), amplitude)``.
    """
    margin = 1.0
    while True:
        offsets, scale = trajectory(motion, NUM_FRAMES, amplitude, phase)
        reach = size * scale[:, None]
        low = np.max(reach - offsets, axis=0) + margin
        high = np.min(IMAGE_SIZE - reach - offsets, axis=0) - margin
        if np.all(low <= high):
            if jitter is None:
                return (float(rng.uniform(low[0], high[0])), float(rng.uniform(low[1], high[1]))), amplitude
            anchor = np.clip((low + high) / 2 + rng.uniform(-jitter, jitter, 2), low, high)
            return (float(anchor[0]), float(anchor[1])), amplitude
        amplitude *= 0.85


# ----------------------------------------------------------------------------- drawing


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled random grid: a smooth (size, size) field with values roughly in [-1, 1]."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1))
    pos = np.linspace(0, cells, size)
    i = np.minimum(pos.astype(int), cells - 1)
    f = pos - i
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f) + rows[:, i + 1] * f


def render_background(name: str, seed: int = 0, size: int = IMAGE_SIZE) -> np.ndarray:
    """A textured background image (size, size, 3) uint8 whose mean colour is ``BACKGROUND_COLORS[name]``.

    Args:
        name: one of ``BACKGROUNDS``.
        seed: texture seed.
        size: image side in pixels.
    """
    if name not in BACKGROUND_COLORS:
        raise WorldError(f"unknown background {name!r}; choose from {BACKGROUNDS}")
    rng = np.random.default_rng(seed)
    base = np.array(BACKGROUND_COLORS[name], dtype=np.float64)
    yy, xx = np.mgrid[0:size, 0:size] * (IMAGE_SIZE / size)
    if name == "green grass":  # short vertical blades plus large darker patches
        blades = np.repeat(rng.normal(0, 1, (size // 4 + 1, size)), 4, axis=0)[:size]
        light = 1 + 0.10 * blades + 0.08 * _smooth_noise(rng, size, 4)
        img = base * light[..., None]
    elif name == "blue sky":  # soft white clouds
        cloud = np.clip(_smooth_noise(rng, size, 3), 0, 1)[..., None] * 0.3
        img = base * (1 - cloud) + np.array([235, 240, 250]) * cloud
    elif name == "yellow sand":  # diagonal ripples and fine grain
        ripple = np.sin((xx + 0.5 * yy) / 2.5 + rng.uniform(0, 2 * np.pi))
        img = base + (7 * ripple + rng.normal(0, 5, (size, size)))[..., None]
    elif name == "gray road":  # asphalt grain and stains
        img = base + (rng.normal(0, 6, (size, size)) + 6 * _smooth_noise(rng, size, 5))[..., None]
    else:  # dark night: vertical gradient and a few faint stars
        img = base + (yy / IMAGE_SIZE - 0.5)[..., None] * np.array([10, 10, 20])
        stars = rng.random((size, size)) < 0.006
        img[stars] += 30
    return np.clip(img - img.mean(axis=(0, 1)) + base, 0, 255).astype(np.uint8)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test for a shape of radius 1 centred at 0, in sprite units (u right, v down)."""
    if shape == "circle":
        return u**2 + v**2 <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if shape == "triangle":  # apex up
        return (v <= 0.75) & (np.abs(u) <= (v + 1.0) * 0.6)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.05
    if shape == "cross":
        return (np.maximum(np.abs(u), np.abs(v)) <= 1.0) & (np.minimum(np.abs(u), np.abs(v)) <= 0.33)
    if shape == "star":  # five points, radius between 0.45 and 1 as a triangle wave of the angle
        angle = (np.arctan2(u, -v) / (2 * np.pi) * 5) % 1.0
        return np.hypot(u, v) <= 0.45 + 0.6 * np.abs(2 * angle - 1)
    raise WorldError(f"unknown shape {shape!r}; choose from {SHAPES}")


def _pattern_mask(pattern: str, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Where the secondary colour goes, from pixel offsets to the sprite centre (the pattern moves with it)."""
    if pattern == "plain":
        return np.zeros(px.shape, dtype=bool)
    if pattern == "striped":
        return (px + py) % 4.0 < 1.0
    if pattern == "dotted":
        return ((px % 5.0) - 2.5) ** 2 + ((py % 5.0) - 2.5) ** 2 < 1.3**2
    raise WorldError(f"unknown pattern {pattern!r}; choose from {PATTERNS}")


def _secondary_color(color: str) -> np.ndarray:
    """Pattern colour: white on dark colours, near-black on light ones."""
    r, g, b = COLORS[color]
    return np.array(
        [250, 250, 250] if 0.299 * r + 0.587 * g + 0.114 * b < 150 else [20, 20, 20], dtype=np.uint8
    )


def _parts(sprite: Sprite | CompositeSprite) -> tuple[Part, ...]:
    if isinstance(sprite, CompositeSprite):
        return sprite.parts
    return (Part(sprite.shape, sprite.color, sprite.pattern),)


def render_clip(spec: ClipSpec, num_frames: int = NUM_FRAMES, size: int = IMAGE_SIZE) -> RenderedClip:
    """Render a clip exactly from its spec.

    Args:
        spec: the clip to draw.
        num_frames: number of frames.
        size: frame side in pixels (pixel quantities of the spec are given for 64 and rescaled).

    Returns:
        :class:`RenderedClip` with frames, exact foreground masks, sprite centres and radii.
    """
    for part in _parts(spec.sprite):
        if part.color not in COLORS:
            raise WorldError(f"unknown colour {part.color!r}; choose from {list(COLORS)}")
    k = size / IMAGE_SIZE
    offsets, scale = trajectory(spec.motion, num_frames, spec.amplitude, spec.phase)
    centers = (np.asarray(spec.anchor) + offsets) * k
    radii = spec.size * scale * k
    frames = np.repeat(render_background(spec.background, spec.texture_seed, size)[None], num_frames, axis=0)
    masks = np.zeros((num_frames, size, size), dtype=bool)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    px = xx[None] - centers[:, 0, None, None]  # (F,H,W) pixel offsets to the sprite centre
    py = yy[None] - centers[:, 1, None, None]
    r = radii[:, None, None]
    for part in _parts(spec.sprite):
        pr = r * part.scale
        inside = _shape_mask(
            part.shape, (px / r - part.offset[0]) / part.scale, (py / r - part.offset[1]) / part.scale
        )
        # pattern coordinates in 64x64 pixels from the part centre, so the pattern moves (not scales) with it
        stripes = _pattern_mask(part.pattern, (px - part.offset[0] * r) / k, (py - part.offset[1] * r) / k)
        stripes &= pr >= 3 * k
        frames[inside] = COLORS[part.color]
        frames[inside & stripes] = _secondary_color(part.color)
        masks |= inside
    return RenderedClip(frames=frames, masks=masks, centers=centers, scales=radii)


# ----------------------------------------------------------------------------- captions


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption(spec: ClipSpec, subject_word: str | None = None, motion_word: str | None = None) -> str:
    """Describe a clip with vocabulary words, e.g. "a red striped star bounces on green grass".

    Args:
        spec: the clip.
        subject_word: words naming the subject instead of its description (e.g. "<sks> star"); composite
            sprites default to their class word.
        motion_word: verb phrase instead of the motion; novel motions default to "moves".
    """
    if subject_word is None:
        sprite = spec.sprite
        if isinstance(sprite, CompositeSprite):
            subject_word = sprite.class_word
        else:
            pattern = "" if sprite.pattern == "plain" else f"{sprite.pattern} "
            subject_word = f"{sprite.color} {pattern}{sprite.shape}"
    if motion_word is None:
        motion_word = spec.motion if spec.motion in MOTIONS else GENERIC_MOTION_WORD
    return f"{_with_article(subject_word)} {motion_word} on {spec.background}"


def foreground_image(prompt: str, size: int = IMAGE_SIZE) -> np.ndarray | None:
    """A still image of the vocabulary sprite a prompt names, centred on the prompt's background: the "reference
    image of the desired foreground" a motion-only video's appearance guidance takes (section 6).

    "a red striped circle moves on green grass" -> a red striped circle on green grass. None when the prompt names
    no vocabulary sprite (colour, optional pattern, shape after the article) or no background.

    Args:
        prompt: a toy-world prompt.
        size: image side in pixels.
    """
    words = prompt.lower().split()
    background = next((b for b in BACKGROUNDS if f" on {b}" in prompt.lower()), None)
    if background is None or len(words) < 3 or words[0] not in ("a", "an"):
        return None
    color, rest = words[1], words[2:]
    pattern = rest.pop(0) if rest and rest[0] in PATTERNS else "plain"
    if color not in COLORS or not rest or rest[0] not in SHAPES:
        return None
    spec = ClipSpec(
        Sprite(rest[0], color, pattern), background, "stays still", (size / 2, size / 2), 12.0 * size / 64
    )
    return render_clip(spec, num_frames=1, size=size).frames[0]


# ----------------------------------------------------------------------------- pretraining data


def is_held_out(spec: ClipSpec) -> bool:
    """True for the (colour, shape, motion) triples kept out of pretraining: a fixed hashed 1/8 of them.

    Every single word still appears in pretraining; only these combinations (with any pattern and background)
    do not. Composite sprites and novel motions are not vocabulary combinations and return False.

    Args:
        spec: the clip.
    """
    sprite = spec.sprite
    if not isinstance(sprite, Sprite) or spec.motion not in MOTIONS:
        return False
    return zlib.crc32(f"{sprite.color}|{sprite.shape}|{spec.motion}".encode()) % 8 == 0


def _random_spec(
    rng: np.random.Generator,
    sprite: Sprite | CompositeSprite,
    background: str,
    motion: str,
    size_range: tuple[float, float] = (8.0, 12.0),
    amplitude_range: tuple[float, float] = (10.0, 16.0),
    phase: float | None = None,
    anchor_jitter: float | None = None,
) -> ClipSpec:
    """A clip with random size, amplitude, phase (unless given), texture and an anchor that fits the frame."""
    size = float(rng.uniform(*size_range))
    phase = float(rng.uniform(0, 1)) if phase is None else phase
    amplitude = float(rng.uniform(*amplitude_range))
    anchor, amplitude = fit_anchor(rng, motion, size, amplitude, phase, anchor_jitter)
    seed = int(rng.integers(2**31))
    return ClipSpec(sprite, background, motion, anchor, size, amplitude, phase, seed)


def _random_pattern(rng: np.random.Generator) -> str:
    return str(rng.choice(PATTERNS, p=[0.5, 0.25, 0.25]))


def sample_pretraining_spec(rng: np.random.Generator, anchor_jitter: float | None = None) -> ClipSpec:
    """A random vocabulary clip with random nuisances, never a held-out combination.

    Args:
        rng: random generator (the only source of randomness).
        anchor_jitter: see :func:`fit_anchor` (``None``: the sprite's path anywhere it fits).
    """
    while True:
        color, shape, motion = (
            str(rng.choice(list(COLORS))),
            str(rng.choice(SHAPES)),
            str(rng.choice(MOTIONS)),
        )
        sprite = Sprite(shape, color, _random_pattern(rng))
        spec = ClipSpec(sprite, str(rng.choice(BACKGROUNDS)), motion)
        if not is_held_out(spec):
            return _random_spec(rng, sprite, spec.background, motion, anchor_jitter=anchor_jitter)


WORD_KINDS = ("motion", "color", "shape", "background")


def swap_word(spec: ClipSpec, kind: str, rng: np.random.Generator) -> ClipSpec:
    """``spec`` with its motion, colour, shape or background (``kind``) replaced by another of the vocabulary.

    The result may be a held-out combination; only its caption is meant to be used.
    """
    if kind == "motion":
        return replace(spec, motion=str(rng.choice([m for m in MOTIONS if m != spec.motion])))
    if kind == "background":
        return replace(spec, background=str(rng.choice([b for b in BACKGROUNDS if b != spec.background])))
    if kind == "shape":
        others = [s for s in SHAPES if s != spec.sprite.shape]
        return replace(spec, sprite=replace(spec.sprite, shape=str(rng.choice(others))))
    if kind == "color":
        others = [c for c in COLORS if c != spec.sprite.color]
        return replace(spec, sprite=replace(spec.sprite, color=str(rng.choice(others))))
    raise WorldError(f"unknown word kind {kind!r}; expected one of {', '.join(WORD_KINDS)}")


def held_out_triples() -> list[tuple[str, str, str]]:
    """All held-out (colour, shape, motion) triples in a fixed order."""
    return [
        (c, s, m)
        for c in COLORS
        for s in SHAPES
        for m in MOTIONS
        if is_held_out(ClipSpec(Sprite(s, c), BACKGROUNDS[0], m))
    ]


def held_out_specs(n: int = 32, seed: int = 0) -> list[ClipSpec]:
    """Clips whose (colour, shape, motion) combination never appears in pretraining, cycling over all of them.

    Args:
        n: number of clips.
        seed: random seed (combination order and nuisances).
    """
    rng = np.random.default_rng(seed)
    triples = held_out_triples()
    order = rng.permutation(len(triples))
    specs = []
    for i in range(n):
        color, shape, motion = triples[order[i % len(triples)]]
        sprite = Sprite(shape, color, _random_pattern(rng))
        specs.append(_random_spec(rng, sprite, str(rng.choice(BACKGROUNDS)), motion))
    return specs


# ----------------------------------------------------------------------------- customization data


def _name_rng(name: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def subject_images(name: str, n: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Still photos of a novel subject at different sizes, positions and backgrounds.

    Args:
        name: a key of ``NOVEL_SUBJECTS`` or ``VALIDATION_SUBJECTS``.
        n: number of images.
        seed: random seed.

    Returns:
        ``[(image (H,W,3) uint8, mask (H,W) bool), ...]``.
    """
    if name not in CUSTOM_SUBJECTS:
        raise WorldError(f"unknown subject {name!r}; choose from {list(CUSTOM_SUBJECTS)}")
    rng = _name_rng(name, seed)
    backgrounds = rng.permutation(BACKGROUNDS)
    out = []
    for i in range(n):
        spec = _random_spec(
            rng,
            CUSTOM_SUBJECTS[name],
            str(backgrounds[i % len(backgrounds)]),
            "stays still",
            size_range=(10.0, 15.0),
        )
        clip = render_clip(spec, num_frames=1)
        out.append((clip.frames[0], clip.masks[0]))
    return out


def motion_specs(name: str, n: int = 3, seed: int = 0) -> list[ClipSpec]:
    """Specs of videos sharing one motion, each with a different vocabulary sprite and background.

    Args:
        name: a motion (normally one of ``NOVEL_MOTIONS`` or ``VALIDATION_MOTIONS``).
        n: number of videos.
        seed: random seed.
    """
    trajectory(name)  # validates the name
    rng = _name_rng(name, seed)
    colors, shapes, backgrounds = (
        rng.permutation(list(COLORS)),
        rng.permutation(SHAPES),
        rng.permutation(BACKGROUNDS),
    )
    specs = []
    for i in range(n):
        sprite = Sprite(str(shapes[i % len(shapes)]), str(colors[i % len(colors)]), "plain")
        background = str(backgrounds[i % len(backgrounds)])
        if np.linalg.norm(np.subtract(COLORS[sprite.color], BACKGROUND_COLORS[background])) < 100:
            background = str(backgrounds[(i + 1) % len(backgrounds)])  # keep the sprite easy to see
        specs.append(_random_spec(rng, sprite, background, name, (7.0, 10.0), (11.0, 14.0), phase=0.0))
    return specs


def motion_videos(name: str, n: int = 3, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    """Videos of one motion, each with a different vocabulary sprite and background (only the motion is shared).

    Args:
        name: a motion (normally one of ``NOVEL_MOTIONS`` or ``VALIDATION_MOTIONS``).
        n: number of videos.
        seed: random seed.

    Returns:
        ``[(frames (F,H,W,3) uint8, caption), ...]``; captions use vocabulary words only ("... moves on ...").
    """
    return [(render_clip(spec).frames, caption(spec)) for spec in motion_specs(name, n, seed)]


def write_subject_folder(name: str, folder: str | Path, n: int = 5, seed: int = 0) -> Path:
    """Write ``folder/images/NN.png`` and ``folder/masks/NN.png`` (8-bit L, 255 = subject).

    Args:
        name: a key of ``NOVEL_SUBJECTS`` or ``VALIDATION_SUBJECTS``.
        folder: output folder (created).
        n: number of images.
        seed: random seed.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for i, (image, mask) in enumerate(subject_images(name, n, seed)):
        Image.fromarray(image).save(folder / "images" / f"{i:02d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(folder / "masks" / f"{i:02d}.png")
    return folder


def write_gif(frames: np.ndarray, path: str | Path, fps: int = 8) -> None:
    """Save frames (F,H,W,3) uint8 as a looping animated GIF with one shared adaptive palette, no dithering.

    GIF writers merge identical consecutive frames into one longer frame, so a clip that stays still reads back
    with fewer frames; every novel motion changes the picture at each frame.

    Args:
        frames: video frames.
        path: output file.
        fps: frames per second.
    """
    strip = Image.fromarray(np.concatenate(list(frames), axis=0))
    palette = strip.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    images[0].save(
        path,
        save_all=True,
        append_images=images[1:],
        duration=int(1000 / fps),
        loop=0,
        optimize=False,
        disposal=1,
    )


def write_motion_folder(name: str, folder: str | Path, n: int = 3, seed: int = 0) -> Path:
    """Write ``folder/NN.gif`` (8 fps) and ``folder/captions.json`` mapping file name -> caption.

    Args:
        name: a motion (normally one of ``NOVEL_MOTIONS`` or ``VALIDATION_MOTIONS``).
        folder: output folder (created).
        n: number of videos.
        seed: random seed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    captions = {}
    for i, (frames, text) in enumerate(motion_videos(name, n, seed)):
        write_gif(frames, folder / f"{i:02d}.gif")
        captions[f"{i:02d}.gif"] = text
    (folder / "captions.json").write_text(json.dumps(captions, indent=2) + "\n")
    return folder
