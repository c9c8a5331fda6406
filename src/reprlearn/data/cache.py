"""A cache of decoded sources: uint8 arrays in an .npz, keyed by the input's content.

Decoding 50,000 JPEGs takes tens of seconds; reading the cached arrays back takes
well under one. Entries are written atomically (temporary file, then rename), so
an interrupted run never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..files import atomic_write
from .imageset import ImageSet

CACHE_VERSION = 1  # bump when decoding changes, so stale entries are not reused


def cache_dir() -> Path:
    root = os.environ.get("REPRLEARN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "reprlearn")
    return Path(root)


def content_key(*parts) -> str:
    text = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def cached(key: str, decode: Callable[[], ImageSet]) -> ImageSet:
    path = cache_dir() / "decoded" / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                labels = f["labels"] if f["has_labels"] else None
                names = [str(n) for n in f["class_names"]] or None
                skipped = [str(s) for s in f["skipped"]]
                return ImageSet(f["images"], labels, names, str(f["name"]), skipped)
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # unreadable entry: decode again
    result = decode()
    try:
        with atomic_write(path) as f:
            np.savez(f, images=result.images,
                     labels=result.labels if result.labels is not None else np.zeros(0, np.int64),
                     has_labels=result.labels is not None,
                     class_names=np.asarray(result.class_names or [], dtype=str),
                     skipped=np.asarray(result.skipped, dtype=str), name=result.name)
    except OSError:
        pass  # a cache we cannot write only costs time
    return result
