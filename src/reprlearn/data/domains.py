"""Shifted domains built from the named sources, for domain adaptation (``domain-invariant``).

  digits-m[:train|:test]          sklearn's 8x8 digits, each coloured and blended onto a random
                                  8x8 patch of a natural image (CIFAR-10 training shard
                                  train-000000), the way MNIST-M is built from MNIST
                                  (Ganin & Lempitsky 2015): out = |patch - colour * digit|
  cifar10-shifted[:train|:test]   CIFAR-10 under one fixed colour transform and a Gaussian blur

Both are deterministic (fixed seeds: the same spec gives the same pixels on every machine)
and cached like every decoded source, keyed by the inputs' content.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import fail
from .cache import cached, content_key
from .imageset import ImageSet

DOMAIN_SOURCES = ("digits-m", "cifar10-shifted")
PATCH_SHARD = "train-000000.tar.gz"  # the natural images digits-m blends onto
DIGITS_M_SEED = 0
# the digit's colour c is drawn per image and channel from [COLOUR_LOW, 255]; at 255 (MNIST-M's own
# choice) the stroke takes the patch's inverted colour
COLOUR_LOW = 255


def is_domain_source(name: str) -> bool:
    return name in DOMAIN_SOURCES


# ---------------------------------------------------------------- digits-m


def patch_shard() -> Path:
    """CIFAR-10's first training shard: in $REPRLEARN_CIFAR10, else in the nearest shared/data/cifar10
    above the working directory (a checkout beside ../shared/data); one line saying where it looked."""
    if os.environ.get("REPRLEARN_CIFAR10"):
        candidates = [Path(os.environ["REPRLEARN_CIFAR10"]).expanduser() / PATCH_SHARD]
    else:
        candidates = [p / "shared" / "data" / "cifar10" / PATCH_SHARD for p in Path.cwd().resolve().parents]
    for path in candidates:
        if path.is_file():
            return path
    where = (f"REPRLEARN_CIFAR10 ({candidates[0].parent})" if os.environ.get("REPRLEARN_CIFAR10")
             else "any shared/data/cifar10 above the working directory")
    raise fail(f"digits-m blends digits onto CIFAR-10 patches but {PATCH_SHARD} is not in {where}; "
               "set REPRLEARN_CIFAR10 to the folder of the CIFAR-10 shards")


def blend_digits(digits: np.ndarray, backgrounds: np.ndarray, seed: int) -> np.ndarray:
    """MNIST-M's construction on uint8 digits (N, h, w) and backgrounds (M, H, W, 3), H, W >= h, w:
    for each digit a random background, a random h x w crop of it and a random colour c in
    [COLOUR_LOW, 255]^3; out = |patch - c * digit / 255| per channel, uint8 (N, h, w, 3)."""
    rng = np.random.default_rng(seed)
    n, h, w = digits.shape
    which = rng.integers(0, len(backgrounds), n)
    top = rng.integers(0, backgrounds.shape[1] - h + 1, n)
    left = rng.integers(0, backgrounds.shape[2] - w + 1, n)
    colour = rng.integers(COLOUR_LOW, 256, (n, 1, 1, 3)).astype(np.float64)
    rows = top[:, None] + np.arange(h)[None, :]  # (N, h)
    cols = left[:, None] + np.arange(w)[None, :]  # (N, w)
    patches = backgrounds[which[:, None, None], rows[:, :, None], cols[:, None, :]].astype(np.float64)  # (N,h,w,3)
    out = np.abs(patches - colour * (digits.astype(np.float64)[..., None] / 255.0))
    return np.round(out).clip(0, 255).astype(np.uint8)


def digits_m(source: ImageSet, split: str, shard_digest: str, backgrounds, seed: int = DIGITS_M_SEED) -> ImageSet:
    """digits-m from the digits split ``source``; ``backgrounds()`` gives the natural images
    (decoded only when the cache, keyed by ``shard_digest``, has no entry)."""
    key = content_key("digits-m", split, seed, COLOUR_LOW, shard_digest)

    def build() -> ImageSet:
        # train and test draw from different seeds so no (digit, patch, colour) triple repeats
        images = blend_digits(source.images[..., 0], backgrounds(), seed * 2 + (split == "test"))
        return ImageSet(images, source.labels, source.class_names, f"digits-m:{split}")

    return cached(key, build)


# ---------------------------------------------------------------- CIFAR-10 shifted

# a fixed colour transform: each output channel a mix of the input channels (rows sum to 1,
# so grey stays grey in brightness), then a gamma; and a 5-tap Gaussian blur, sigma 1 px
COLOUR_MIX = np.array([[0.2, 0.3, 0.5],
                       [0.6, 0.2, 0.2],
                       [0.3, 0.6, 0.1]])
GAMMA = 0.7
BLUR_SIGMA = 1.0


def shift_images(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> the colour-transformed, blurred uint8 (N, H, W, 3)."""
    x = (images.astype(np.float64) / 255.0) @ COLOUR_MIX.T
    x = np.clip(x, 0.0, 1.0) ** GAMMA
    taps = np.exp(-0.5 * (np.arange(-2, 3) / BLUR_SIGMA) ** 2)
    taps /= taps.sum()
    for axis in (1, 2):  # separable blur, edges repeated
        pad = [(0, 0)] * 4
        pad[axis] = (2, 2)
        padded = np.pad(x, pad, mode="edge")
        size = x.shape[axis]
        x = sum(t * np.take(padded, np.arange(i, i + size), axis=axis) for i, t in enumerate(taps))
    return np.round(x * 255.0).clip(0, 255).astype(np.uint8)


def cifar10_shifted(source: ImageSet, split: str) -> ImageSet:
    """cifar10-shifted from the CIFAR-10 split ``source``."""
    key = content_key("cifar10-shifted", split, source.name, len(source), COLOUR_MIX.tolist(), GAMMA, BLUR_SIGMA,
                      int(source.images[:64].astype(np.int64).sum()))

    def build() -> ImageSet:
        shifted = np.concatenate([shift_images(source.images[i:i + 5000]) for i in range(0, len(source), 5000)])
        return ImageSet(shifted, source.labels, source.class_names, f"cifar10-shifted:{split}")

    return cached(key, build)
