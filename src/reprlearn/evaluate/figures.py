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


def umap_xy(features: np.ndarray, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """(N, 2) UMAP layout of the embeddings (cosine metric) on an exact neighbour graph.

    The graph is computed here in torch, instead of UMAP's approximate NN-descent, whose
    numba compilation alone took minutes on a 2-core CPU."""
    import umap

    import torch

    # numba's OpenMP layer (UMAP, pynndescent) shares torch's libgomp and sets its thread count
    # to all cores; put torch's back, or a later training step in this process (tests, notebooks)
    # runs with more threads than asked for, slower on a shared machine and with other rounding
    threads = torch.get_num_threads()
    try:
        warnings.filterwarnings("ignore", message="precomputed_knn", category=UserWarning)  # we never transform
        n_neighbors = min(n_neighbors, len(features) - 1)
        knn = cosine_knn(features, n_neighbors)
        # 200 layout epochs, UMAP's own choice above 10,000 points (it takes 500 below)
        return umap.UMAP(n_components=2, n_neighbors=n_neighbors, metric="cosine", random_state=seed, n_jobs=1,
                         n_epochs=200, precomputed_knn=(*knn, None)).fit_transform(features)
    finally:
        torch.set_num_threads(threads)


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
