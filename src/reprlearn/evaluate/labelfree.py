"""Label-free evaluation: how good are an encoder's features when the images carry no labels?

Every figure is computed for the trained encoder and for the random-init encoder beside it (the
same architecture, the weights training started from), on the same images and the same views:

- ``rankme`` (Garrido et al. 2023): exp of the entropy of the normalised singular values of the
  (N, D) feature matrix, p_k = sigma_k / ||sigma||_1 + 1e-7. Between 1 and min(N, D); within a
  method, a higher RankMe went with a better downstream probe in the paper's study. Estimated
  on at most 25,600 training images (:data:`RANKME_ROWS`), the paper's sample size.
- ``alignment`` (Wang & Isola 2020): E ||f(x) - f(x+)||^2 over two augmented views of the same
  image (the run's own augmentation), features L2-normalised. 0 when the views map to one point
  (lower: more invariant to the augmentation); at most 4.
- ``uniformity`` (Wang & Isola 2020): log E exp(-2 ||f(x) - f(y)||^2) over pairs of distinct
  images, features L2-normalised. 0 when every image maps to one point; lower (more negative) is
  spread more evenly over the sphere. Both on at most :data:`PAIR_ROWS` images.
- ``embedding_std`` and ``effective_rank``: the collapse watch's two figures (monitor.py).

Beside the figures, three pictures for a person to judge: each of 16 held-out images with its 8
nearest training images (cosine), k-means clusters of the training features (a row of the members
closest to each centre), and the UMAP of the training features coloured by cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

RANKME_ROWS = 25_600  # Garrido et al. 2023 estimate RankMe on 25,600 images of the training set
RANKME_EPS = 1e-7  # the paper's epsilon, added to each normalised singular value
PAIR_ROWS = 4_096  # alignment / uniformity images: torch.pdist over 8.4 M pairs (67 MB in float64)
ALIGNMENT_ALPHA = 2  # Wang & Isola 2020's alpha
UNIFORMITY_T = 2  # Wang & Isola 2020's t
QUERIES, NEIGHBOURS = 16, 8  # the neighbour sheet: rows, and neighbours per row
CLUSTERS, MEMBERS = 8, 10  # the cluster sheet: rows, and members per row


# ---------------------------------------------------------------- the figures


def rankme(features, eps: float = RANKME_EPS) -> float:
    """RankMe (Garrido et al. 2023) of an (N, D) feature matrix, in float64."""
    sigma = torch.linalg.svdvals(torch.as_tensor(features, dtype=torch.float64))
    p = sigma / sigma.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def alignment(a, b, alpha: float = ALIGNMENT_ALPHA) -> float:
    """Wang & Isola 2020's alignment: mean ||a_i - b_i||_2^alpha of the L2-normalised rows (positive pairs)."""
    a, b = (F.normalize(torch.as_tensor(v, dtype=torch.float64), dim=1) for v in (a, b))
    return float((a - b).norm(dim=1).pow(alpha).mean())


def uniformity(features, t: float = UNIFORMITY_T) -> float:
    """Wang & Isola 2020's uniformity: log of the mean exp(-t ||z_i - z_j||^2) over pairs i < j of
    the L2-normalised rows (the paper's torch.pdist form)."""
    z = F.normalize(torch.as_tensor(features, dtype=torch.float64), dim=1)
    return float(torch.pdist(z, p=2).pow(2).mul(-t).exp().mean().log())


def batches(images: np.ndarray, index: np.ndarray, size: int = 1024) -> Iterator[torch.Tensor]:
    """uint8 (n, C, H, W) tensors of the rows ``index`` of the (N, H, W, C) ``images``, ``size`` at a time:
    a sample of large images (25,600 at 224 px: 3.9 GB) is never held whole."""
    for start in range(0, len(index), size):
        yield torch.from_numpy(np.ascontiguousarray(images[index[start:start + size]].transpose(0, 3, 1, 2)))


@torch.no_grad()
def view_features(encoder: torch.nn.Module, images: Iterable[torch.Tensor], views: Callable,
                  seed: int) -> torch.Tensor:
    """Features of one augmented view of every uint8 image (batches of (n, C, H, W)), the views drawn
    batch by batch from one generator seeded with ``seed``: the same seed, the same views for every encoder."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    out = [encoder(views(x.to(device), generator)).float().cpu() for x in images]
    encoder.train(was_training)
    return torch.cat(out)


def encoder_figures(features: torch.Tensor, view_a: torch.Tensor, view_b: torch.Tensor) -> dict:
    """Every label-free figure of one encoder: its features of the sample, and of two views of the
    sample's first images (the alignment's and uniformity's)."""
    from ..monitor import collapse_report

    figures = {"rankme": rankme(features), "alignment": alignment(view_a, view_b),
               "uniformity": uniformity(features[:len(view_a)]) if len(view_a) > 1 else None}  # needs a pair
    figures.update(collapse_report(features)[0])
    return figures


def label_free_figures(encoders: dict[str, torch.nn.Module], images: np.ndarray, index: np.ndarray,
                       views: Callable, seed: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """The figures of each named encoder on the rows ``index`` of the uint8 (N, H, W, C) ``images`` (a
    random sample in random order, at most :data:`RANKME_ROWS`; its first :data:`PAIR_ROWS` make the
    pairs), the views drawn alike for each encoder. Returns (figures by name, features by name)."""
    from .harness import extract

    pairs = index[:PAIR_ROWS]
    figures, features = {}, {}
    for name, encoder in encoders.items():
        z = torch.cat([torch.from_numpy(extract(encoder, x)) for x in batches(images, index)])
        a, b = (view_features(encoder, batches(images, pairs, 256), views, seed + view) for view in (0, 1))
        figures[name], features[name] = encoder_figures(z, a, b), z
    return figures, features


# ---------------------------------------------------------------- neighbours and clusters


def nearest_neighbours(queries, pool, k: int) -> np.ndarray:
    """(Q, k) indices of each query's ``k`` nearest rows of ``pool`` by cosine similarity, nearest first."""
    q = F.normalize(torch.as_tensor(queries, dtype=torch.float32), dim=1)
    p = F.normalize(torch.as_tensor(pool, dtype=torch.float32), dim=1)
    return (q @ p.T).topk(min(k, len(p)), dim=1).indices.numpy()


def cluster_labels(features, clusters: int = CLUSTERS, seed: int = 0) -> np.ndarray:
    """k-means (evaluate/kmeans.py, 10 starts) on the L2-normalised features, as the clustering probe;
    the clusters numbered by size, largest first (so the sheet's rows and the UMAP's colours agree)."""
    from .kmeans import kmeans

    x = F.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1)
    labels = kmeans(x, min(clusters, len(x)), starts=10, seed=seed)[0].cpu().numpy()
    by_size = np.argsort(-np.bincount(labels), kind="stable")
    return np.argsort(by_size)[labels]


def cluster_members(features, labels: np.ndarray, members: int) -> list[np.ndarray]:
    """Per cluster of ``labels`` (in label order), the indices of its ``members`` points closest to its
    centre (the mean of its L2-normalised features), closest first."""
    x = F.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1)
    labels = torch.as_tensor(labels)
    rows = []
    for c in range(int(labels.max()) + 1):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx):
            distance = (x[idx] - x[idx].mean(0)).norm(dim=1)
            rows.append(idx[distance.argsort()[:members]].numpy())
    return rows


def caption(images, index: int) -> str:
    """What a thumbnail is called: its source's file name when the set keeps keys, else its index."""
    keys = getattr(images, "keys", None)
    return Path(str(keys[index])).name if keys is not None else f"#{index}"


@dataclass
class Sheet:
    """A written sheet: where, and the grid of captions drawn (rows of thumbnails, first column first)."""

    path: Path
    captions: list[list[str]]

    @property
    def grid(self) -> tuple[int, int]:
        return len(self.captions), max((len(r) for r in self.captions), default=0)


THUMB = 64  # thumbnail side in the sheets' pixels (small images are enlarged by a whole factor)


def image_sheet(rows: list[list[tuple[np.ndarray, str]]], path: Path, title: str,
                row_labels: list[str] | None = None) -> Sheet:
    """A PNG of thumbnails, one list of (uint8 image (H, W, C), caption) a row, the caption under each.

    The thumbnails are pasted into one canvas drawn on a single axes: a grid of matplotlib axes
    (one per thumbnail) took 5 s for the 144 of the neighbour sheet on a CPU, this a fraction of one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    cell_w, cell_h = THUMB + 8, THUMB + 14  # a margin between thumbnails, and a line for the caption
    left, top = (18 if row_labels else 4), 22
    canvas = np.full((top + n_rows * cell_h, left + n_cols * cell_w, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, (image, _) in enumerate(row):
            thumb = _thumbnail(image)
            y, x = top + r * cell_h + (THUMB - thumb.shape[0]) // 2, left + c * cell_w + (THUMB - thumb.shape[1]) // 2
            canvas[y:y + thumb.shape[0], x:x + thumb.shape[1]] = thumb
    dpi = 100
    fig = plt.figure(figsize=(canvas.shape[1] / dpi * 1.6, canvas.shape[0] / dpi * 1.6), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    ax.text(canvas.shape[1] / 2, top / 2, title, ha="center", va="center", fontsize=8)
    for r, row in enumerate(rows):
        for c, (_, text) in enumerate(row):
            ax.text(left + c * cell_w + THUMB / 2, top + r * cell_h + THUMB + 1, _short(text), ha="center",
                    va="top", fontsize=6)
        if row_labels:
            ax.text(left / 2, top + r * cell_h + THUMB / 2, row_labels[r], ha="center", va="center", fontsize=6,
                    rotation=90)
    fig.savefig(path)
    plt.close(fig)
    return Sheet(Path(path), [[text for _, text in row] for row in rows])


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 at most THUMB on a side (data.pixels.display_rgb: any depth, the first three bands), enlarged by a whole factor (nearest neighbour) or shrunk by a stride."""
    from ..data.pixels import display_rgb

    rgb = display_rgb(image)
    side = max(rgb.shape[:2])
    if side > THUMB:
        step = -(-side // THUMB)
        return rgb[::step, ::step]
    factor = THUMB // side
    return rgb.repeat(factor, 0).repeat(factor, 1)


def _short(text: str, width: int = 16) -> str:
    return text if len(text) <= width else text[:7] + "…" + text[-(width - 8):]


def neighbour_sheet(query_f, pool_f, queries, pool, query_index: np.ndarray, pool_index: np.ndarray,
                    path: Path, title: str) -> Sheet:
    """Each query image (first column) and its :data:`NEIGHBOURS` nearest pool images (cosine).

    ``queries``/``pool`` are the ImageSets the thumbnails and captions come from; ``query_index`` and
    ``pool_index`` the rows of those sets that ``query_f`` and ``pool_f`` describe."""
    nearest = nearest_neighbours(query_f, pool_f, NEIGHBOURS)
    rows = [[(queries.images[qi], "query " + caption(queries, qi))]
            + [(pool.images[pool_index[j]], caption(pool, pool_index[j])) for j in nearest[r]]
            for r, qi in enumerate(query_index)]
    return image_sheet(rows, path, title)


def cluster_sheet(features, labels: np.ndarray, images, index: np.ndarray, path: Path, title: str) -> Sheet:
    """One row per cluster (``labels`` of ``features``, rows ``index`` of ``images``): the members
    closest to its centre, closest first."""
    rows = cluster_members(features, labels, MEMBERS)
    drawn = [[(images.images[index[j]], caption(images, index[j])) for j in row] for row in rows]
    sizes = np.bincount(np.asarray(labels))
    labels = [f"cluster {c} ({sizes[c]})" for c in range(len(rows))]
    return image_sheet(drawn, path, title, labels)


# ---------------------------------------------------------------- the report


def sample(images, n: int, seed: int):
    """(an in-memory set, the indices of its rows in ``images``): all of ``images``, or ``n`` of them drawn
    without replacement (a stream: decoded, indices of the decoded subset)."""
    from ..data.stream import ShardStream, read_subset

    if isinstance(images, ShardStream):
        images = read_subset(images, min(n, len(images)), seed)
        return images, np.arange(len(images))
    if len(images) <= n:
        return images, np.arange(len(images))
    keep = np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))
    return images, keep


def label_free_report(encoder: torch.nn.Module, random_encoder: torch.nn.Module, train, test, views: Callable,
                      *, seed: int = 0, method: str = "", run_dir: Path | None = None) -> dict:
    """The label-free figures of ``encoder`` and ``random_encoder`` on the training images; with
    ``run_dir``, the neighbour sheet (held-out queries ``test``), the cluster sheet and the UMAP there."""
    device = next(encoder.parameters()).device
    train, index = sample(train, RANKME_ROWS, seed)
    shuffled = index[np.random.default_rng(seed).permutation(len(index))]  # the pair images: a random subset
    figures, features = label_free_figures({"encoder": encoder, "random_init": random_encoder.to(device)},
                                           train.images, shuffled, views, seed)
    result = {"images": len(shuffled), "pair_images": min(len(shuffled), PAIR_ROWS),
              "feature_dim": int(features["encoder"].shape[1]),
              "encoder": figures["encoder"], "random_init": figures["random_init"],
              "settings": {"rankme_eps": RANKME_EPS, "alignment_alpha": ALIGNMENT_ALPHA,
                           "uniformity_t": UNIFORMITY_T, "rankme_max_images": RANKME_ROWS,
                           "pair_max_images": PAIR_ROWS}}
    if run_dir is not None:
        result["sheets"] = write_sheets(features["encoder"], train, shuffled, encoder, test, Path(run_dir),
                                        method, seed)
    return result


def write_sheets(train_f: torch.Tensor, train, train_index: np.ndarray, encoder, test, run_dir: Path,
                 method: str, seed: int) -> dict:
    """neighbours.png, clusters.png and umap.png of the trained encoder's features into ``run_dir``."""
    from .figures import umap_plot
    from .harness import extract

    written = {}
    if test is not None and len(test):
        test, queries = sample(test, QUERIES, seed)
        query_f = extract(encoder, torch.from_numpy(np.ascontiguousarray(test.images[queries].transpose(0, 3, 1, 2))))
        sheet = neighbour_sheet(query_f, train_f, test, train, queries, train_index, run_dir / "neighbours.png",
                                f"{method}: {NEIGHBOURS} nearest training images (cosine) of held-out images")
        written["neighbours"] = sheet.path.name
    clusters = cluster_labels(train_f, CLUSTERS, seed)
    sheet = cluster_sheet(train_f, clusters, train, train_index, run_dir / "clusters.png",
                          f"{method}: k-means clusters of the training features, members nearest the centre")
    written["clusters"] = sheet.path.name
    if len(train_f) > 2 * CLUSTERS:  # UMAP's layout needs more points than its neighbours
        umap_plot(train_f.numpy(), clusters, [f"cluster {c}" for c in range(int(clusters.max()) + 1)],
                  run_dir / "umap.png", title=f"{method} training embeddings (UMAP, coloured by k-means)", seed=seed)
        written["umap"] = "umap.png"
    return written
