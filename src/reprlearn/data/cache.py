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

from ..errors import ReprlearnError
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
            "has_keys": images.keys is not None, "keys": np.asarray(images.keys or [], dtype=str)}


def image_set_from(f) -> ImageSet:
    """Inverse of :func:`image_set_arrays` on an opened .npz."""
    labels = f["labels"] if f["has_labels"] else None
    # an entry written before images had keys (or by a source without them) restores keys as None
    keys = [str(k) for k in f["keys"]] if "has_keys" in f.files and f["has_keys"] else None
    return ImageSet(f["images"], labels, [str(n) for n in f["class_names"]] or None, str(f["name"]),
                    [str(s) for s in f["skipped"]], keys)


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
