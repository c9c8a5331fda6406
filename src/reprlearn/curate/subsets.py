"""A filtered subset of a scored pool: the keep mask of the rules, written as a key list and a
Parquet table, and optionally as new WebDataset shards of the kept pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import fail
from ..files import atomic_write
from .filters import DEFAULT_CLUSTERS, PoolView, keep_mask
from .scoring import open_pool, read_scores


def default_target(pool_spec: str) -> str | None:
    """The held-out images DataComp-style image-based filtering aims at when no --target is given:
    the test split of a scenes pool, or the test-* shards beside a folder's train-* shards."""
    from ..data.pairs import pair_shards

    if pool_spec.partition(":")[0] == "scenes":
        return pool_spec
    path = Path(pool_spec)
    if path.is_dir() and any(p.name.startswith("test") for p in pair_shards(pool_spec, "test")):
        return pool_spec
    return None


def target_embeddings(target: str, model: str | Path) -> np.ndarray:
    """Unit image embeddings of ``target``: a .npy of embeddings as is, else the images of a source
    (its test split for pair sources) through the scoring model's image tower."""
    import torch

    from ..data.pairs import is_pair_source, load_pairs
    from ..data.sources import load_source
    from ..evaluate import extract
    from ..runs import load_method

    if target.endswith(".npy"):
        return np.load(target).astype(np.float32)
    method, _, info = load_method(model)
    images = load_pairs(target, "test", info.image_size).images if is_pair_source(target) \
        else load_source(target, info.image_size)
    info.check_images(images, target)
    with torch.no_grad():
        return extract(method.image_tower(), images.tensor(), 512)


def select(scores_dir: str | Path, rules: list[str], target: str | None = None, seed: int = 0,
           clusters: int = DEFAULT_CLUSTERS):
    """(the scores table, keep mask (N,), manifest) of ``rules`` over the scored pool."""
    table, embeddings, manifest = read_scores(scores_dir)
    target = target or default_target(manifest["pool"])

    def target_fn():
        if target is None:
            raise fail(f"image-based filtering of {manifest['pool']} needs --target SOURCE (images whose clusters "
                       "to keep, e.g. the evaluation set); the pool has no test split to default to")
        return target_embeddings(target, manifest["model"])

    view = PoolView(table["score"].to_numpy(), table["words"].to_numpy(), table["chars"].to_numpy(), embeddings,
                    target_fn, seed, clusters)
    return table, keep_mask(rules, view), manifest


def write_kept(table, keep: np.ndarray, out: str | Path) -> Path:
    """``out`` (.parquet: the kept rows; anything else: one key a line)."""
    import pyarrow.parquet as pq

    out = Path(out)
    kept = table.filter(keep)
    with atomic_write(out, "wb" if out.suffix == ".parquet" else "w") as f:
        if out.suffix == ".parquet":
            pq.write_table(kept, f)
        else:
            f.write("".join(k + "\n" for k in kept["key"].to_pylist()))
    return out


def write_kept_shards(manifest: dict, keys: set[str], out: str | Path, shard_size: int = 10000,
                      fmt: str = "png", batch_size: int = 512) -> list[Path]:
    """The kept pairs (every caption of each) as ``out/train-000000.tar`` ..., read again from the
    pool part by part (a shard pool is streamed, never decoded whole)."""
    from ..data.shards import write_shard

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pool = open_pool(manifest["pool"], manifest["image_size"], manifest["chunk"])
    paths: list[Path] = []
    images: list[np.ndarray] = []
    captions: list[list[str]] = []

    def flush():
        path = out / f"train-{len(paths):06d}.tar"
        write_shard(path, len(paths) * shard_size, np.stack(images), None, captions, fmt)
        paths.append(path)
        images.clear()
        captions.clear()

    for i in range(len(pool.parts)):
        for batch in pool.batches(i, batch_size):
            pick = [j for j, k in enumerate(batch["keys"]) if k in keys]
            images.extend(batch["images"][pick].permute(0, 2, 3, 1).numpy())
            captions.extend(batch["captions"][j] for j in pick)
            while len(images) >= shard_size:
                rest_i, rest_c = images[shard_size:], captions[shard_size:]
                del images[shard_size:], captions[shard_size:]
                flush()
                images.extend(rest_i)
                captions.extend(rest_c)
    if images:
        flush()
    if not paths:
        raise fail(f"no pair of {manifest['pool']} is kept; nothing to write to {out}")
    return paths
