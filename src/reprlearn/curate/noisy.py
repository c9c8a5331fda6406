"""A noisy pool made from a clean caption source, with the corruption recorded: a fixed share of
the images given another image's captions (as scenes' ``corrupt=`` does for generated pairs),
and optionally a small clean seed set held apart to train a scorer on (the data-filtering-network
idea). The corrupted keys are listed in ``corrupted.txt`` beside the pool's shards, which the
scorer reads into its ``corrupted`` column."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import fail
from ..files import atomic_write

CORRUPTED_LIST = "corrupted.txt"


def swap_captions(n: int, fraction: float, seed: int) -> np.ndarray:
    """A caption source per image: ``fraction`` of the images (seeded) take the captions of the next
    chosen image (a cycle, so none keeps its own), the others their own."""
    if not 0 <= fraction <= 1:
        raise fail(f"--corrupt {fraction} is not a fraction in [0, 1]")
    source = np.arange(n)
    chosen = np.random.default_rng(seed).permutation(n)[:int(round(fraction * n))]
    if len(chosen) > 1:
        source[chosen] = np.roll(chosen, -1)
    return source


def make_noisy_pool(spec: str, fraction: float, out: str | Path, seed_size: int = 0, seed: int = 0,
                    shard_size: int = 2000) -> tuple[str, str | None]:
    """Write ``out/pool`` (the noisy pool's shards and its corrupted.txt) and, with ``seed_size``,
    ``out/seed`` (that many clean pairs, none of them in the pool); returns their specs. A rerun keeps
    what is written."""
    from ..data.pairs import load_pairs
    from ..data.shards import write_shard

    out = Path(out)
    pool_dir, seed_dir = out / "pool", out / "seed"
    if (pool_dir / CORRUPTED_LIST).is_file():
        return str(pool_dir), str(seed_dir) if seed_size else None
    pairs = load_pairs(spec, "train")
    order = np.random.default_rng(seed).permutation(len(pairs))
    if not 0 <= seed_size < len(pairs) - 1:
        raise fail(f"--seed-size {seed_size} leaves no pool of {len(pairs)} pairs; give fewer")
    if seed_size:
        clean = order[:seed_size]
        write_shard(seed_dir / "train-000000.tar", 0, pairs.images.images[clean], None,
                    [pairs.captions[i] for i in clean], "jpg")
    rest = order[seed_size:]
    source = swap_captions(len(rest), fraction, seed)
    corrupted = []
    for s in range(0, len(rest), shard_size):
        name = f"train-{s // shard_size:06d}.tar"
        idx = np.arange(s, min(s + shard_size, len(rest)))
        write_shard(pool_dir / name, s, pairs.images.images[rest[idx]], None,
                    [pairs.captions[rest[source[i]]] for i in idx], "jpg")
        corrupted += [f"{name}/{i:08d}" for i in idx if source[i] != i]
    with atomic_write(pool_dir / CORRUPTED_LIST, "w") as f:
        f.write("".join(k + "\n" for k in corrupted))
    return str(pool_dir), str(seed_dir) if seed_size else None
