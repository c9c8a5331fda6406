"""The baselines' scores, kept between evaluations of runs on the same data.

Raw pixels and PCA do not depend on the run at all, and the random-init encoder only on its
architecture and seed, yet scoring them (k-means with 10 starts on 3,072-d CIFAR pixels, three
linear-probe sweeps) was about two thirds of a CIFAR-10 `reprlearn eval`. Each baseline's scores
are stored under a key made of everything they are computed from: the very input arrays
(pixels or features, and labels, hashed byte for byte), the probe options, the source of the
code that scores them (probes.py, harness.py) and the torch and scikit-learn versions. A
changed pixel, option, probe or library is a different key, so a stored score is only ever
reused for the same computation. Entries are small JSON files, written atomically, under
``$REPRLEARN_CACHE/baselines`` (``~/.cache/reprlearn`` by default); ``--no-baseline-cache`` scores
every baseline afresh.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.cache import cache_dir
from ..files import atomic_write

BASELINE_CACHE_VERSION = 1


# the code a baseline's scores are computed by: a change to any of them scores the baselines afresh
CODE_FILES = ("probes.py", "harness.py", "kmeans.py", "fixed_rows.py", "softmax_fit.py")


def _code_digest() -> str:
    import faiss
    import scipy
    import sklearn

    h = hashlib.blake2b(digest_size=16)
    for name in CODE_FILES:
        h.update((Path(__file__).parent / name).read_bytes())
    h.update(f"{torch.__version__} {sklearn.__version__} {scipy.__version__} {faiss.__version__}".encode())
    return h.hexdigest()


def baseline_key(name: str, options: dict, arrays: list) -> str:
    """The key of one baseline's scores: its name, options, code and input arrays' bytes."""
    h = hashlib.blake2b(digest_size=20)
    h.update(json.dumps([BASELINE_CACHE_VERSION, _code_digest(), name, options], sort_keys=True, default=str).encode())
    for a in arrays:
        a = np.ascontiguousarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cached_scores(name: str, options: dict, arrays: list, compute: Callable[[], dict]) -> tuple[dict, bool]:
    """``compute()``'s scores, or the stored ones of the same computation; and whether they were stored."""
    path = cache_dir() / "baselines" / f"{baseline_key(name, options, arrays)}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text()), True
        except (OSError, ValueError):
            pass  # unreadable entry: score afresh and overwrite it
    scores = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as f:
            json.dump(scores, f)
    except OSError:
        pass  # a read-only cache only costs the time saved
    return scores, False
