"""Probes on frozen features: kNN, linear, low-label draws, k-means; and fine-tuning.

All return fractions in [0, 1]. Features are (N, D) float arrays or tensors; the kNN and
torch linear probes run on the features' device (pass CUDA tensors to use a GPU).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.pixels import unit_float
from ..errors import fail
from .fixed_rows import FixedRows
from .softmax_fit import fit_softmax

# L2 weights (on the mean cross-entropy) the torch linear probe chooses from, strongest first
L2_GRID = (1.0, 1e-1, 1e-2, 1e-3, 1e-4)
SWEEP_PATIENCE = 2  # the L2 sweep stops after the held-out loss rose this many times in a row (None: whole grid)
BACKENDS = ("torch", "sklearn")


def _tensor(a, dtype, device=None) -> torch.Tensor:
    t = torch.as_tensor(a)
    return t.to(device=device if device is not None else t.device, dtype=dtype)


def knn_top1(train_f, train_y, test_f, test_y, k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> float:
    """Weighted kNN (Wu et al. 2018): the ``k`` nearest training features by cosine similarity
    vote for their class with weight ``exp(sim / t)``; the class with the largest sum wins
    (ties: the lowest class index). k = 200, t = 0.1 as lightly's and solo-learn's CIFAR-10
    benchmarks; DINO uses k = 20, t = 0.07. Runs on the device of ``train_f``."""
    if k < 1 or temperature <= 0:
        raise fail(f"kNN needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}; "
                   "pass e.g. --knn-k 200 --knn-temperature 0.1")
    if _is_bytes(train_f) and _is_bytes(test_f) and not _on_gpu(train_f):
        return _knn_top1_bytes(train_f, train_y, test_f, test_y, k, temperature, chunk)
    bank = F.normalize(_tensor(train_f, torch.float32), dim=1)
    device = bank.device
    labels = _tensor(train_y, torch.long, device)
    test_y = _tensor(test_y, torch.long, device)
    k = min(k, len(bank))
    num_classes = int(max(labels.max(), test_y.max())) + 1
    correct = 0
    index = _faiss_index(bank) if device.type == "cpu" and len(bank) > FAISS_ABOVE else None
    for start in range(0, len(test_y), chunk):
        q = F.normalize(_tensor(test_f[start:start + chunk], torch.float32, device), dim=1)
        if index is not None:
            sim, idx = (torch.from_numpy(a) for a in index.search(q.numpy(), k))
        else:
            sim, idx = (q @ bank.T).topk(k, dim=1)
        correct += _weighted_vote_correct(sim, idx, labels, test_y[start:start + chunk], num_classes, temperature)
    return correct / len(test_y)


def _weighted_vote_correct(sim: torch.Tensor, idx: torch.Tensor, labels: torch.Tensor, truth: torch.Tensor,
                           num_classes: int, temperature: float) -> int:
    """How many rows' weighted vote (exp(sim / t) per neighbour, summed per class) names ``truth``."""
    weight = ((sim - sim[:, :1]) / temperature).float().exp()  # exp(sim / t) over its row maximum's: no overflow
    votes = torch.zeros(len(sim), num_classes, device=sim.device).scatter_add_(1, labels[idx], weight)
    return int((votes.argmax(1) == truth).sum())


def _is_bytes(a) -> bool:
    return getattr(a, "dtype", None) in (torch.uint8, np.uint8)


def _on_gpu(a) -> bool:
    return isinstance(a, torch.Tensor) and a.device.type != "cpu"


# columns summed per integer GEMM: 128^2 * 65,536 = 2^30 keeps every int32 partial sum exact
BYTE_GEMM_COLUMNS = 65536


def _shifted(x) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 rows (N, D) -> the int8 rows x - 128 that the int8 GEMM takes, and their sums (N,) float64."""
    x8 = torch.as_tensor(x).to(torch.int16).sub_(128).to(torch.int8)
    return x8, x8.sum(1, dtype=torch.int64).double()


# torch 2.13's CPU int8 GEMM returns garbage for a single column (checked against int64 for 1-19,
# 63-65 and 3,072 columns: only 1 fails); fewer columns than this take the int64 product instead
BYTE_GEMM_MIN_COLUMNS = 8


def _block_dots(a8: torch.Tensor, b8: torch.Tensor) -> torch.Tensor:
    if a8.shape[1] < BYTE_GEMM_MIN_COLUMNS:
        return a8.long() @ b8.long().T
    return torch._int_mm(a8, b8.T)


def _shifted_dots(a8: torch.Tensor, b8: torch.Tensor) -> torch.Tensor:
    """a8 @ b8.T for int8 rows, exactly: (M, N) int32 when every partial sum fits, else int64."""
    if a8.shape[1] <= BYTE_GEMM_COLUMNS:
        return _block_dots(a8, b8)
    dots = torch.zeros(len(a8), len(b8), dtype=torch.int64)
    for j in range(0, a8.shape[1], BYTE_GEMM_COLUMNS):
        cols = slice(j, j + BYTE_GEMM_COLUMNS)
        dots += _block_dots(a8[:, cols].contiguous(), b8[:, cols].contiguous())
    return dots


def byte_dots(a, b) -> torch.Tensor:
    """a @ b.T, exactly, for uint8 rows a (M, D) and b (N, D): (M, N) float64 (integers below 2^53).

    An int8 GEMM with int32 sums (VNNI kernels on a CPU) on the values shifted by -128, then the
    shift taken back (:func:`_unshifted_dots`). On CIFAR-10 pixels (2 CPU cores) 6x faster than
    float32's GEMM, and exact where float32 rounds."""
    return _unshifted_dots(*_shifted(a), *_shifted(b))


def _unshifted_dots(a8: torch.Tensor, a_sum: torch.Tensor, b8: torch.Tensor, b_sum: torch.Tensor) -> torch.Tensor:
    """a.b from the shifted rows a' = a - 128, b' = b - 128 and their sums:
    a.b = a'.b' + 128 (sum a' + sum b') + 128^2 D, as (M, N) float64."""
    out = _shifted_dots(a8, b8).double()
    out += (128.0 * a_sum + 128.0 * 128.0 * a8.shape[1])[:, None]
    out += 128.0 * b_sum[None, :]
    return out


def _knn_top1_bytes(train_f, train_y, test_f, test_y, k: int, temperature: float, chunk: int) -> float:
    """:func:`knn_top1` for 8-bit vectors (pixels) on a CPU, 1.6x faster than FAISS's float32 search on
    CIFAR-10 pixels: cosine similarities from exact integer dot products (:func:`_unshifted_dots`,
    the references shifted once) over float64 norms; an all-zero vector has similarity 0, as with
    F.normalize. The same neighbours as the float path but for near-ties that float32 rounds."""
    bank8, bank_sum = _shifted(torch.as_tensor(train_f).reshape(len(train_f), -1))
    queries = torch.as_tensor(test_f).reshape(len(test_f), -1)
    labels, test_y = _tensor(train_y, torch.long), _tensor(test_y, torch.long)
    k = min(k, len(bank8))
    num_classes = int(max(labels.max(), test_y.max())) + 1

    def norms(x8: torch.Tensor) -> torch.Tensor:
        return (x8.double() + 128.0).square_().sum(1).sqrt_().clamp_min_(1e-12)

    bank_norm, correct = norms(bank8), 0
    for start in range(0, len(test_y), chunk):
        q8, q_sum = _shifted(queries[start:start + chunk])
        scaled = _unshifted_dots(q8, q_sum, bank8, bank_sum).div_(bank_norm)  # (q.b) / |b|
        q_norm = norms(q8)
        sim, idx = scaled.topk(k, dim=1)  # the ranking of a row needs no |q|
        sim /= q_norm[:, None]
        correct += _weighted_vote_correct(sim, idx, labels, test_y[start:start + chunk], num_classes, temperature)
    return correct / len(test_y)


FAISS_ABOVE = 2048  # references above which the CPU kNN searches with FAISS


def knn_distance(train_f, test_f, k: int = 5, chunk: int = 1024) -> np.ndarray:
    """Anomaly score of each test feature: its mean cosine distance 1 - cos to its ``k`` nearest
    training features (the deep-kNN one-class detector, e.g. Bergman et al. 2020); (N,) float64,
    higher = farther from the training data."""
    if k < 1:
        raise fail(f"kNN distance needs k >= 1, got {k}")
    bank = F.normalize(_tensor(train_f, torch.float32), dim=1)
    k = min(k, len(bank))
    out = []
    for start in range(0, len(test_f), chunk):
        q = F.normalize(_tensor(test_f[start:start + chunk], torch.float32, bank.device), dim=1)
        out.append((1 - (q @ bank.T).topk(k, dim=1).values).mean(1).double().cpu())
    return torch.cat(out).numpy()


def _faiss_index(bank: torch.Tensor):
    """An exact inner-product FAISS index of the unit rows of ``bank`` (CPU). On a CPU, FAISS's
    blocked, multi-threaded search with its heap selection is faster than torch's matmul + topk
    (10,000 CIFAR-10 references, k = 200, 2 cores: 1.4x at 128-d, 1.2x at 3,072-d, the same
    neighbours) and holds no (chunk x N) similarity matrix; on a GPU the torch path is kept."""
    import faiss

    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(np.ascontiguousarray(bank.numpy()))
    return index


def _logits(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x W + b for the (D+1, C) weights of :func:`softmax_fit.fit_softmax` (bias last)."""
    return torch.addmm(w[-1], x, w[:-1])


def _predict(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return _logits(x, w).argmax(1)


def _val_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Stratified (fit, val) indices, ``fraction`` of each class held out (at least one);
    None when a class has fewer than two examples, so no class can be left out of the fit."""
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        return None
    rng = np.random.default_rng(seed)
    val = []
    for c, n in zip(classes, counts):
        idx = np.flatnonzero(y == c)
        val.append(rng.choice(idx, min(n - 1, max(1, int(round(n * fraction)))), replace=False))
    val = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(y)), val), val


def linear_probe(train_f, train_y, test_f, test_y, seed: int = 0, l2_grid=L2_GRID, val_fraction: float = 0.2,
                 max_iter: int | None = None, dtype: torch.dtype = torch.float32, c: float | None = None) -> dict:
    """Multinomial logistic regression on standardised frozen features, in torch on the features' device.

    Features are standardised with the training mean and (population) standard deviation, as
    sklearn's StandardScaler. For each ``l2`` in ``l2_grid`` (strongest first, each fit warm-started
    from the previous one) the probe minimises ``mean_i CE(W x_i + b, y_i) + l2/2 ||W||^2`` by
    full-batch L-BFGS on a stratified ``1 - val_fraction`` of the training features and scores
    the held-out rest, stopping early once the held-out loss has risen at two weaker ``l2`` in a row
    (the rest of the grid fits the training set still closer; on CIFAR-10 pixels this skips the last
    of the six fits); the ``l2`` of the lowest held-out cross-entropy is then refitted on all training
    features (from its held-out fit) and scored on the test features. This is Kornblith et al.
    (2019)'s protocol on a shorter grid; each fit takes at most ``max_iter`` L-BFGS steps, 50 by
    default (on CIFAR-10 pixels, 50, 100 and 500 steps gave the same test accuracy to 0.1 points).

    Differs from sklearn's ``LogisticRegression()`` default, which fixes ``C = 1``, i.e.
    ``l2 = 1 / n_train``, with no sweep (the ``sklearn`` backend of :func:`linear_top1`). When a
    class has fewer than two training examples there is nothing to validate on, and the probe
    uses that sklearn default, ``l2 = 1 / n_train``. Given ``c``, the probe fits sklearn's
    objective at that ``C`` (``l2 = 1 / (C n_train)``, all training features) without a sweep,
    by default with up to 500 steps (weak regularisation converges slowly; sklearn allows 1000).

    Returns ``{"top1", "l2", "val_top1", "val_log_loss"}`` (the held-out figures None without a sweep).
    """
    device = train_f.device if isinstance(train_f, torch.Tensor) else None
    x = _tensor(train_f, dtype, device)
    mean, std = x.mean(0), x.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant features stay 0, as StandardScaler's
    x = (x - mean) / std
    xt = (_tensor(test_f, dtype, x.device) - mean) / std
    y_np = np.asarray(torch.as_tensor(train_y).cpu())
    y, yt = _tensor(y_np, torch.long, x.device), _tensor(test_y, torch.long, x.device)
    num_classes = int(max(y.max(), yt.max())) + 1
    if c is not None:
        l2_grid = (1.0 / (c * len(y)),)
    max_iter = max_iter or (50 if c is None else 500)
    split = _val_split(y_np, val_fraction, seed) if len(l2_grid) > 1 else None
    start = None
    if split is None:
        best, val_top1, val_loss = (l2_grid[0] if len(l2_grid) == 1 else 1.0 / len(y)), None, None
    else:
        fit, val = (torch.as_tensor(i, device=x.device) for i in split)
        fits, losses, accs = [None], [], []
        x_fit, y_fit = FixedRows(x[fit]), y[fit]
        for l2 in l2_grid:  # each fit starts from the previous, stronger one's solution
            fits.append(fit_softmax(x_fit, y_fit, num_classes, l2, fits[-1], max_iter))
            logits = _logits(x[val], fits[-1])
            losses.append(float(F.cross_entropy(logits, y[val])))
            accs.append(int((logits.argmax(1) == y[val]).sum()) / len(val))
            if SWEEP_PATIENCE and len(losses) > SWEEP_PATIENCE and all(
                    losses[-i] > losses[-i - 1] for i in range(1, SWEEP_PATIENCE + 1)):
                break  # risen at weaker L2s in a row past the best: the rest of the grid overfits more
        # chosen by held-out log-loss, a proper score: held-out accuracy on a few hundred images
        # ties often and then favoured the strongest L2 (on digits pixels 0.925 against C = 1's 0.955)
        i = int(np.argmin(losses))
        best, val_top1, val_loss, start = l2_grid[i], accs[i], losses[i], fits[i + 1]
        del x_fit  # its oneDNN copies (fixed_rows.py), before the refit makes those of all of x
    w = fit_softmax(FixedRows(x), y, num_classes, best, start, max_iter)
    return {"top1": int((_predict(xt, w) == yt).sum()) / len(yt), "l2": float(best), "val_top1": val_top1,
            "val_log_loss": val_loss}


def linear_top1(train_f, train_y, test_f, test_y, seed: int = 0, backend: str = "torch",
                c: float | None = None) -> float:
    """Top-1 of the linear probe: ``torch`` (default, :func:`linear_probe`; ``c`` None sweeps) or
    ``sklearn`` (sklearn's LogisticRegression at ``C = c`` or 1, L-BFGS, on StandardScaler
    features: the former default)."""
    if backend == "torch":
        return linear_probe(train_f, train_y, test_f, test_y, seed=seed, c=c)["top1"]
    if backend != "sklearn":
        raise fail(f"unknown probe backend {backend!r}; use one of {', '.join(BACKENDS)}")
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train_f, test_f = (np.asarray(torch.as_tensor(a).cpu()) for a in (train_f, test_f))
    train_y, test_y = (np.asarray(torch.as_tensor(a).cpu()) for a in (train_y, test_y))
    scaler = StandardScaler().fit(train_f)
    clf = LogisticRegression(max_iter=1000, C=1.0 if c is None else c, random_state=seed)
    clf.fit(scaler.transform(train_f), train_y)
    return float((clf.predict(scaler.transform(test_f)) == test_y).mean())


def low_label_draws(train_y: np.ndarray, per_class: int, draws: int = 5, seed: int = 0) -> list[np.ndarray]:
    """``draws`` index sets of the training labels, each exactly ``per_class`` per class (all of a
    class that has fewer), drawn without replacement; the same seed gives the same draws."""
    rng = np.random.default_rng(seed)
    return [np.concatenate([rng.choice(np.flatnonzero(train_y == c), min(per_class, int((train_y == c).sum())),
                                       replace=False) for c in np.unique(train_y)]) for _ in range(draws)]


def few_label(train_f, train_y, test_f, test_y, per_class: int, draws: int = 5, seed: int = 0,
              knn_k: int = 200, knn_temperature: float = 0.1, backend: str = "torch",
              linear_c: float | None = None) -> dict:
    """kNN and linear probes given only ``per_class`` labelled images per class, averaged over draws.

    kNN uses ``min(knn_k, labelled images)`` neighbours."""
    knn, lin = [], []
    for pick in low_label_draws(np.asarray(train_y), per_class, draws, seed):
        knn.append(knn_top1(train_f[pick], train_y[pick], test_f, test_y, k=knn_k, temperature=knn_temperature))
        lin.append(linear_top1(train_f[pick], train_y[pick], test_f, test_y, seed=seed, backend=backend, c=linear_c))
    return {"knn_top1_few": float(np.mean(knn)), "linear_top1_few": float(np.mean(lin))}


def contingency(labels: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(classes, clusters) table of counts n_ij."""
    _, a = np.unique(labels, return_inverse=True)
    _, b = np.unique(pred, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    return table


def partition_scores(labels: np.ndarray, pred: np.ndarray) -> dict:
    """NMI and ARI of a partition ``pred`` against ``labels``, from their contingency table n_ij
    (row sums a_i, column sums b_j, n items).

    NMI = I(U; V) / ((H(U) + H(V)) / 2), the arithmetic-mean normalisation (Vinh et al. 2010;
    sklearn's default); 1 when both sides are one block.
    ARI = (sum_ij C(n_ij, 2) - E) / ((sum_i C(a_i, 2) + sum_j C(b_j, 2)) / 2 - E) with
    E = sum_i C(a_i, 2) sum_j C(b_j, 2) / C(n, 2) (Hubert and Arabie 1985); 1 when the
    denominator is 0 (both sides one block, or both all singletons). Negative ARI, agreement
    below chance, is reported as it is.
    """
    table = contingency(np.asarray(labels), np.asarray(pred)).astype(np.float64)
    n = table.sum()
    a, b = table.sum(1), table.sum(0)
    h_u = -np.sum(a / n * np.log(a / n))
    h_v = -np.sum(b / n * np.log(b / n))
    nz = table > 0
    mi = np.sum(table[nz] / n * np.log(table[nz] * n / np.outer(a, b)[nz]))
    nmi = 1.0 if h_u == h_v == 0 else float(max(mi, 0.0) / ((h_u + h_v) / 2))

    def pairs(x):
        return float(np.sum(x * (x - 1) / 2))

    index, rows, cols = pairs(table), pairs(a), pairs(b)
    expected = rows * cols / (n * (n - 1) / 2) if n > 1 else 0.0
    denom = (rows + cols) / 2 - expected
    ari = 1.0 if denom == 0 else (index - expected) / denom
    return {"nmi": nmi, "ari": float(ari)}


def cluster_scores(features, labels: np.ndarray, seed: int = 0, backend: str = "torch") -> dict:
    """k-means with as many clusters as classes (10 greedy k-means++ starts, Lloyd's iterations,
    the start of lowest inertia), scored by :func:`partition_scores` (NMI, ARI) against the labels.

    Features are L2-normalised first (the cosine geometry the kNN probe uses too);
    standardising instead would inflate low-variance noise directions. ``torch`` (default) runs
    all starts as one batch on the features' device (evaluate/kmeans.py: 2.8x faster than
    scikit-learn on CIFAR-10 pixels on 2 CPU cores, the same NMI/ARI to 0.1 points, see
    benchmarks/RESULTS.md); ``sklearn`` is scikit-learn's ``KMeans(n_init=10)`` with Elkan's
    algorithm, the former path, kept for comparison.
    """
    labels = np.asarray(labels)
    x = F.normalize(_tensor(features, torch.float32), dim=1)
    k = len(np.unique(labels))
    if backend == "torch":
        from .kmeans import kmeans

        pred = kmeans(x, k, starts=10, seed=seed)[0].cpu().numpy()
    elif backend == "sklearn":
        from sklearn.cluster import KMeans

        pred = KMeans(n_clusters=k, n_init=10, random_state=seed, algorithm="elkan").fit_predict(x.cpu().numpy())
    else:
        raise fail(f"unknown probe backend {backend!r}; use one of {', '.join(BACKENDS)}")
    return partition_scores(labels, pred)


def finetune_top1(encoder: torch.nn.Module, train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor,
                  test_y: np.ndarray, views, epochs: int = 30, lr: float = 1e-3, batch_size: int = 256,
                  seed: int = 0) -> float:
    """Unfreeze the encoder, add a linear head, train with cross-entropy on augmented views.

    ``views(images_uint8, generator)`` makes one augmented float view (the run's preset).
    """
    import copy

    torch.manual_seed(seed)
    net = copy.deepcopy(encoder).train()
    device = next(net.parameters()).device
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    head = torch.nn.Linear(net.feature_dim, num_classes).to(device)
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    y = torch.as_tensor(train_y, device=device)
    steps = max(1, len(train_x) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps)
    g = torch.Generator(device=device).manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(train_x), device=device, generator=g)
        for s in range(steps):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            loss = F.cross_entropy(head(net(views(train_x[idx], g))), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    preds = []
    with torch.no_grad():
        for start in range(0, len(test_x), 1024):
            preds.append(head(net(unit_float(test_x[start:start + 1024]))).argmax(1).cpu())
    return float((torch.cat(preds).numpy() == test_y).mean())
