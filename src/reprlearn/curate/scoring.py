"""Scoring a pool of image-text pairs: the CLIP score of every pair (``reprlearn curate score``).

The CLIP score of a pair is the cosine of the L2-normalised image and text embeddings of an
image-text run (clip or siglip): ``s = <f(x) / |f(x)|, g(t) / |g(t)|>`` (DataComp, Gadre et
al. 2023, Sec. 3.4; Hessel et al. 2021 without the 2.5 scale and the clip at 0). A pair with
several captions (scenes' wordings, Flickr8k's five) is scored on its first caption, the one
written beside its key.

The pool is scored part by part: a shard of a shard pool (streamed batch by batch, never
decoded whole), or a chunk of ``CHUNK`` pairs of a pool held in memory (scenes, CSV/TSV).
Each finished part is one Parquet table (key, caption, score, characters, words, and
``corrupted`` where the pool knows it) with its image embeddings beside it as float16 .npy,
both written atomically, then a small JSON record of the part (its count and unreadable
items) that marks it done; a rerun skips the parts that have one. Unreadable items are
skipped, counted and listed (``skipped.txt``), never dropped silently.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..data.pixels import unit_float
from ..errors import fail
from ..files import atomic_write
from .noisy import CORRUPTED_LIST

SCORES_VERSION = 1
CHUNK = 1000  # pairs per part of a pool held in memory
MANIFEST = "manifest.json"


@dataclass
class Pool:
    """A pool as scoring sees it: named parts, each yielding batches of
    ``images`` uint8 (B, C, H, W), ``captions``, ``keys``, ``skipped`` and optionally ``corrupted``."""

    spec: str
    parts: list[str]
    batches: Callable[[int, int], Iterator[dict]]  # (part, batch size) -> batches
    skipped: list[str]  # unreadable items found before any part is read (in-memory pools)


def open_pool(spec: str, image_size: int, chunk: int = CHUNK) -> Pool:
    """Caption shards are streamed one shard per part; scenes and CSV/TSV tables (or a labelled
    source's prompts) are loaded once and cut into chunks of ``chunk`` pairs."""
    from ..data.pairs import caption_shards, load_pairs

    shards = caption_shards(spec, "train")
    if shards:
        listed = shards[0].parent / CORRUPTED_LIST  # a pool made by noisy.py says which pairs it corrupted
        corrupted = set(listed.read_text().split()) if listed.is_file() else None
        return Pool(spec, [p.name for p in shards],
                    lambda i, b: _shard_batches(shards[i], image_size, b, corrupted), [])
    pairs = load_pairs(spec, "train", image_size, skip_bad=True)
    n = len(pairs)
    if n == 0:
        raise fail(f"{spec} holds no readable pairs; check the source")

    def batches(i: int, batch_size: int) -> Iterator[dict]:
        lo, hi = i * chunk, min((i + 1) * chunk, n)
        for s in range(lo, hi, batch_size):
            idx = np.arange(s, min(s + batch_size, hi))
            batch = {"images": torch.from_numpy(pairs.images.images[idx]).permute(0, 3, 1, 2),
                     "captions": [pairs.captions[j] for j in idx], "keys": [f"{j:08d}" for j in idx],
                     "index": idx, "skipped": []}
            if pairs.corrupted is not None:
                batch["corrupted"] = pairs.corrupted[idx]
            yield batch

    return Pool(spec, [f"chunk-{i:06d}" for i in range(-(-n // chunk))], batches, list(pairs.images.skipped))


def _shard_batches(shard: Path, image_size: int, batch_size: int, corrupted: set | None) -> Iterator[dict]:
    from ..data.stream import eval_batches, open_stream

    stream = open_stream([shard], image_size, True, str(shard))
    for batch in eval_batches(stream, batch_size, workers=0):  # stored order, decoded batch by batch
        batch["keys"] = [f"{shard.name}/{k}" for k in batch["keys"]]
        if corrupted is not None:
            batch["corrupted"] = np.array([k in corrupted for k in batch["keys"]], bool)
        yield batch


def caption_stats(captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(characters, words) per caption; words are runs of non-space characters."""
    return (np.array([len(c) for c in captions], np.int32), np.array([len(c.split()) for c in captions], np.int32))


@torch.no_grad()
def score_batch(method, images: torch.Tensor, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(scores (B,), image embeddings (B, D)) of uint8 images and their captions."""
    device = next(method.parameters()).device
    image = method.encode_image(unit_float(images.to(device)))
    text = method.embed_texts(captions)
    return (image * text).sum(-1).float().cpu().numpy(), image.float().cpu().numpy()


def part_files(out: Path, name: str) -> tuple[Path, Path, Path]:
    """(scores .parquet, embeddings .npy, done-record .json) of a part."""
    stem = out / "parts" / name.replace("/", "_")
    return stem.with_suffix(".parquet"), stem.with_suffix(".npy"), stem.with_suffix(".json")


def score_part(method, pool: Pool, i: int, out: Path, batch_size: int, bar=None) -> dict:
    """Score part ``i`` of ``pool`` and write its three files (the record last)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, list] = {"key": [], "caption": [], "score": [], "corrupted": []}
    embeds, skipped, index = [], [], []
    for batch in pool.batches(i, batch_size):
        first = [caps[0] for caps in batch["captions"]]
        scores, emb = score_batch(method, batch["images"], first)
        cols["key"] += batch["keys"]
        cols["caption"] += first
        cols["score"].append(scores)
        embeds.append(emb.astype(np.float16))
        skipped += batch["skipped"]
        if "corrupted" in batch:
            cols["corrupted"].append(np.asarray(batch["corrupted"], bool))
        if "index" in batch:
            index.append(np.asarray(batch["index"], np.int64))
        if bar is not None:
            bar.update(len(first))
    dim = method.image_proj.out_features
    chars, words = caption_stats(cols["caption"])
    table = {"key": pa.array(cols["key"], pa.string()), "caption": pa.array(cols["caption"], pa.string()),
             "score": pa.array(np.concatenate(cols["score"]) if cols["score"] else np.zeros(0, np.float32)),
             "chars": pa.array(chars), "words": pa.array(words)}
    if cols["corrupted"]:
        table["corrupted"] = pa.array(np.concatenate(cols["corrupted"]))
    if index:
        table["index"] = pa.array(np.concatenate(index))
    parquet, npy, record = part_files(out, pool.parts[i])
    with atomic_write(npy) as f:
        np.save(f, np.concatenate(embeds) if embeds else np.zeros((0, dim), np.float16))
    with atomic_write(parquet) as f:
        pq.write_table(pa.table(table), f)
    info = {"part": pool.parts[i], "count": len(cols["key"]), "skipped": skipped}
    with atomic_write(record, "w") as f:
        json.dump(info, f)
    return info


def score_pool(pool_spec: str, run_dir: str | Path, out: str | Path, batch_size: int = 256, devices: int = 1,
               progress: bool = True, chunk: int | None = None) -> dict:
    """Score every pair of ``pool_spec`` with the image-text run ``run_dir`` into ``out``; finished
    parts of an earlier, interrupted call are kept. Returns the manifest (pairs, parts, skipped)."""
    import time

    from ..methods import EmbedsText
    from ..runs import load_method

    out = Path(out)
    method, cfg, info = load_method(run_dir)
    if not isinstance(method, EmbedsText):
        raise fail(f"{run_dir} is a {cfg.method} run; scoring needs an image-text run (clip or siglip)")
    manifest = {"version": SCORES_VERSION, "pool": pool_spec, "model": str(Path(run_dir).resolve()),
                "image_size": info.image_size, "chunk": chunk or CHUNK}
    old = _read_manifest(out)
    if old is not None and any(old.get(k) != v for k, v in manifest.items()):
        raise fail(f"{out} holds scores of {old.get('pool')} by {old.get('model')}; give a new --out for "
                   f"{pool_spec} by {run_dir}")
    pool = open_pool(pool_spec, info.image_size, manifest["chunk"])
    manifest["parts"] = pool.parts
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)
    todo = [i for i, name in enumerate(pool.parts) if not part_files(out, name)[2].is_file()]
    start = time.perf_counter()
    if todo and devices > 1:
        import multiprocessing

        with ProcessPoolExecutor(devices, mp_context=multiprocessing.get_context("spawn")) as ex:
            list(ex.map(_score_parts, [(pool_spec, str(run_dir), str(out), todo[r::devices], batch_size, r,
                                        manifest["chunk"])
                                       for r in range(devices)]))
    elif todo:
        from tqdm import tqdm

        with tqdm(unit="pair", desc="scoring", disable=not progress) as bar:
            for i in todo:
                score_part(method.eval(), pool, i, out, batch_size, bar)
    seconds = time.perf_counter() - start
    records = [json.loads(part_files(out, name)[2].read_text()) for name in pool.parts]
    skipped = pool.skipped + [s for r in records for s in r["skipped"]]
    with atomic_write(out / "skipped.txt", "w") as f:
        f.write("".join(s + "\n" for s in skipped))
    scored = sum(r["count"] for r in records)
    summary = {**manifest, "pairs": scored, "skipped": len(skipped), "scored_now": len(todo),
               "seconds": seconds, "first_skipped": skipped[0] if skipped else None}
    with atomic_write(out / MANIFEST, "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def _score_parts(args) -> None:
    """One scoring process (``--devices N``): its own parts, on its own device."""
    from ..runs import load_method

    pool_spec, run_dir, out, parts, batch_size, rank, chunk = args
    torch.set_num_threads(1)
    method, _, info = load_method(run_dir)
    if torch.cuda.is_available():
        method = method.to(f"cuda:{rank % torch.cuda.device_count()}")
    pool = open_pool(pool_spec, info.image_size, chunk)
    for i in parts:
        score_part(method.eval(), pool, i, Path(out), batch_size)


def _read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def read_scores(scores_dir: str | Path):
    """(pyarrow Table of every scored pair in pool order, float32 image embeddings (N, D), manifest)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    scores_dir = Path(scores_dir)
    manifest = _read_manifest(scores_dir)
    if manifest is None or "parts" not in manifest:
        raise fail(f"{scores_dir} holds no scores; write them with `reprlearn curate score POOL --model RUN "
                   f"--out {scores_dir}`")
    tables, embeds = [], []
    for name in manifest["parts"]:
        parquet, npy, record = part_files(scores_dir, name)
        if not record.is_file():
            raise fail(f"{scores_dir}: part {name} is not scored yet; rerun `reprlearn curate score` to finish it")
        tables.append(pq.read_table(parquet))
        embeds.append(np.load(npy))
    return pa.concat_tables(tables), np.concatenate(embeds).astype(np.float32), manifest
