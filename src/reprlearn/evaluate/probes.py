"""Probes on frozen features: kNN, linear, low-label draws, k-means; and fine-tuning.

All return fractions in [0, 1]. Features are (N, D) float arrays.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def knn_top1(train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray, test_y: np.ndarray,
             k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> float:
    """Weighted kNN (Wu et al. 2018): cosine neighbours vote with weight exp(sim / t)."""
    k = min(k, len(train_f))
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    bank = F.normalize(torch.as_tensor(train_f, dtype=torch.float32), dim=1)
    labels = torch.as_tensor(train_y, dtype=torch.long)
    correct = 0
    for start in range(0, len(test_f), chunk):
        q = F.normalize(torch.as_tensor(test_f[start:start + chunk], dtype=torch.float32), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(q), num_classes).scatter_add_(1, labels[idx], (sim / temperature).exp())
        correct += (votes.argmax(1).numpy() == test_y[start:start + chunk]).sum()
    return float(correct) / len(test_f)


def linear_top1(train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray, test_y: np.ndarray,
                seed: int = 0) -> float:
    """Multinomial logistic regression on standardised frozen features (L-BFGS, sklearn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_f)
    clf = LogisticRegression(max_iter=1000, C=1.0, random_state=seed)
    clf.fit(scaler.transform(train_f), train_y)
    return float((clf.predict(scaler.transform(test_f)) == test_y).mean())


def few_label(train_f, train_y, test_f, test_y, per_class: int, draws: int = 5, seed: int = 0) -> dict:
    """kNN and linear probes given only ``per_class`` labelled images per class, averaged over draws."""
    rng = np.random.default_rng(seed)
    knn, lin = [], []
    for _ in range(draws):
        pick = np.concatenate([rng.choice(np.flatnonzero(train_y == c), min(per_class, (train_y == c).sum()),
                                          replace=False) for c in np.unique(train_y)])
        knn.append(knn_top1(train_f[pick], train_y[pick], test_f, test_y, k=min(200, len(pick))))
        lin.append(linear_top1(train_f[pick], train_y[pick], test_f, test_y, seed=seed))
    return {"knn_top1_few": float(np.mean(knn)), "linear_top1_few": float(np.mean(lin))}


def cluster_scores(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
    """k-means with as many clusters as classes, scored by NMI and ARI against the labels.

    Features are L2-normalised first (the cosine geometry the kNN probe uses too);
    standardising instead would inflate low-variance noise directions.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.preprocessing import normalize

    k = len(np.unique(labels))
    pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(normalize(features))
    return {"nmi": float(normalized_mutual_info_score(labels, pred)),
            "ari": float(max(0.0, adjusted_rand_score(labels, pred)))}  # ARI < 0 means worse than chance: report 0


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
            preds.append(head(net(test_x[start:start + 1024].float() / 255)).argmax(1).cpu())
    return float((torch.cat(preds).numpy() == test_y).mean())
