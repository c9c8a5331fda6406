"""k-means in torch: greedy k-means++ starts and Lloyd's iterations, every start in one batch.

The clustering probe (:func:`reprlearn.evaluate.probes.cluster_scores`) runs k-means with 10
starts on up to 10,000 x 3,072 features (CIFAR-10 pixels). scikit-learn runs the starts one
after another, and with k = 10 each of its distance computations is a GEMM with a 10-column
side, which BLAS runs far below its peak: its 10 k-means++ seedings alone took 8 s on 2 cores,
the whole fit 17.6 s. Here all starts share one GEMM per step (k x starts columns), the starts
that have converged drop out of the batch, Hamerly's bounds (2010) skip the points whose label
cannot change, and each cluster's sum is updated by the points that moved: 0.3 s of seeding and
5.4-6.6 s in all on the same data and machine, on the features' device (a GPU when they are there).

The algorithm is scikit-learn's ``KMeans(n_init=10, algorithm="lloyd")`` in its definitions
(greedy k-means++ with 2 + ln k candidates per centre, Arthur and Vassilvitskii 2007; Lloyd's
steps until no label changes or the centres move less than ``tol`` times the mean feature
variance; empty clusters re-seeded with the points farthest from their centres; the start of
lowest inertia kept). The random draws are torch's, so a start is not scikit-learn's start for
the same seed, and on data with several near-equal optima the chosen partition can differ:
the test compares the two on blobs, and benchmarks/RESULTS.md the NMI/ARI on CIFAR-10.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .fixed_rows import FixedRows


def squared_distances(x: FixedRows | torch.Tensor, x_sq: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N, m) squared Euclidean distances of the rows of ``x`` (norms ``x_sq``) to ``centres`` (m, D)."""
    dots = FixedRows.of(x, onednn=False).times(centres)  # a fresh subset of rows: no copy to amortise
    return (x_sq[:, None] - 2 * dots + centres.pow(2).sum(1)[None]).clamp_(min=0)


def kmeans_plusplus(x: FixedRows | torch.Tensor, x_sq: torch.Tensor, k: int, starts: int, generator: torch.Generator,
                    trials: int | None = None) -> torch.Tensor:
    """``starts`` independent greedy k-means++ seedings at once: (starts, k) row indices of ``x``.

    The first centre is uniform; each next one is the best (lowest potential, the summed squared
    distance to the nearest centre) of ``trials`` candidates drawn with probability proportional
    to that squared distance (D^2 sampling). ``trials`` defaults to 2 + floor(ln k), scikit-learn's."""
    fixed = FixedRows.of(x)
    x, n = fixed.x, len(fixed)
    trials = trials or 2 + int(math.log(k))
    picks = [torch.randint(n, (starts,), generator=generator, device=x.device)]
    closest = squared_distances(fixed, x_sq, x[picks[0]]).T  # (starts, N)
    rows = torch.arange(starts, device=x.device)
    for _ in range(1, k):
        cumulative = closest.double().cumsum(1)
        draws = torch.rand(starts, trials, generator=generator, device=x.device, dtype=torch.float64)
        candidates = torch.searchsorted(cumulative, draws * cumulative[:, -1:]).clamp_(max=n - 1)
        d = squared_distances(fixed, x_sq, x[candidates.flatten()]).T.reshape(starts, trials, n)
        d = torch.minimum(d, closest[:, None])
        best = d.double().sum(2).argmin(1)
        closest = d[rows, best]
        picks.append(candidates[rows, best])
    return torch.stack(picks, 1)


def _reseed_empty(centres: torch.Tensor, counts: torch.Tensor, x: torch.Tensor, own: torch.Tensor) -> None:
    """Give the empty clusters of each start new centres, in place: the points farthest from their
    own centres (``own``: (N, starts) distances, or upper bounds of them), farthest first, as
    scikit-learn relocates them; the clusters those points leave are corrected by the next step."""
    for b in torch.nonzero((counts == 0).any(1)).flatten().tolist():
        empty = torch.nonzero(counts[b] == 0).flatten()
        centres[b, empty] = x[own[:, b].topk(len(empty)).indices]


RECOMPUTE_ABOVE = 0.25  # a step in which more than this fraction of the points move sums every cluster afresh


def kmeans(features, k: int, starts: int = 10, seed: int = 0, max_iter: int = 300,
           tol: float = 1e-4) -> tuple[torch.Tensor, float]:
    """Lloyd's k-means with ``starts`` greedy k-means++ seedings, all run as one batch.

    Returns (labels (N,) long, inertia) of the start with the lowest inertia (the summed squared
    distance of each point to its centre; the first such start on a tie)."""
    x = torch.as_tensor(features).float()
    x = x - x.mean(0)  # centred, as scikit-learn: the partition is the same, the distances more accurate
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= {n} clusters, got {k}")
    x_sq = x.pow(2).sum(1)
    g = torch.Generator(device=x.device).manual_seed(seed)
    fixed = FixedRows(x)  # one oneDNN copy of x for the seeding's and Lloyd's products (fixed_rows.py)
    seeds = kmeans_plusplus(fixed, x_sq, k, starts, g)
    labels, inertia = lloyd(fixed, x[seeds], max_iter, tol * float(x.var(0, unbiased=False).mean()))
    best = int(inertia.argmin())
    return labels[best], float(inertia[best])


def lloyd(x: FixedRows | torch.Tensor, centres: torch.Tensor, max_iter: int = 300,
          tol_abs: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's iterations from each start's ``centres`` (starts, k, D), all starts in one batch.

    A start stops when no label changes, or when its centres move by at most ``tol_abs`` (summed
    squared shift); its labels are then those of its final centres. Each cluster's sum is kept
    in float64 and, once few points move, updated by the points that moved alone. Returns
    (labels (starts, N), inertia (starts,) float64)."""
    fixed = FixedRows.of(x)
    x = fixed.x
    centres = centres.clone()
    starts, k, _ = centres.shape
    n = len(x)
    x_sq = x.pow(2).sum(1)
    labels = torch.full((starts, n), -1, dtype=torch.long, device=x.device)
    sums = x.new_zeros(starts, k, x.shape[1], dtype=torch.float64)  # each cluster's summed members
    # Hamerly's bounds (2010): upper >= the distance to the own centre, lower <= the distance to any
    # other; a point whose upper bound is below its lower bound keeps its label without a distance
    upper = x.new_full((starts, n), float("inf"))
    lower = x.new_zeros(starts, n)
    slack = 1e-5 * (1.0 + float(x_sq.max()) ** 0.5)  # float32 rounding of the distances
    active = torch.ones(starts, dtype=torch.bool, device=x.device)
    for step in range(max_iter):
        idx = torch.nonzero(active).flatten()
        if len(idx) == 0:
            break
        b = len(idx)
        old, up, low = labels[idx], upper[idx], lower[idx]
        new = old.clone()
        rows = torch.nonzero((up + slack > low).any(0)).flatten()  # points some start must look at
        if len(rows):
            whole = len(rows) > 0.35 * n  # gathering a third of x costs about what its distances save
            d = squared_distances(fixed if whole else x[rows], x_sq if whole else x_sq[rows],
                                  centres[idx].reshape(b * k, -1)).reshape(-1, b, k).sqrt_()
            rows = slice(None) if whole else rows
            nearest, which = d.min(2)  # two min() passes: topk(2) of 10 values is 5x slower on a CPU
            new[:, rows], up[:, rows] = which.T, nearest.T
            low[:, rows] = d.scatter_(2, which[..., None], float("inf")).min(2).values.T
        offset = k * torch.arange(b, device=x.device)[:, None]
        start, point = torch.nonzero(new != old, as_tuple=True)
        changed, column = torch.unique(point, return_inverse=True)
        if step == 0 or len(changed) > RECOMPUTE_ABOVE * n:  # every sum afresh: (b k, N) 0/1 members times x
            members = x.new_zeros(b * k, n).scatter_(0, new + offset, 1.0)
            s = fixed.left(members).double()
        else:  # only the points that changed cluster move the sums (after a few steps, a few hundred)
            moves = x.new_zeros(b * k, len(changed), dtype=torch.float64)
            moves.index_put_(((new + offset)[start, point], column), moves.new_ones(()), accumulate=True)
            moves.index_put_(((old + offset)[start, point], column), -moves.new_ones(()), accumulate=True)
            s = sums[idx].reshape(b * k, -1) + moves @ x[changed].double()
        sums[idx] = s.reshape(b, k, -1)
        counts = F.one_hot(new, k).sum(1)  # (b, k)
        updated = (sums[idx] / counts.clamp(min=1)[..., None]).to(x.dtype)
        if (counts == 0).any():
            updated = torch.where(counts[..., None] > 0, updated, centres[idx])
            _reseed_empty(updated, counts, x, up.T)
        same = (new == old).all(1)
        updated = torch.where(same[:, None, None], centres[idx], updated)
        shift = (updated - centres[idx]).pow(2).sum(2)  # (b, k)
        moved = shift.sqrt()
        labels[idx], centres[idx] = new, updated
        upper[idx] = up + moved.gather(1, new)
        lower[idx] = low - moved.max(1, keepdim=True).values
        active[idx] = ~(same | (shift.sum(1) <= tol_abs))
    # labels of the final centres (a start stopped by ``tol_abs`` moved them once more), and each inertia
    dist = squared_distances(fixed, x_sq, centres.reshape(starts * k, -1)).reshape(n, starts, k)
    best_dist, labels = dist.min(2)
    return labels.T, best_dist.double().sum(0)
