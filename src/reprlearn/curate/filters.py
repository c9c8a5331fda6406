"""Filtering a scored pool by composable rules, each as DataComp defines it (``reprlearn curate filter``).

A rule names a filter and its options; ``A&B`` keeps what both keep, ``A|B`` what either
keeps (``&`` binds tighter), and several rules given one after another are intersected.

  none                    every pair
  clip-score:top=F        the pairs whose CLIP score is at least the score at rank floor(F N) of
                          the whole pool, ranked from the highest (rank 0); ties at the threshold
                          are kept, so at least floor(F N) + 1 pairs are (DataComp's CLIP score
                          filtering; F in (0, 1], F = 1 keeps all)
  clip-score:min=X        the pairs whose score is at least X (an absolute threshold)
  image-based[:clusters=K]  DataComp's image-based filter: a caption pre-filter (more than one
                          word, more than five characters), then FAISS k-means (K centroids,
                          default 100) of the pre-filtered pool's image embeddings; a pair is kept
                          when its nearest centroid is the nearest centroid of at least one image
                          of the target set (DataComp: ImageNet-1k train). Deviations: DataComp's
                          pre-filter also keeps English captions only (a fastText language model)
                          and counts fastText tokens, here whitespace words; DataComp ships
                          centroids fitted once on its pool, here they are fitted on the
                          pre-filtered pool being filtered.
  dedup:cos=C             near-duplicate removal: in pool order, a pair is dropped when its image
                          embedding has cosine >= C with a pair kept before it
  min-words=N, min-chars=N  the caption has at least N words / N characters

Rules see the pool as columns (``score``, ``words``, ``chars``) and its unit image embeddings.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import fail

DEFAULT_CLUSTERS = 100
PRE_MIN_WORDS, PRE_MIN_CHARS = 2, 6  # "more than one word, more than five characters"


@dataclass
class PoolView:
    """What a rule decides on: per-pair columns and the pairs' image embeddings (N, D)."""

    score: np.ndarray
    words: np.ndarray
    chars: np.ndarray
    embeddings: np.ndarray
    target: Callable[[], np.ndarray] | None = None  # the target set's image embeddings, computed when asked
    seed: int = 0
    clusters: int = DEFAULT_CLUSTERS  # image-based rules that name no clusters=

    def __len__(self) -> int:
        return len(self.score)


# ---------------------------------------------------------------- the filters themselves


def clip_score_top(score: np.ndarray, fraction: float) -> np.ndarray:
    """Keep score >= the score at rank floor(fraction N) in descending order (ties kept)."""
    if not 0 < fraction <= 1:
        raise fail(f"clip-score:top={fraction} is not a fraction in (0, 1]; e.g. clip-score:top=0.3")
    if len(score) == 0:
        return np.zeros(0, bool)
    rank = min(int(math.floor(fraction * len(score))), len(score) - 1)
    threshold = np.sort(score)[::-1][rank]
    return score >= threshold


def clip_score_min(score: np.ndarray, threshold: float) -> np.ndarray:
    return score >= threshold


def caption_prefilter(words: np.ndarray, chars: np.ndarray) -> np.ndarray:
    return (words >= PRE_MIN_WORDS) & (chars >= PRE_MIN_CHARS)


def kmeans_centroids(embeddings: np.ndarray, k: int, seed: int = 0, niter: int = 20, nredo: int = 3) -> np.ndarray:
    """(k, D) unit centroids of FAISS spherical k-means on unit embeddings."""
    import faiss

    x = unit_rows(embeddings)
    if len(x) < k:
        raise fail(f"image-based: {len(x)} pairs pass the caption pre-filter, fewer than clusters={k}; "
                   "give fewer clusters (image-based:clusters=K)")
    # a few restarts (the best objective wins): one random start can merge two clusters and split another
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False, nredo=nredo,
                      min_points_per_centroid=1)
    km.train(x)
    return unit_rows(km.centroids)


def nearest_centroid(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of each embedding's nearest centroid (largest cosine; exact FAISS inner-product search)."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, np.float32))
    _, nearest = index.search(unit_rows(embeddings), 1)
    return nearest[:, 0]


def image_based(view: PoolView, clusters: int) -> np.ndarray:
    if view.target is None:
        raise fail("image-based needs a target set; give --target SOURCE (images whose clusters are kept)")
    passed = caption_prefilter(view.words, view.chars)
    centroids = kmeans_centroids(view.embeddings[passed], clusters, view.seed)
    wanted = np.unique(nearest_centroid(view.target(), centroids))
    return passed & np.isin(nearest_centroid(view.embeddings, centroids), wanted)


def dedup(embeddings: np.ndarray, cos: float) -> np.ndarray:
    """Greedy in pool order: drop a pair whose cosine with an earlier kept pair is >= ``cos``."""
    import faiss

    if not -1 <= cos <= 1:
        raise fail(f"dedup:cos={cos} is not a cosine in [-1, 1]; e.g. dedup:cos=0.95")
    x = unit_rows(embeddings)
    keep = np.ones(len(x), bool)
    if len(x) == 0:
        return keep
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    # range_search keeps inner products > radius; nudge it down one float32 step so >= is kept
    lims, _, ids = index.range_search(x, float(np.nextafter(np.float32(cos), np.float32(-2))))
    for i in range(len(x)):
        earlier = ids[lims[i]:lims[i + 1]]
        earlier = earlier[earlier < i]
        if earlier.size and keep[earlier].any():
            keep[i] = False
    return keep


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows as contiguous float32 scaled to length 1 (an all-zero row stays zero), so inner products are
    cosines (also what reprlearn.search indexes)."""
    x = np.ascontiguousarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------- rules


def _options(rule: str, options: str, known: dict[str, type]) -> dict:
    out = {}
    for item in (x.strip() for x in options.split(",") if x.strip()):
        key, eq, value = item.partition("=")
        if not eq or key not in known:
            raise fail(f"rule {rule!r}: option {item!r} is not one of {', '.join(k + '=' for k in known)}")
        try:
            out[key] = known[key](value)
        except ValueError:
            raise fail(f"rule {rule!r}: {key}={value!r} is not a {known[key].__name__}") from None
    return out


RULES = ("none", "clip-score:top=F", "clip-score:min=X", "image-based[:clusters=K]", "dedup:cos=C",
         "min-words=N", "min-chars=N")


def apply_rule(rule: str, view: PoolView) -> np.ndarray:
    """The keep mask (N,) of one rule string, with ``&`` and ``|`` (see the module docstring)."""
    rule = rule.strip()
    if "|" in rule:
        return np.logical_or.reduce([apply_rule(r, view) for r in rule.split("|")])
    if "&" in rule:
        return np.logical_and.reduce([apply_rule(r, view) for r in rule.split("&")])
    head, _, options = rule.partition(":")
    if rule == "none":
        return np.ones(len(view), bool)
    if head == "clip-score":
        o = _options(rule, options, {"top": float, "min": float})
        if len(o) != 1:
            raise fail(f"rule {rule!r} needs one of top=F (a fraction of the pool) or min=X (a score), not "
                       f"{'both' if o else 'neither'}; e.g. clip-score:top=0.3")
        return clip_score_top(view.score, o["top"]) if "top" in o else clip_score_min(view.score, o["min"])
    if head == "image-based":
        o = _options(rule, options, {"clusters": int})
        k = o.get("clusters", view.clusters)
        if k < 1:
            raise fail(f"rule {rule!r}: clusters must be at least 1")
        return image_based(view, k)
    if head == "dedup":
        o = _options(rule, options, {"cos": float})
        if "cos" not in o:
            raise fail(f"rule {rule!r} needs cos=C; e.g. dedup:cos=0.95")
        return dedup(view.embeddings, o["cos"])
    m = re.fullmatch(r"(min-words|min-chars)=(-?\d+)", rule)
    if m:
        column = view.words if m.group(1) == "min-words" else view.chars
        return column >= int(m.group(2))
    raise fail(f"unknown filter rule {rule!r}; the rules are {', '.join(RULES)}, joined by & (both) or | (either)")


def keep_mask(rules: list[str], view: PoolView) -> np.ndarray:
    """The pairs every rule keeps."""
    if not rules:
        raise fail("no rule to filter by; give --keep RULE (e.g. --keep clip-score:top=0.3)")
    return np.logical_and.reduce([apply_rule(r, view) for r in rules])
