"""Figures written into a run directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def umap_plot(features: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path,
              title: str = "", seed: int = 0) -> Path:
    """2-D UMAP of the embeddings (cosine metric), one colour per class, with a legend."""
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
        xy = umap.UMAP(n_components=2, metric="cosine", random_state=seed, n_jobs=1).fit_transform(features)
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
