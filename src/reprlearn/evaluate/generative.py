"""Evaluation of generative methods: pictures, density and anomaly detection.

Works through the hooks a method offers (see ``methods/autoencoder.py``):
``figure_rows`` / ``reconstruct`` for reconstruction grids, ``sample`` for prior
samples, ``encode`` + ``decode`` for interpolations and 2-D latent grids, ``nelbo``
and ``iwae`` for density, ``anomaly_score`` for anomaly detection.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..data.pixels import unit_float
from ..errors import fail
from ..methods.base import HasDensity, Interpolates, Samples


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting half.

    The Mann-Whitney U statistic from average ranks, so it is exact and O(n log n).
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positives and negatives")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average rank over runs of tied scores
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows of a and b at fractions t (T,): (T, D)."""
    a_n, b_n = a / a.norm(), b / b.norm()
    omega = torch.arccos((a_n * b_n).sum().clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    t = t[:, None]
    return torch.sin((1 - t) * omega) / so * a + torch.sin(t * omega) / so * b


def save_grid(rows: list[torch.Tensor], path: Path, row_names: list[str] | None = None, title: str = "") -> Path:
    """Save rows of images (each (N, C, H, W) in [0, 1]) as one PNG grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    h, w = rows[0].shape[-2:]
    scale = max(0.35, min(1.2, 40 / max(h, w)))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * scale + 1.2, n_rows * scale + 0.4), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if c < len(row):
                img = row[c].detach().float().clamp(0, 1).cpu()
                if img.shape[0] == 1:
                    ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                else:
                    ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        if row_names:
            axes[r][0].set_ylabel(row_names[r], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.05, left=0.12 if row_names else 0.01, right=0.99, bottom=0.01,
                        top=0.9 if title else 0.99)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@torch.no_grad()
def reconstruction_figure(method, x: torch.Tensor, labels, path: Path, title: str) -> Path:
    rows = method.figure_rows(x, labels=labels) if labels is not None else method.figure_rows(x)
    return save_grid(list(rows.values()), path, list(rows.keys()), title)


@torch.no_grad()
def samples_figure(method, path: Path, num_classes: int, n: int = 64, cls: int | None = None,
                   needs_labels: bool = False, seed: int = 0) -> Path:
    g = torch.Generator(device=_device(method)).manual_seed(seed)
    if needs_labels:
        classes = [cls] if cls is not None else list(range(num_classes))
        per = max(1, n // len(classes)) if cls is None else n
        rows = [method.sample(per, labels=torch.full((per,), c, device=_device(method)), generator=g) for c in classes]
        names = [f"class {c}" for c in classes]
    else:
        images = method.sample(n, generator=g)
        cols = int(math.ceil(math.sqrt(n)))
        rows = [images[i:i + cols] for i in range(0, n, cols)]
        names = None
    return save_grid(rows, path, names, "samples from the prior")


@torch.no_grad()
def interpolation_figure(method, x: torch.Tensor, labels, path: Path, steps: int = 10) -> Path:
    """Rows of decodings between pairs of test images (linear, or spherical for VAEs)."""
    kw = {"labels": labels} if labels is not None else {}
    z = method.encode(x, **kw)
    t = torch.linspace(0, 1, steps, device=z.device)
    rows = []
    for i in range(0, min(len(x) - 1, 8), 2):
        if method.interpolation == "spherical":
            path_z = slerp(z[i], z[i + 1], t)
        else:
            path_z = (1 - t)[:, None] * z[i] + t[:, None] * z[i + 1]
        dec_kw = {"labels": labels[i].repeat(steps)} if labels is not None else {}
        rows.append(torch.cat([x[i:i + 1], torch.sigmoid(method.decode(path_z, **dec_kw)), x[i + 1:i + 2]]))
    return save_grid(rows, path, None, f"{method.interpolation} latent interpolation (ends: the real images)")


@torch.no_grad()
def latent_grid_figure(method, path: Path, n: int = 12, span: float = 2.5) -> Path:
    """For a 2-D latent: decodings on a bilinear grid of codes over [-span, span]^2."""
    ticks = torch.linspace(-span, span, n, device=_device(method))
    rows = [torch.sigmoid(method.decode(torch.stack([ticks, torch.full_like(ticks, y)], dim=1)))
            for y in ticks.flip(0)]
    return save_grid(rows, path, None, "decodings over a grid of 2-D codes")


def bits_per_dim(nats: float, dims: int) -> float:
    """A negative log-likelihood of ``nats`` per image over ``dims`` values, in bits per value:

        bits/dim = −log p(x) / (D ln 2)

    The one convention, for a likelihood normalised over the values the data take.
    On 8-bit data (a discretised likelihood over 256 levels) this is bits/dim on the
    8-bit scale, comparable with published figures (uniform: 8 bits/dim). On binarised
    data the values are {0, 1}: the same formula gives bits per *binary* dimension (at
    most 1), which is not comparable with 8-bit bits/dim; report nats there.
    """
    return nats / (dims * math.log(2))


@torch.no_grad()
def density(method, x: torch.Tensor, labels, k: int, batch: int = 256) -> dict:
    """Test negative ELBO and importance-weighted bound (nats per image) and bits per dimension.

    ``method.density_data`` gives the images the density is over (8-bit x, or one fixed
    binarisation); ``density`` in the result says which (``method.density_spec``).
    8-bit data report ``bits_per_dim`` of the IWAE bound (of nelbo when the method is not
    ``importance_weighted``: ddpm); binarised data report ``bits_per_binary_dim`` instead
    (see ``bits_per_dim``).
    """
    x = method.density_data(x)
    kw = (lambda s: {"labels": labels[s]}) if labels is not None else (lambda s: {})
    weighted = method.importance_weighted  # False (ddpm): no iwae; bits/dim of nelbo
    nelbo, iwae = [], []
    for start in range(0, len(x), batch):
        s = slice(start, start + batch)
        nelbo.append(method.nelbo(x[s], **kw(s)).cpu())
        if weighted:
            iwae.append(method.iwae(x[s], k, **kw(s)).cpu())
    nelbo_nats = torch.cat(nelbo).mean().item()
    iwae_nats = torch.cat(iwae).mean().item() if weighted else None
    spec = method.density_spec
    key = "bits_per_dim" if spec["data"] == "8-bit" else "bits_per_binary_dim"
    result = {"nelbo_nats": nelbo_nats, "iwae_nats": iwae_nats, "iwae_k": k if weighted else None, "density": spec,
              key: bits_per_dim(iwae_nats if weighted else nelbo_nats, x[0].numel())}
    result["kl_per_group"] = method.kl_per_group(x[:batch], **kw(slice(0, batch)))
    return result


@torch.no_grad()
def anomaly_auroc(method, x: torch.Tensor, labels: np.ndarray, anomaly_class: int, batch: int = 512) -> float:
    scores = torch.cat([method.anomaly_score(x[s:s + batch]).cpu() for s in range(0, len(x), batch)]).numpy()
    return auroc(scores, labels == anomaly_class)


def _device(module) -> torch.device:
    return next(module.parameters()).device


def generative_metrics(method, cfg, info, eval_set, run_dir: Path, anomaly_class: int | None, iwae_k: int,
                       device: str) -> dict:
    """What the harness adds for a method that reconstructs: recon_mse, figures (reconstructions;
    samples for ``Samples``; interpolation and a 2-D latent grid for ``Interpolates``), the
    density bounds for ``HasDensity``, and the anomaly AUROC of ``anomaly_class``."""
    torch.manual_seed(cfg.seed)
    x = unit_float(eval_set.tensor(device))
    labels = torch.from_numpy(eval_set.labels).to(device) if eval_set.labels is not None else None
    cond = labels if method.needs_labels else None
    out: dict = {}
    recon = torch.cat([method.reconstruct(x[s:s + 512], **_kw(cond, s)) for s in range(0, len(x), 512)])
    out["recon_mse"] = float((recon - x).pow(2).mean())
    pick = torch.arange(min(16, len(x)), device=device)
    figures = {"reconstructions": reconstruction_figure(method, x[pick], _sub(cond, pick), run_dir /
                                                            "reconstructions.png", f"{cfg.method}: test images")}
    if isinstance(method, Samples):
        figures["samples"] = samples_figure(method, run_dir / "samples.png", info.num_classes,
                                                needs_labels=method.needs_labels, seed=cfg.seed)
    if isinstance(method, Interpolates):
        figures["interpolation"] = interpolation_figure(method, x[pick], _sub(cond, pick),
                                                            run_dir / "interpolation.png")
        if getattr(method.config, "latent_dim", None) == 2:
            figures["latent_grid"] = latent_grid_figure(method, run_dir / "latent_grid.png")
    if isinstance(method, HasDensity):
        out.update(density(method, x, cond, iwae_k))
    if anomaly_class is not None:
        if eval_set.labels is None or anomaly_class not in set(eval_set.labels.tolist()):
            raise fail(f"--anomaly-class {anomaly_class} is not a label of {eval_set.name}")
        if method.needs_labels:
            out["anomaly_auroc"] = None  # a conditional model would be told the class: not a fair test
        else:
            out["anomaly_auroc"] = anomaly_auroc(method, x, eval_set.labels, anomaly_class)
            out["anomaly_class"] = anomaly_class
            out["trained_without_class"] = cfg.exclude_class
    out["figures"] = {k: str(v.name) for k, v in figures.items()}
    return out


def _kw(labels: torch.Tensor | None, start: int, size: int = 512) -> dict:
    return {} if labels is None else {"labels": labels[start:start + size]}


def _sub(labels: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    return None if labels is None else labels[index]
