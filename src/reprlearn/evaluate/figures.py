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


def umap_plot(features: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path,
              title: str = "", seed: int = 0, n_neighbors: int = 15) -> Path:
    """2-D UMAP of the embeddings (cosine metric), one colour per class, with a legend.

    The neighbour graph is exact, computed here in torch, instead of UMAP's approximate
    NN-descent, whose numba compilation alone took minutes on a 2-core CPU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
        xy = umap.UMAP(n_components=2, n_neighbors=n_neighbors, metric="cosine", random_state=seed, n_jobs=1,
                       n_epochs=200, precomputed_knn=(*knn, None)).fit_transform(features)
    finally:
        torch.set_num_threads(threads)
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
