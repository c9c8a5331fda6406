"""Jigsaw puzzles (Noroozi & Favaro 2016): recognise which permutation shuffled an image's tiles.

The image is cut into a ``grid`` x ``grid`` set of tiles (the side must divide by the grid);
the tiles are shuffled by one of P permutations from a fixed set chosen by the paper's
Algorithm 1 (:func:`permutation_set`: greedy maximal summed Hamming distance, from a random
first permutation drawn with a fixed seed, so the set is reproducible). Each tile is
upsampled with ``F.interpolate`` (bilinear) to the full image size and passed through the
SAME encoder (``self.encoder``, built for the full image size — so evaluation, which runs
``self.encoder`` on whole images, uses exactly the trained network). The tile features are concatenated in (shuffled) tile order and an
MLP head classifies the permutation (P-way cross-entropy); the head is dropped for evaluation.

Simplifications against the paper: no random gap/jitter between tiles and no per-tile
colour normalisation (tiles of 8x8 digits are only 4 px wide).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import option
from ..data.pixels import unit_float
from ..errors import fail
from ..nets import MLPHead
from .base import METHODS, Method


@dataclass
class JigsawConfig:
    grid: int = option(0, "tiles per side; 0 = auto (3 when the side divides by 3 into tiles of >= 8 px, else 2)",
                       min=0, max=8)
    num_permutations: int = option(0, "size P of the permutation set; 0 = auto (all 24 for 2x2, 100 otherwise)",
                                   min=0, max=100000)
    head_hidden: int = option(512, "hidden width of the permutation classifier", min=1, max=65536)


def auto_grid(image_size: int) -> int:
    return 3 if image_size % 3 == 0 and image_size // 3 >= 8 else 2


@lru_cache(maxsize=16)
def _permutation_set(grid: int, count: int, seed: int) -> Tensor:
    n = grid * grid
    if n > 9:  # Algorithm 1 scores every permutation each round: 16! (2·10¹³) for 4x4 is out of reach
        raise fail(f"jigsaw grid {grid} has {n} tiles; the permutation search enumerates all permutations and "
                   "supports grids up to 3 (9 tiles); choose --grid 2 or 3")
    every = torch.tensor(list(itertools.permutations(range(n))), dtype=torch.int8)
    if count < 1 or count > len(every):
        raise fail(f"num-permutations {count} is not possible for a {grid}x{grid} grid; choose 1..{len(every)}")
    g = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(len(every), (1,), generator=g))]
    summed = torch.zeros(len(every), dtype=torch.int32)  # Σ over the chosen of the Hamming distance
    taken = torch.zeros(len(every), dtype=torch.bool)
    for _ in range(count - 1):
        taken[chosen[-1]] = True
        summed += (every != every[chosen[-1]]).sum(1, dtype=torch.int32)
        # argmax over the permutations not yet chosen; ties go to the first in itertools order (MATLAB's max)
        chosen.append(int(summed.masked_fill(taken, -1).argmax()))
    return every[chosen].long()


def permutation_set(grid: int, count: int, seed: int = 0) -> Tensor:
    """(count, grid²) LongTensor of distinct permutations of range(grid²), by Noroozi & Favaro's Algorithm 1.

    The first permutation is drawn uniformly (from ``seed``); each next one is the permutation j not yet
    chosen that maximises the summed Hamming distance Σ_{p chosen} Σ_t [p_t ≠ j_t] to those chosen so far.
    It maximises the mean distance, not the minimum: for 100 permutations of 3x3 the mean is 8.08 (random
    sets: 8.0) but two of them differ in only 2 places (random sets of 100: about 3).
    """
    return _permutation_set(int(grid), int(count), int(seed)).clone()


def to_tiles(x: Tensor, grid: int) -> Tensor:
    """(N, C, H, W) -> (N, grid², C, H/grid, W/grid), tiles in row-major order."""
    n, c, h, w = x.shape
    if h % grid or w % grid:
        raise fail(f"jigsaw grid {grid} does not divide the image side {h}x{w}; choose a grid that divides it")
    th, tw = h // grid, w // grid
    return x.reshape(n, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, th, tw)


def from_tiles(tiles: Tensor, grid: int) -> Tensor:
    """Inverse of :func:`to_tiles`."""
    n, _, c, th, tw = tiles.shape
    return tiles.reshape(n, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, grid * th, grid * tw)


def shuffle_tiles(tiles: Tensor, perms: Tensor) -> Tensor:
    """Position i of sample n gets tile perms[n, i]: (N, T, ...) with (N, T) perms -> (N, T, ...)."""
    index = perms.to(tiles.device).long().view(*perms.shape, *([1] * (tiles.dim() - 2))).expand_as(tiles)
    return tiles.gather(1, index)


def unshuffle_tiles(tiles: Tensor, perms: Tensor) -> Tensor:
    """Inverse of :func:`shuffle_tiles` (shuffle by the inverse permutations)."""
    return shuffle_tiles(tiles, perms.long().argsort(dim=1))


@METHODS.register("jigsaw")
class Jigsaw(Method):
    Config = JigsawConfig
    run_defaults = {"epochs": 30, "warmup_epochs": 2}

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        self.grid = config.grid or auto_grid(info.image_size)
        if self.grid < 2:
            raise fail(f"jigsaw grid must be at least 2, got {self.grid}")
        if info.image_size % self.grid:
            raise fail(f"jigsaw grid {self.grid} does not divide the image side {info.image_size}; "
                       f"choose --grid that divides it (e.g. 2) or --image-size a multiple of {self.grid}")
        tiles = self.grid * self.grid
        count = config.num_permutations or (24 if tiles == 4 else 100)
        self.register_buffer("perms", permutation_set(self.grid, count, 0), persistent=False)
        self.head = MLPHead(tiles * encoder.feature_dim, config.head_hidden, count)

    def views(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x = unit_float(images)
        label = torch.randint(0, len(self.perms), (len(x),), generator=generator, device=x.device)
        tiles = shuffle_tiles(to_tiles(x, self.grid), self.perms.to(x.device)[label])
        return tiles, label

    def loss(self, views):
        tiles, label = views
        n, t, c, th, tw = tiles.shape
        size = self.info.image_size
        flat = F.interpolate(tiles.reshape(n * t, c, th, tw), size=(size, size), mode="bilinear",
                             align_corners=False)
        feats = self.encoder(flat).reshape(n, t * self.encoder.feature_dim)
        logits = self.head(feats)
        value = F.cross_entropy(logits, label)
        acc = (logits.argmax(1) == label).float().mean()
        return {"loss": value, "ce": value.detach(), "perm_acc": acc.detach()}
