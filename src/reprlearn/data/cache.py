"""A cache of decoded sources: arrays (uint8, uint16 or float32) in an .npz, keyed by the input's content.

Decoding 50,000 JPEGs takes tens of seconds; reading the cached arrays back takes
well under one. Entries are written atomically (temporary file, then rename), so
an interrupted run never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ReprlearnError, fail
from ..files import atomic_write
from .imageset import ImageSet

CACHE_VERSION = 4  # bump when decoding changes, so stale entries are not reused (4: keys; 16-bit and TIFF kept deep)


def cache_dir() -> Path:
    root = os.environ.get("REPRLEARN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "reprlearn")
    return Path(root)


def content_key(*parts) -> str:
    text = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def image_set_arrays(images: ImageSet) -> dict[str, np.ndarray]:
    """The cache's arrays for an ImageSet."""
    return {"images": images.images,
            "labels": images.labels if images.labels is not None else np.zeros(0, np.int64),
            "has_labels": images.labels is not None,
            "class_names": np.asarray(images.class_names or [], dtype=str),
            "skipped": np.asarray(images.skipped, dtype=str), "name": images.name,
            "has_keys": images.keys is not None, "keys": np.asarray(images.keys or [], dtype=str),
            **columns_arrays(images.columns)}


def image_set_from(f) -> ImageSet:
    """Inverse of :func:`image_set_arrays` on an opened .npz."""
    labels = f["labels"] if f["has_labels"] else None
    # an entry written before images had keys (or by a source without them) restores keys as None
    keys = [str(k) for k in f["keys"]] if "has_keys" in f.files and f["has_keys"] else None
    return ImageSet(f["images"], labels, [str(n) for n in f["class_names"]] or None, str(f["name"]),
                    [str(s) for s in f["skipped"]], keys, columns_from(f))


def columns_arrays(columns: dict[str, Any]) -> dict[str, np.ndarray]:
    """A set's other fields as arrays: numeric arrays as they are, lists of strings, lists of string lists."""
    out: dict[str, np.ndarray] = {"column_names": np.asarray(list(columns), dtype=str),
                                  "column_kinds": np.asarray([_column_kind(n, c) for n, c in columns.items()], dtype=str)}
    for name, column in columns.items():
        kind = _column_kind(name, column)
        if kind == "array":
            out[f"column_{name}"] = column
        elif kind == "strings":
            out[f"column_{name}"] = np.asarray(column, dtype=str)
        else:
            out.update(text_lists_arrays(f"column_{name}", column))
    return out


def columns_from(f) -> dict[str, Any]:
    """Inverse of :func:`columns_arrays` (an entry without columns gives none)."""
    if "column_names" not in f.files:
        return {}
    columns: dict[str, Any] = {}
    for name, kind in zip(f["column_names"], f["column_kinds"]):
        name = str(name)
        columns[name] = f[f"column_{name}"] if kind == "array" else [str(v) for v in f[f"column_{name}"]] \
            if kind == "strings" else text_lists_from(f, f"column_{name}")
    return columns


def _column_kind(name: str, column) -> str:
    if isinstance(column, np.ndarray) and column.dtype != object:
        return "array"
    if all(isinstance(v, str) for v in column):
        return "strings"
    if all(isinstance(v, list) and all(isinstance(t, str) for t in v) for v in column):
        return "texts"
    raise fail(f"field {name!r} holds values the decoded-set cache cannot store; give it as one array "
               "(N, ...), a list of strings or a list of lists of strings")


def text_lists_arrays(prefix: str, lists: list[list[str]]) -> dict[str, np.ndarray]:
    """Lists of strings as three arrays: PREFIX_bytes (utf-8, joined), PREFIX_ends, PREFIX_counts."""
    encoded = [t.encode("utf-8") for texts in lists for t in texts]
    return {f"{prefix}_bytes": np.frombuffer(b"".join(encoded), dtype=np.uint8),
            f"{prefix}_ends": np.cumsum([len(b) for b in encoded], dtype=np.int64),
            f"{prefix}_counts": np.asarray([len(texts) for texts in lists], dtype=np.int64)}


def text_lists_from(f, prefix: str) -> list[list[str]]:
    """Inverse of :func:`text_lists_arrays` on an opened .npz."""
    blob = f[f"{prefix}_bytes"].tobytes()
    ends, counts = f[f"{prefix}_ends"], f[f"{prefix}_counts"]
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    flat = [blob[s:e].decode("utf-8") for s, e in zip(starts, ends)]
    bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return [flat[bounds[i]:bounds[i + 1]] for i in range(len(counts))]


def cached(key: str, decode: Callable[[], Any], encode: Callable[[Any], dict] = image_set_arrays,
           restore: Callable[[Any], Any] = image_set_from, prefix: str = "") -> Any:
    """``decode()``'s result, read back from ``cache_dir()/decoded/PREFIXKEY.npz`` when present.

    ``encode`` turns a result into named arrays and ``restore`` rebuilds it from the opened
    file: ImageSets by default; PairSets add their captions (data/pairset.py).
    """
    path = cache_dir() / "decoded" / f"{prefix}{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return restore(f)
        except (OSError, ValueError, KeyError, UnicodeDecodeError, ReprlearnError):
            path.unlink(missing_ok=True)  # unreadable entry: decode again
    result = decode()
    try:
        with atomic_write(path) as f:
            np.savez(f, **encode(result))
    except OSError:
        pass  # a cache we cannot write only costs time
    return result
