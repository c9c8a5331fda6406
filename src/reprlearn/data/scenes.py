"""Scenes: small generated RGB images of 1-3 coloured shapes, each with truthful captions.

The embedded image-text set (``--data scenes``): it needs no download, draws 4,000 images in
well under a second, and its captions follow a small compositional grammar, so a model that
learns it must bind colour to shape and read relations::

    a small red circle to the left of a blue square.
    two shapes: a green triangle and a yellow ring.
    a large purple cross on a grey background.

Each image gets ``captions_per_image`` different wordings (training samples one per step).
``attributes`` records, per image, ``n_objects`` (1-3) and the ``shape``, ``colour`` and
``size`` of its first object as indices into ``SHAPES``, ``COLOURS`` and ``SIZES``; the first
object is the one the captions' relations start from ("a {first} to the left of a {second}").

Held-out zero-shot tasks (:func:`reprlearn.evaluate.zero_shot.zero_shot_tasks`): the shape, and the colour, of single-object
images, each prompt naming only that one attribute ("a picture of a triangle.").
"""

from __future__ import annotations

import numpy as np

from ..errors import fail
from .imageset import ImageSet
from .pairset import PairSet

SHAPES = ["circle", "square", "triangle", "cross", "ring"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SIZES = ["small", "large"]
_RGB = np.array([(220, 30, 30), (40, 180, 40), (40, 70, 230), (240, 220, 30), (150, 50, 200), (250, 140, 20)],
                dtype=np.float32)
_RADIUS = (0.13, 0.22)  # small, large: radius as a fraction of the image side
BACKGROUNDS = ["black", "grey", "white"]
_BG_RGB = np.array([(20, 20, 20), (128, 128, 128), (235, 235, 235)], dtype=np.float32)
POSITIONS = {"centre": (0.5, 0.5), "top left": (0.25, 0.25), "top right": (0.25, 0.75),
             "bottom left": (0.75, 0.25), "bottom right": (0.75, 0.75)}  # (y, x) fractions
_INVERSE = {"to the left of": "to the right of", "to the right of": "to the left of",
            "above": "below", "below": "above",
            "above and to the left of": "below and to the right of",
            "below and to the right of": "above and to the left of",
            "above and to the right of": "below and to the left of",
            "below and to the left of": "above and to the right of"}

# zero-shot prompts per held-out task: each names only that attribute
ZERO_SHOT_TEMPLATES = {
    "shape": ["a picture of a {}.", "a {} shape.", "a drawing of a {}.", "a {}."],
    "colour": ["a picture of something {}.", "a {} object.", "a {} shape.", "something coloured {}."],
}
TEST_SEED_OFFSET = 1_000_003  # load_pairs("scenes", split="test") draws with seed + this


def article(phrase: str) -> str:
    """'a red circle', 'an orange ring'."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


# ------------------------------------------------------------------ drawing


def _mask(shape: int, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if shape == 0:  # circle
        return dy * dy + dx * dx <= r * r
    if shape == 1:  # square, of about the circle's area
        s = 0.86 * r
        return (np.abs(dy) <= s) & (np.abs(dx) <= s)
    if shape == 2:  # triangle pointing up
        top, bottom = -r, 0.85 * r
        half = (dy - top) / (bottom - top) * r
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= half)
    if shape == 3:  # cross (plus sign)
        w = 0.32 * r
        return ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    d2 = dy * dy + dx * dx  # ring
    return (d2 <= r * r) & (d2 > (0.52 * r) ** 2)


def _background(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, str]:
    a = int(rng.integers(len(BACKGROUNDS)))
    canvas = np.empty((size, size, 3), np.float32)
    canvas[:] = _BG_RGB[a] + rng.uniform(-10, 10, 3)
    if rng.random() < 0.3:  # two-tone: split in halves, or along the diagonal
        b = int(rng.choice([i for i in range(len(BACKGROUNDS)) if i != a]))
        split = int(rng.integers(3))
        half = xx >= size / 2 if split == 0 else yy >= size / 2 if split == 1 else yy > xx
        canvas[half] = _BG_RGB[b] + rng.uniform(-10, 10, 3)
        return canvas, f"{BACKGROUNDS[a]} and {BACKGROUNDS[b]}"
    return canvas, BACKGROUNDS[a]


def _relation(a: tuple[float, float], b: tuple[float, float], size: int) -> str:
    """Where a is relative to b, from their centres (only clear differences count)."""
    dy, dx = a[0] - b[0], a[1] - b[1]
    vert = "above" if dy < -size / 4 else "below" if dy > size / 4 else ""
    horiz = "to the left of" if dx < -size / 4 else "to the right of" if dx > size / 4 else ""
    if vert and horiz:
        return f"{vert} and {horiz}"
    return vert or horiz


# ------------------------------------------------------------------ captions


def _captions(rng: np.random.Generator, objs: list[dict], rel: str, bg: str, pos: str, k: int) -> list[str]:
    def full(o):
        return article(f"{SIZES[o['size']]} {COLOURS[o['colour']]} {SHAPES[o['shape']]}")

    def cs(o):
        return article(f"{COLOURS[o['colour']]} {SHAPES[o['shape']]}")

    def listing(phrases):
        order = list(rng.permutation(len(phrases)))
        items = [phrases[i] for i in order]
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

    o = objs
    if len(o) == 1:
        a = o[0]
        options = [full(a), f"{cs(a)} on a {bg} background", f"a picture of {full(a)}",
                   f"{full(a)} in the {pos}", f"a single {COLOURS[a['colour']]} {SHAPES[a['shape']]}",
                   article(f"{SIZES[a['size']]} {SHAPES[a['shape']]} in {COLOURS[a['colour']]}")]
    elif len(o) == 2:
        options = [f"{cs(o[0])} {rel} {cs(o[1])}", f"{full(o[1])} {_INVERSE[rel]} {full(o[0])}",
                   f"two shapes: {listing([cs(x) for x in o])}",
                   f"{listing([full(x) for x in o])} on a {bg} background",
                   f"a picture of {full(o[0])} {rel} {cs(o[1])}"]
    else:
        options = [f"three shapes: {listing([cs(x) for x in o])}",
                   f"{cs(o[0])} {rel} {cs(o[1])}, and {cs(o[2])}",
                   f"{listing([full(x) for x in o])} on a {bg} background",
                   f"a picture of three shapes: {listing([full(x) for x in o])}"]
    pick = rng.choice(len(options), size=min(k, len(options)), replace=False)
    return [options[i] + "." for i in sorted(pick)]


# ------------------------------------------------------------------ the set


def make_scenes(n: int, seed: int = 0, size: int = 32, corrupt: float = 0.0,
                single_fraction: float | None = None, captions_per_image: int = 3):
    """``n`` scenes drawn from ``seed`` (same arguments, same set) as a :class:`PairSet`.

    single_fraction: exact share of one-object images (default 1/3; the rest split evenly
    between two and three objects). corrupt: that share of images (exactly, rounded) gets
    all its captions from another image with different content; ``corrupted`` marks them,
    while ``attributes`` always describe the image itself.
    """
    if n < 1:
        raise fail(f"scenes: n={n}; ask for at least one image")
    if size < 16:
        raise fail(f"scenes: size={size} is too small to draw shapes; use 16 or more")
    if not 0.0 <= corrupt < 1.0:
        raise fail(f"scenes: corrupt={corrupt} must be a fraction in [0, 1)")
    single_fraction = 1 / 3 if single_fraction is None else float(single_fraction)
    if not 0.0 <= single_fraction <= 1.0:
        raise fail(f"scenes: single={single_fraction} must be a fraction in [0, 1]")
    if captions_per_image < 1:
        raise fail(f"scenes: captions={captions_per_image}; give each image at least one caption")
    rng = np.random.default_rng(seed)
    n1 = int(round(single_fraction * n))
    n2 = (n - n1 + 1) // 2
    counts = rng.permutation(np.repeat([1, 2, 3], [n1, n2, n - n1 - n2]))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    images = np.empty((n, size, size, 3), np.uint8)
    captions: list[list[str]] = []
    attrs = {k: np.empty(n, np.int64) for k in ("n_objects", "shape", "colour", "size")}
    cells = list(POSITIONS.values())[1:]  # the quadrants, for three objects
    jitter = 0.02 * size  # small enough that two large shapes in neighbouring cells never touch
    for i in range(n):
        m = int(counts[i])
        canvas, bg = _background(rng, size, yy, xx)
        objs = [dict(shape=int(rng.integers(len(SHAPES))), colour=int(rng.integers(len(COLOURS))),
                     size=int(rng.integers(2))) for _ in range(m)]
        pos = ""
        if m == 1:
            pos = list(POSITIONS)[int(rng.integers(len(POSITIONS)))]
            centres = [POSITIONS[pos]]
        elif m == 2:
            ends = [(0.5, 0.25), (0.5, 0.75)] if rng.random() < 0.5 else [(0.25, 0.5), (0.75, 0.5)]
            if rng.random() < 0.5:
                ends = ends[::-1]
            centres = ends
        else:
            centres = [cells[c] for c in rng.choice(4, size=3, replace=False)]
        for o, (fy, fx) in zip(objs, centres):
            r = _RADIUS[o["size"]] * size
            cy, cx = fy * size + rng.uniform(-jitter, jitter), fx * size + rng.uniform(-jitter, jitter)
            if m == 2:  # slide freely along the axis the relation does not depend on
                if fy == 0.5:
                    cy = rng.uniform(r + 1, size - r - 1)
                else:
                    cx = rng.uniform(r + 1, size - r - 1)
            o["centre"] = (cy, cx)
            colour = np.clip(_RGB[o["colour"]] + rng.uniform(-15, 15, 3), 0, 255)
            canvas[_mask(o["shape"], yy, xx, cy, cx, r)] = colour
        images[i] = np.clip(canvas, 0, 255).round().astype(np.uint8)
        rel = _relation(objs[0]["centre"], objs[1]["centre"], size) if m > 1 else ""
        captions.append(_captions(rng, objs, rel, bg, pos, captions_per_image))
        a = objs[0]
        attrs["n_objects"][i], attrs["shape"][i], attrs["colour"][i], attrs["size"][i] = m, a["shape"], a["colour"], a["size"]
    corrupted = np.zeros(n, bool)
    k = int(round(corrupt * n))
    if k and n > 1:
        signature = attrs["n_objects"] * 100 + attrs["shape"] * 10 + attrs["colour"]
        original = [list(c) for c in captions]
        for i in rng.choice(n, size=k, replace=False):
            for _ in range(20):  # a donor with different content, so the caption is really wrong
                j = int(rng.integers(n))
                if j != i and signature[j] != signature[i]:
                    break
            captions[i] = list(original[j])
            corrupted[i] = True
    name = f"scenes:n={n},seed={seed},size={size}" + (f",corrupt={corrupt:g}" if corrupt else "")
    return PairSet(ImageSet(images, None, None, name), captions, name, corrupted, attrs,
                   {"shape": list(SHAPES), "colour": list(COLOURS), "size": list(SIZES)})
