"""Figures written into a run directory."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


def cosine_knn(features, k: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by cosine distance, each point its own first: (indices, distances)."""
    import torch

    x = torch.nn.functional.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1)
    sims, idx = zip(*((x[s:s + chunk] @ x.T).topk(k, dim=1) for s in range(0, len(x), chunk)))
    return torch.cat(idx).numpy(), (1 - torch.cat(sims)).clamp(min=0).numpy()


def fuzzy_graph(knn_idx: np.ndarray, knn_dist: np.ndarray, bisection_steps: int = 64, tolerance: float = 1e-5):
    """UMAP's fuzzy simplicial set of a kNN graph (McInnes et al. 2018, section 3.1), vectorised.

    ``knn_idx``/``knn_dist`` are (N, k) with each point its own first neighbour (distance 0). Point
    i's membership strengths are w_ij = exp(-max(0, d_ij - rho_i) / sigma_i), rho_i its distance to
    the nearest other point (0 among duplicates), sigma_i found by bisection so that the k - 1 other
    neighbours' strengths sum to log2(k) (floored at 1e-3 times the mean distance, as umap-learn);
    the graph is the fuzzy union W + W^T - W * W^T. umap-learn builds the same graph (tested to
    1e-6) with numba functions that are compiled anew in each process: 6-7 s of a 10,000-point
    UMAP on 2 CPU cores, against milliseconds here.

    Returns (graph as scipy CSR, sigmas, rhos)."""
    import scipy.sparse

    n, k = knn_dist.shape
    d = knn_dist.astype(np.float64)
    nearest = np.where(d > 0, d, np.inf).min(1)
    rho = np.where(np.isfinite(nearest), nearest, 0.0)
    excess = np.maximum(d[:, 1:] - rho[:, None], 0.0)  # the first neighbour is the point itself
    target = np.log2(k)
    lo, hi, sigma = np.zeros(n), np.full(n, np.inf), np.ones(n)
    settled = np.zeros(n, dtype=bool)
    for _ in range(bisection_steps):
        total = np.exp(-excess / sigma[:, None]).sum(1)
        settled |= np.abs(total - target) < tolerance
        too_wide = (total > target) & ~settled  # strengths too large: a narrower kernel
        too_narrow = (total <= target) & ~settled
        hi = np.where(too_wide, sigma, hi)
        lo = np.where(too_narrow, sigma, lo)
        sigma = np.where(settled, sigma, np.where(np.isinf(hi), sigma * 2, (lo + hi) / 2))
        if settled.all():
            break
    floor = 1e-3 * np.where(rho > 0, d.mean(1), d.mean())
    sigma = np.maximum(sigma, floor)
    strength = np.where(d - rho[:, None] <= 0, 1.0, np.exp(-(d - rho[:, None]) / sigma[:, None]))
    strength[knn_idx == np.arange(n)[:, None]] = 0.0  # no edge from a point to itself
    w = scipy.sparse.csr_matrix((strength.ravel(), (np.repeat(np.arange(n), k), knn_idx.ravel())), shape=(n, n))
    w.eliminate_zeros()
    graph = w + w.T - w.multiply(w.T)
    graph.eliminate_zeros()
    return graph.tocsr(), sigma.astype(np.float32), rho.astype(np.float32)


def umap_xy(features: np.ndarray, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """(N, 2) UMAP layout of the embeddings (cosine metric) on an exact neighbour graph.

    The neighbour graph is computed here in torch, instead of UMAP's approximate NN-descent, whose
    numba compilation alone took minutes on a 2-core CPU; its fuzzy set by :func:`fuzzy_graph`,
    the same graph as umap-learn's without its numba compilation. umap-learn does the rest."""
    import umap
    import umap.umap_

    import torch

    # numba's OpenMP layer (UMAP, pynndescent) shares torch's libgomp and sets its thread count
    # to all cores; put torch's back, or a later training step in this process (tests, notebooks)
    # runs with more threads than asked for, slower on a shared machine and with other rounding
    threads = torch.get_num_threads()
    library_graph = umap.umap_.fuzzy_simplicial_set

    def graph_of_precomputed_knn(X, n_neighbors, random_state, metric, metric_kwds=None, knn_indices=None,
                                 knn_dists=None, angular=False, set_op_mix_ratio=1.0, local_connectivity=1.0,
                                 apply_set_operations=True, verbose=False, return_dists=None):
        if (knn_indices is None or knn_dists.shape[1] != n_neighbors or set_op_mix_ratio != 1.0
                or local_connectivity != 1.0 or not apply_set_operations or return_dists):
            return library_graph(X, n_neighbors, random_state, metric, metric_kwds or {}, knn_indices, knn_dists,
                                 angular, set_op_mix_ratio, local_connectivity, apply_set_operations, verbose,
                                 return_dists)
        graph = fuzzy_graph(knn_indices, knn_dists)
        return graph if return_dists is None else (*graph, None)

    _cache_layout_compilation()
    try:
        warnings.filterwarnings("ignore", message="precomputed_knn", category=UserWarning)  # we never transform
        n_neighbors = min(n_neighbors, len(features) - 1)
        knn = cosine_knn(features, n_neighbors)
        umap.umap_.fuzzy_simplicial_set = graph_of_precomputed_knn
        # 200 layout epochs, UMAP's own choice above 10,000 points (it takes 500 below)
        return umap.UMAP(n_components=2, n_neighbors=n_neighbors, metric="cosine", random_state=seed, n_jobs=1,
                         n_epochs=200, precomputed_knn=(*knn, None)).fit_transform(features)
    finally:
        umap.umap_.fuzzy_simplicial_set = library_graph
        torch.set_num_threads(threads)


def _cache_layout_compilation() -> None:
    """Keep numba's compiled UMAP layout epoch on disk (numba's own cache, beside umap-learn's source
    or in the user's cache when that is read-only): umap-learn compiles it in every process without
    one, 1.5 s of a 5 s figure on 2 CPU cores; loading it takes 0.7 s less. Nothing changes where
    numba cannot cache."""
    import umap.layouts

    epoch = getattr(umap.layouts, "_nb_optimize_layout_euclidean_single_epoch", None)
    if epoch is None or getattr(epoch, "_cache_enabled_by_reprlearn", False):
        return
    try:
        epoch.enable_caching()
        epoch._cache_enabled_by_reprlearn = True
    except Exception:  # no writable cache location: compile in-process, as umap-learn does
        pass


def umap_plot(features: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path,
              title: str = "", seed: int = 0, n_neighbors: int = 15) -> Path:
    """2-D UMAP of the embeddings (cosine metric), one colour per class, with a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = umap_xy(features, seed, n_neighbors)
    fig, ax = plt.subplots(figsize=(6.5, 5.5), dpi=110)
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for c, name in enumerate(class_names):
        m = labels == c
        if m.any():
            ax.scatter(xy[m, 0], xy[m, 1], s=6, color=cmap(c % cmap.N), label=name, alpha=0.8, linewidths=0)
    ax.set_title(title or "UMAP of test embeddings")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=3, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def umap_domains_plot(panels: dict[str, np.ndarray], domain: np.ndarray, labels: np.ndarray,
                      class_names: list[str], domain_names: tuple[str, str], path: Path, title: str = "",
                      seed: int = 0) -> Path:
    """One UMAP per feature set in ``panels`` (e.g. before / after training), each drawn twice:
    coloured by domain (0: source, 1: target) and coloured by class (circles source, crosses target)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(panels)
    fig, axes = plt.subplots(rows, 2, figsize=(10, 4.4 * rows), dpi=90, squeeze=False)
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for r, (name, features) in enumerate(panels.items()):
        xy = umap_xy(features, seed)
        by_domain, by_class = axes[r]
        for d, (colour, dname) in enumerate(zip(("tab:blue", "tab:orange"), domain_names)):
            m = domain == d
            by_domain.scatter(xy[m, 0], xy[m, 1], s=5, color=colour, label=dname, alpha=0.6, linewidths=0)
        for c, cname in enumerate(class_names):
            for d, marker in ((0, "o"), (1, "x")):
                m = (labels == c) & (domain == d)
                if m.any():
                    by_class.scatter(xy[m, 0], xy[m, 1], s=6 if d == 0 else 8, marker=marker, color=cmap(c % cmap.N),
                                     label=cname if d == 0 else None, alpha=0.7, linewidths=0 if d == 0 else 0.6)
        by_domain.set_title(f"{name}: coloured by domain")
        by_class.set_title(f"{name}: coloured by class (o source, x target)")
        by_domain.legend(markerscale=3, fontsize=8, loc="best", frameon=False)
        by_class.legend(markerscale=2, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        for ax in (by_domain, by_class):
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
