"""Search with any trained run: the images of ``--index`` nearest a query image (every image run),
or a text query (image-text runs: clip, siglip); the texts nearest a sentence (text runs: mlm).

The index holds unit vectors in a FAISS inner-product index, so a score is the cosine similarity:
exact (``IndexFlatIP``) up to ``EXACT_LIMIT`` items, an inverted-file index (``IndexIVFFlat``,
approximate, ``nprobe`` of its ``4 sqrt(N)`` lists searched) beyond. Which vectors:

- an image-text run: its image tower's unit embeddings (the joint space, so text and image queries
  search the same index);
- every other run: its encoder's features (heads dropped; what ``reprlearn.load(run)`` and
  ``reprlearn embed`` give), made unit length.

``--index`` is a data source (embedded at the run's image size and saved under ``RUN_DIR/search/``,
keyed by the source's images, the checkpoint and the vectors, then reused by the next query) or a
``.npy`` / ``.parquet`` written by ``reprlearn embed`` (the encoder's features, not embedded again;
their keys come from the Parquet table). Every hit carries its key: a file's path, a shard's
``SHARD_FILE_NAME/KEY``, or ``NAME:SPLIT/INDEX`` (see data/sources.py).

A text run (``mlm``) searches texts instead: :func:`search_texts` indexes the texts of a text
source (scenes captions, caption shards, a .txt or .csv; its test split where it has one) by
their pooled embeddings and returns the captions nearest a query sentence.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .curate.filters import unit_rows
from .errors import fail
from .files import atomic_write

EXACT_LIMIT = 50_000  # below this an exact search is fast enough (a 50k x 128 matmul per query)


@dataclass
class Hit:
    rank: int
    index: int  # position of the item in the index source
    score: float  # cosine similarity of query and item
    caption: str | None = None  # the item's first caption, when the source has captions
    key: str | None = None  # where the item came from: a file's path, SHARD_FILE_NAME/KEY, NAME:SPLIT/INDEX


def build_index(embeddings: np.ndarray, exact_limit: int = EXACT_LIMIT, nprobe: int = 16):
    """A FAISS inner-product index of (N, D) unit embeddings: exact when small, IVF when large."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, d = x.shape
    if n <= exact_limit:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = nprobe
    index.add(x)
    return index


def query_index(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (Q, k), best first."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    return index.search(q, min(k, index.ntotal))


def stored_vector(index, row: int) -> np.ndarray:
    """The vector ``index`` holds for ``row`` (an inverted-file index builds its id map first)."""
    import faiss

    if isinstance(index, faiss.IndexIVF):
        index.make_direct_map()
    return index.reconstruct(int(row))


def index_key(run_dir: Path, spec: str, *extra) -> str:
    """Changes when the source spec, ``extra`` (what the vectors are, the images' digest) or the
    checkpoint changes (a retrained run re-embeds)."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    st = ckpt.stat()
    return hashlib.sha1(json.dumps([spec, st.st_size, st.st_mtime_ns, *extra], default=str).encode()).hexdigest()[:16]


def saved_index(path: Path, vectors):
    """The FAISS index saved at ``path``, or one built from ``vectors()`` and saved there."""
    import faiss

    if path.is_file():
        return faiss.read_index(str(path))
    index = build_index(vectors())
    with atomic_write(path) as f:
        f.write(faiss.serialize_index(index).tobytes())
    return index


# ---------------------------------------------------------------- what a run's index holds


@dataclass
class Space:
    """The vectors of an index: ``name`` (part of a saved index's key) and ``module``, float images
    in [0, 1] (N, C, H, W) -> vectors (made unit length by :func:`embed_images`)."""

    name: str
    module: nn.Module
    embed_texts: Any = None  # texts -> unit vectors in the same space, for an image-text run


def image_space(method, embeddings_file: bool = False) -> Space:
    """An image-text run's joint space (text queries too), unless the index is a file of encoder
    features from ``reprlearn embed``; every other run's encoder features."""
    from .methods import EmbedsText

    if isinstance(method, EmbedsText) and not embeddings_file:
        return Space("image-tower", method.image_tower(), method.embed_texts)
    return Space("encoder", method.encoder)


def embed_images(space: Space, images: torch.Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) -> unit vectors (N, D)."""
    from .evaluate import extract

    return unit_rows(extract(space.module, images, 512))


# ---------------------------------------------------------------- what to search


@dataclass
class Indexed:
    """A searchable set: the FAISS index, each row's key, and a way to its images (for drawing)."""

    index: Any
    keys: list[str]
    images: Any  # images[row] -> (H, W, C) uint8 or None: an array, or FileImages
    captions: list[str] | None = None

    @cached_property
    def rows(self) -> dict[str, int]:
        return {key: i for i, key in enumerate(self.keys)}

    def row_of(self, key: str) -> int:
        if key not in self.rows:
            raise fail(f"--query-key {key!r} is not a key of the index ({len(self.keys)} rows, keys like "
                       f"{self.keys[0]!r}); give a key as `search` prints it or as the Parquet's key column holds it")
        return self.rows[key]


def is_embeddings_file(spec: str) -> bool:
    """True when ``--index`` names features written by ``reprlearn embed`` (.npy or .parquet)."""
    return isinstance(spec, str) and Path(spec).suffix in (".npy", ".parquet") and Path(spec).is_file()


def read_embeddings(path: str | Path) -> tuple[np.ndarray, list[str], dict]:
    """(features (N, D) float32, keys, metadata) of a .npy or .parquet written by ``reprlearn embed``;
    a .npy's keys come from the Parquet table beside it (row numbers when there is none)."""
    import pyarrow.parquet as pq

    path = Path(path)
    table_path = path if path.suffix == ".parquet" else path.with_suffix(".parquet")
    table = pq.read_table(table_path) if table_path.is_file() else None
    if path.suffix == ".npy":
        try:
            features = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise fail(f"{path} is not a readable .npy file ({str(e)[:60]}); "
                       "give one written by `reprlearn embed`") from None
    elif table is None or "embedding" not in table.column_names:
        raise fail(f"{path} has no embedding column; give a .parquet written by `reprlearn embed`")
    else:
        features = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating):
        raise fail(f"{path} holds {features.dtype} {features.shape}, not (N, D) features; "
                   "give a file from `reprlearn embed`")
    if table is not None and table.num_rows != len(features):
        raise fail(f"{table_path} has {table.num_rows} rows but {path} {len(features)} features; write both again "
                   "with `reprlearn embed`")
    keys = [str(k) for k in table["key"].to_pylist()] if table is not None else [str(i) for i in range(len(features))]
    meta = json.loads((table.schema.metadata or {}).get(b"reprlearn", b"{}")) if table is not None else {}
    return features.astype(np.float32), keys, meta


class FileImages:
    """The images of an embeddings file's rows, for drawing: a key that is a file is decoded at the run's
    size; otherwise the source the file was written from (its metadata) is loaded once (a cached decode)."""

    def __init__(self, keys: list[str], source: str | None, image_size: int, skip_bad: bool):
        self.keys, self.source, self.image_size, self.skip_bad = keys, source, image_size, skip_bad
        self._source_images = None

    def __getitem__(self, row: int) -> np.ndarray | None:
        from .data.decode import BadItem, decode_image

        path = Path(self.keys[row])
        if path.is_file():
            try:
                return decode_image(path.read_bytes(), str(path), self.image_size)
            except BadItem:
                return None
        if self._source_images is None and self.source:
            from .data.sources import load_source

            images = load_source(self.source, self.image_size, self.skip_bad)
            self._source_images = images if images.keys == self.keys else False  # another source now: no images
        return self._source_images.images[row] if self._source_images else None


def source_index(space: Space, info, run_dir: Path, spec: str, pairs: bool, skip_bad: bool) -> Indexed:
    """``spec``'s images at the run's size, their keys, and their index (saved in ``run_dir/search/``)."""
    from .data.pairs import load_pairs
    from .data.sources import fit_to, load_source

    captions = None
    if pairs:
        loaded = load_pairs(spec, split="test", image_size=info.image_size, skip_bad=skip_bad)
        images, captions = loaded.images, loaded.first_captions()
    else:
        images = load_source(spec, info.image_size, skip_bad)
    images = fit_to(images, info.image_size, info.channels, spec)
    keys = images.keys or [f"{images.name}/{i}" for i in range(len(images))]
    digest = hashlib.sha1(np.ascontiguousarray(images.images).data).hexdigest()  # the images, not only the spec
    path = run_dir / "search" / f"{index_key(run_dir, spec, space.name, digest, skip_bad)}.faiss"
    index = saved_index(path, lambda: embed_images(space, images.tensor()))
    return Indexed(index, keys, images.images, captions)


def file_index(space: Space, info, run_dir: Path, spec: str) -> Indexed:
    """The features of an embeddings file in an index (saved in ``run_dir/search/``, keyed by the file)."""
    features, keys, meta = read_embeddings(spec)
    dim = int(space.module.feature_dim)
    if features.shape[1] != dim:
        raise fail(f"{spec} holds {features.shape[1]}-dim features but {run_dir}'s encoder gives {dim}; "
                   f"embed with this run: reprlearn embed {run_dir} --data SOURCE --out {Path(spec).name}")
    if meta.get("image_size") not in (None, info.image_size):
        raise fail(f"{spec} was embedded at {meta['image_size']} px but {run_dir} was trained at {info.image_size} px; "
                   "embed again with this run")
    st = Path(spec).stat()
    key = index_key(run_dir, str(Path(spec).resolve()), "file", st.st_size, st.st_mtime_ns)
    path = run_dir / "search" / f"{key}.faiss"
    index = saved_index(path, lambda: unit_rows(features))
    return Indexed(index, keys, FileImages(keys, meta.get("source"), info.image_size, bool(meta.get("skip_bad"))))


# ---------------------------------------------------------------- queries


def query_image_batch(paths: list[str], info) -> torch.Tensor:
    """The query images decoded as the index's images are (the run's size and channels), uint8 (Q, C, H, W)."""
    from .data.decode import BadItem, decode_image
    from .data.imageset import ImageSet
    from .data.sources import fit_to

    arrays = []
    for p in paths:
        try:
            arrays.append(decode_image(Path(p).read_bytes(), p, info.image_size))
        except (FileNotFoundError, IsADirectoryError):
            raise fail(f"query image {p} does not exist; give the path of an image file") from None
        except BadItem as e:
            raise fail(str(e)) from None
    if len({a.shape[-1] for a in arrays}) > 1:
        arrays = [a if a.shape[-1] == 3 else np.repeat(a, 3, -1) for a in arrays]
    return fit_to(ImageSet(np.stack(arrays), name="query images"), info.image_size, info.channels,
                  "the query images").tensor()


def search(method, info, run_dir: str | Path, index_source: str, queries: list[str] | None = None,
           query_images: list[str] | None = None, k: int = 8, query_keys: list[str] | None = None,
           skip_bad: bool = False) -> tuple[list[list[Hit]], Any]:
    """Top-``k`` items of ``index_source`` for each text query, query image and query key.

    ``method`` is a loaded image method with its :class:`DataInfo`; text queries need an image-text
    run (``EmbedsText``) and a source index. Returns one list of hits per query (texts first, then
    images, then keys) and the index's images (``images[hit.index]`` -> (H, W, C) uint8 or None).
    """
    queries, query_images, query_keys = list(queries or []), list(query_images or []), list(query_keys or [])
    if not (queries or query_images or query_keys):
        raise fail("nothing to search for; give --query TEXT, --query-image PATH or --query-key KEY")
    if k < 1:
        raise fail(f"--k must be at least 1, got {k}")
    run_dir = Path(run_dir)
    from_file = is_embeddings_file(index_source)
    space = image_space(method, from_file)
    if queries and space.embed_texts is None:
        raise fail(f"{index_source} holds encoder features from `reprlearn embed`; text queries need an index "
                   "embedded by the image tower: give --index SOURCE (the images)")
    query_batch = query_image_batch(query_images, info) if query_images else None  # bad paths named first
    if from_file:
        indexed = file_index(space, info, run_dir, index_source)
    else:
        from .data.pairs import is_pair_source
        from .methods import EmbedsText

        # an image-text run indexes a caption source's test split, with the captions beside its hits
        pairs = isinstance(method, EmbedsText) and is_pair_source(index_source)
        indexed = source_index(space, info, run_dir, index_source, pairs, skip_bad)
    vectors = []
    if queries:
        vectors.append(unit_rows(space.embed_texts(queries).cpu().numpy()))
    if query_batch is not None:
        vectors.append(embed_images(space, query_batch))
    if query_keys:
        vectors.append(np.stack([stored_vector(indexed.index, indexed.row_of(key)) for key in query_keys]))
    scores, ids = query_index(indexed.index, np.concatenate(vectors), k)
    caps = indexed.captions
    hits = [[Hit(r + 1, int(i), float(s), caps[int(i)] if caps else None, indexed.keys[int(i)])
             for r, (s, i) in enumerate(zip(row_s, row_i)) if i >= 0] for row_s, row_i in zip(scores, ids)]
    return hits, indexed.images


def _short(key: str | None, width: int = 24) -> str:
    """A key that fits under a thumbnail: its end, where a file's name is."""
    if not key:
        return ""
    return key if len(key) <= width else "…" + key[-(width - 1):]


def _image_at(images, row: int) -> np.ndarray | None:
    try:
        return images[row]
    except (IndexError, KeyError):
        return None


def contact_sheet(titles: list[str], hits: list[list[Hit]], images, path: str | Path) -> Path:
    """A PNG with one row per query: its top hits, each with its score above and its key (path) below.
    ``images[hit.index]`` gives a hit's (H, W, C) uint8 image (an array, or None to leave a blank tile)."""
    import matplotlib

    from .data.pixels import display_rgb

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(h) for h in hits)
    fig, axes = plt.subplots(len(hits), cols, figsize=(1.6 * cols, 2.1 * len(hits)), squeeze=False)
    for row, (title, row_hits) in enumerate(zip(titles, hits)):
        for col in range(cols):
            ax = axes[row, col]
            ax.axis("off")
            if col >= len(row_hits):
                continue
            hit = row_hits[col]
            img = _image_at(images, hit.index)
            if img is not None:
                ax.imshow(display_rgb(img))
            else:
                ax.text(0.5, 0.5, "(no image)", ha="center", va="center", fontsize=6, transform=ax.transAxes)
            ax.set_title(f"{hit.score:.3f}", fontsize=7)
            ax.text(0.5, -0.04, _short(hit.key), transform=ax.transAxes, ha="center", va="top", fontsize=5)
        axes[row, 0].text(-0.1, 0.5, title, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=8,
                          wrap=True)
    fig.subplots_adjust(left=0.22, wspace=0.08, hspace=0.5)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def search_texts(method, run_dir: str | Path, index_source: str, queries: list[str], k: int = 8) -> list[list[Hit]]:
    """Top-``k`` texts of ``index_source`` (its test split where it has one) for each query sentence,
    by the cosine similarity of a text run's pooled embeddings (``method.embed_texts``)."""
    from .data.texts import load_texts

    if not queries:
        raise fail("a text run searches texts; give --query TEXT (query images need an image-text run)")
    if k < 1:
        raise fail(f"--k must be at least 1, got {k}")
    run_dir = Path(run_dir)
    train, test = load_texts(index_source, "train")
    texts = (test or train).texts
    path = run_dir / "search" / f"{index_key(run_dir, 'texts:' + index_source)}.faiss"
    index = saved_index(path, lambda: method.embed_texts(texts).cpu().numpy())
    scores, ids = query_index(index, method.embed_texts(queries).cpu().numpy(), k)
    return [[Hit(r + 1, int(i), float(s), texts[int(i)]) for r, (s, i) in enumerate(zip(row_s, row_i)) if i >= 0]
            for row_s, row_i in zip(scores, ids)]
