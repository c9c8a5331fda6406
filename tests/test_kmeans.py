"""The batched torch k-means (evaluate/kmeans.py) against naive loops written from the
definitions, and against scikit-learn where the answer is unambiguous."""

import numpy as np
import pytest
import torch

from reprlearn.evaluate import kmeans as km
from reprlearn.evaluate.probes import partition_scores


def _naive_lloyd(x: np.ndarray, centres: np.ndarray, max_iter: int = 300) -> np.ndarray:
    """Lloyd's algorithm point by point, in float64: assign each point to its nearest centre, move
    each centre to the mean of its points, until no label changes."""
    labels = None
    centres = centres.astype(np.float64).copy()
    for _ in range(max_iter):
        new = np.array([int(np.argmin([((p - c) ** 2).sum() for c in centres])) for p in x])
        if labels is not None and (new == labels).all():
            break
        labels = new
        for j in range(len(centres)):
            if (labels == j).any():
                centres[j] = x[labels == j].mean(0)
    return labels


def _blobs(n_per: int, k: int, dim: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per)
    return (rng.normal(size=(k, dim)) * 3)[y] + rng.normal(size=(n_per * k, dim)) * spread, y


@pytest.mark.parametrize("recompute_above", [0.0, 1.0])  # every step's sums afresh / from the moved points alone
def test_lloyd_equals_a_naive_loop_from_the_same_starts(recompute_above, monkeypatch):
    monkeypatch.setattr(km, "RECOMPUTE_ABOVE", recompute_above)
    x, _ = _blobs(60, 5, 4, 2.0, 0)  # overlapping blobs: many steps, a few points moving late
    rng = np.random.default_rng(1)
    starts = np.stack([x[rng.choice(len(x), 5, replace=False)] for _ in range(4)])
    xt = torch.tensor(x, dtype=torch.float32)
    labels, inertia = km.lloyd(xt, torch.tensor(starts, dtype=torch.float32))
    for s in range(4):
        want = _naive_lloyd(x, starts[s])
        assert (labels[s].numpy() == want).all()
        means = np.stack([x[want == j].mean(0) for j in range(5)])
        assert float(inertia[s]) == pytest.approx(((x - means[want]) ** 2).sum(), rel=1e-5)


def test_empty_cluster_is_reseeded_with_the_farthest_point():
    x, _ = _blobs(30, 3, 2, 0.3, 2)
    start = np.concatenate([x[[0, 30]], [[1e3, 1e3]]])  # a third centre no point is near
    labels, _ = km.lloyd(torch.tensor(x, dtype=torch.float32), torch.tensor(start, dtype=torch.float32)[None])
    assert len(np.unique(labels[0].numpy())) == 3  # the empty cluster took a point and kept it


def test_kmeans_plusplus_seeds_one_centre_in_each_far_blob():
    x, y = _blobs(50, 6, 3, 0.05, 3)
    xt = torch.tensor(x, dtype=torch.float32)
    seeds = km.kmeans_plusplus(xt, xt.pow(2).sum(1), 6, starts=8, generator=torch.Generator().manual_seed(0))
    assert seeds.shape == (8, 6)
    for row in seeds.numpy():  # D^2 sampling all but never picks a second point of a covered blob
        assert sorted(y[row]) == list(range(6))


def test_kmeans_plusplus_keeps_the_best_of_its_trials():
    """Greedy seeding: of several D^2-sampled candidates the one that lowers the potential most is
    kept, so the seeds' potential falls with more trials (one trial is plain k-means++)."""
    rng = np.random.default_rng(6)
    x = torch.tensor(np.concatenate([rng.normal(size=(300, 2)) * 0.1, rng.normal(size=(60, 2)) * 4]),
                     dtype=torch.float32)
    x_sq = x.pow(2).sum(1)

    def mean_potential(trials: int) -> float:
        seeds = km.kmeans_plusplus(x, x_sq, 5, starts=300, generator=torch.Generator().manual_seed(0),
                                   trials=trials)
        d = ((x[None, :, None] - x[seeds][:, None]) ** 2).sum(-1)  # (starts, N, k)
        return float(d.min(2).values.sum(1).mean())

    assert mean_potential(8) < 0.8 * mean_potential(1)


def test_kmeans_finds_sklearns_partition_and_inertia_on_blobs():
    from sklearn.cluster import KMeans

    x, y = _blobs(80, 8, 16, 1.0, 4)
    labels, inertia = km.kmeans(torch.tensor(x, dtype=torch.float32), 8, starts=10, seed=0)
    ref = KMeans(8, n_init=10, random_state=0).fit(x)
    assert partition_scores(ref.labels_, labels.numpy())["ari"] == pytest.approx(1.0)
    assert inertia == pytest.approx(ref.inertia_, rel=1e-4)
    assert partition_scores(y, labels.numpy())["ari"] == pytest.approx(1.0)


def test_the_lowest_inertia_start_is_kept():
    x, _ = _blobs(40, 6, 3, 1.5, 5)
    xt = torch.tensor(x, dtype=torch.float32)
    xt = xt - xt.mean(0)
    _, best = km.kmeans(torch.tensor(x, dtype=torch.float32), 6, starts=6, seed=3)
    seeds = km.kmeans_plusplus(xt, xt.pow(2).sum(1), 6, 6, torch.Generator().manual_seed(3))
    _, each = km.lloyd(xt, xt[seeds], tol_abs=1e-4 * float(xt.var(0, unbiased=False).mean()))
    assert best == pytest.approx(float(each.min()))
    assert float(each.max()) > float(each.min())  # the starts did differ, so the choice mattered


def test_bad_k_is_refused():
    with pytest.raises(ValueError, match="clusters"):
        km.kmeans(torch.zeros(3, 2), 4)
