"""Semantic search over a folder/shard/set of images with a trained image-text run.

The images of ``--index SOURCE`` are embedded once by the run's image tower and kept
in a FAISS inner-product index (unit embeddings, so the score is the cosine
similarity): exact (``IndexFlatIP``) up to ``EXACT_LIMIT`` items, an inverted-file
index (``IndexIVFFlat``, approximate, ``nprobe`` lists searched) beyond. The index is
saved under ``RUN_DIR/search/`` keyed by the source and the checkpoint, and reused by
the next query.

A text run (``mlm``) searches texts instead: :func:`search_texts` indexes the texts of a text
source (scenes captions, caption shards, a .txt or .csv; its test split where it has one) by
their pooled embeddings and returns the captions nearest a query sentence.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data.pixels import unit_float
from .errors import fail
from .files import atomic_write

EXACT_LIMIT = 50_000  # below this an exact search is fast enough (a 50k x 128 matmul per query)


@dataclass
class Hit:
    rank: int
    index: int  # position of the item in the index source
    score: float  # cosine similarity of query and item
    caption: str | None = None  # the item's first caption, when the source has captions


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


def index_key(run_dir: Path, spec: str) -> str:
    """Changes when the source spec or the checkpoint changes (a retrained run re-embeds)."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    st = ckpt.stat()
    return hashlib.sha1(json.dumps([spec, st.st_size, st.st_mtime_ns]).encode()).hexdigest()[:16]


def search(method, info, run_dir: str | Path, index_source: str, queries: list[str] | None = None,
           query_images: list[str] | None = None, k: int = 8) -> tuple[list[list[Hit]], np.ndarray]:
    """Top-``k`` items of ``index_source`` for each text query and each query image.

    ``method`` is a loaded image-text method (``embed_texts``, ``image_tower``, ``encode_image``)
    with its :class:`DataInfo`; its index is kept in ``run_dir/search/``. Returns one list of
    hits per query (texts first, then images) and the index source's uint8 images
    (N, H, W, C) for drawing results.
    """
    from .data.decode import BadItem, decode_image
    from .data.pairs import is_pair_source, load_pairs
    from .data.sources import load_source
    from .evaluate import extract

    queries, query_images = list(queries or []), list(query_images or [])
    if not queries and not query_images:
        raise fail("nothing to search for; give --query TEXT or --query-image PATH")
    if k < 1:
        raise fail(f"--k must be at least 1, got {k}")
    run_dir = Path(run_dir)
    captions = None
    if is_pair_source(index_source):
        pairs = load_pairs(index_source, split="test", image_size=info.image_size)
        images, captions = pairs.images, pairs.first_captions()
    else:
        images = load_source(index_source, info.image_size)
    info.check_images(images, index_source)
    path = run_dir / "search" / f"{index_key(run_dir, index_source)}.faiss"
    import faiss

    if path.is_file():
        index = faiss.read_index(str(path))
    else:
        emb = extract(method.image_tower(), images.tensor(), 512)
        index = build_index(emb)
        with atomic_write(path) as f:
            f.write(faiss.serialize_index(index).tobytes())
    query_emb = []
    if queries:
        query_emb.append(method.embed_texts(queries).cpu().numpy())
    for p in query_images:
        try:
            img = decode_image(Path(p).read_bytes(), p, info.image_size)
        except FileNotFoundError:
            raise fail(f"query image {p} does not exist") from None
        except BadItem as e:
            raise fail(str(e)) from None
        if img.shape[-1] != info.channels:
            img = np.repeat(img, 3, -1) if info.channels == 3 else img.mean(-1, keepdims=True).astype(img.dtype)
        x = unit_float(torch.from_numpy(img).permute(2, 0, 1)[None])
        with torch.no_grad():
            query_emb.append(method.encode_image(x).cpu().numpy())
    scores, ids = query_index(index, np.concatenate(query_emb), k)
    hits = [[Hit(r + 1, int(i), float(s), captions[int(i)] if captions else None)
             for r, (s, i) in enumerate(zip(row_s, row_i)) if i >= 0] for row_s, row_i in zip(scores, ids)]
    return hits, images.images


def contact_sheet(titles: list[str], hits: list[list[Hit]], images: np.ndarray, path: str | Path) -> Path:
    """A PNG with one row per query: its top hits with their scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(h) for h in hits)
    fig, axes = plt.subplots(len(hits), cols, figsize=(1.6 * cols, 1.9 * len(hits)), squeeze=False)
    for row, (title, row_hits) in enumerate(zip(titles, hits)):
        for col in range(cols):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(row_hits):
                img = images[row_hits[col].index]
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
                ax.set_title(f"{row_hits[col].score:.2f}", fontsize=7)
        axes[row, 0].text(-0.1, 0.5, title, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=8,
                          wrap=True)
    fig.subplots_adjust(left=0.22, wspace=0.05, hspace=0.35)
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
    import faiss

    if path.is_file():
        index = faiss.read_index(str(path))
    else:
        index = build_index(method.embed_texts(texts).cpu().numpy())
        with atomic_write(path) as f:
            f.write(faiss.serialize_index(index).tobytes())
    scores, ids = query_index(index, method.embed_texts(queries).cpu().numpy(), k)
    return [[Hit(r + 1, int(i), float(s), texts[int(i)]) for r, (s, i) in enumerate(zip(row_s, row_i)) if i >= 0]
            for row_s, row_i in zip(scores, ids)]
