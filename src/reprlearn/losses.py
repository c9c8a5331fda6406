"""Loss functions, pure and stateless.

One convention for every loss: embeddings come first as (N, D) tensors, the
hyper-parameters follow as keywords, and the result is a scalar averaged over
what the docstring says. Nothing here keeps state or knows about our models.

Distributed training: losses that need negatives from the whole global batch take
``gather=True``. Each rank then computes the loss of its own anchors against the
candidates of every rank (gathered with gradients), which keeps the work per rank
at (local x global) and gives, after DDP's gradient averaging, exactly the
gradients of the single-process loss on the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "gather_with_grad",
    "info_nce",
    "nt_xent",
    "margin_contrastive",
    "triplet",
    "pairwise_distance",
]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping gradients.

    ``torch.distributed.nn.all_gather`` sums the incoming gradients back to each
    rank's own slice, so anchors on other ranks still push on our embeddings.
    Identity when not distributed.
    """
    world, _ = _world()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def info_nce(query: Tensor, key: Tensor, queue: Tensor | None = None, temperature: float = 0.07) -> Tensor:
    """Instance discrimination (InfoNCE), as in MoCo / Wu et al. 2018.

    For query q_i with positive key k_i, s_ij = cos(q_i, k_j) / τ over the batch keys
    (and cos(q_i, n_m) / τ over the queue negatives n_m when given):

        L = -(1/N) Σ_i log( exp(s_ii) / (Σ_j exp(s_ij) + Σ_m exp(s_im)) )

    query, key: (N, D); queue: (K, D) or None. Inputs need not be normalised.
    """
    q = F.normalize(query, dim=1)
    k = F.normalize(key, dim=1)
    logits = q @ k.T
    if queue is not None and queue.numel() > 0:
        logits = torch.cat([logits, q @ F.normalize(queue, dim=1).T], dim=1)
    targets = torch.arange(q.shape[0], device=q.device)
    return F.cross_entropy(logits / temperature, targets)


def nt_xent(z_a: Tensor, z_b: Tensor, temperature: float = 0.5, gather: bool = False) -> Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy (Chen et al. 2020).

    The 2N views z = [z_a; z_b] form N positive pairs (i, i+N). With
    s_ij = cos(z_i, z_j) / τ, each anchor i has the loss

        ℓ_i = -log( exp(s_{i,p(i)}) / Σ_{k≠i} exp(s_ik) )

    (the anchor itself excluded from the denominator) and L is the mean of ℓ over
    all 2N anchors. With ``gather=True`` under torch.distributed the candidates
    are the views of the global batch.
    """
    world, rank = _world() if gather else (1, 0)
    n = z_a.shape[0]
    local = F.normalize(torch.cat([z_a, z_b], dim=0), dim=1)  # (2n, D): anchors
    if world > 1:
        a_all = gather_with_grad(F.normalize(z_a, dim=1))  # (world*n, D)
        b_all = gather_with_grad(F.normalize(z_b, dim=1))
        candidates = torch.cat([a_all, b_all], dim=0)  # (2*world*n, D)
        offset = rank * n
    else:
        candidates = local
        offset = 0
    big_n = candidates.shape[0] // 2
    logits = local @ candidates.T / temperature  # (2n, 2*big_n)
    rows = torch.arange(2 * n, device=local.device)
    # column of each anchor itself in the candidate matrix, and of its positive
    own = torch.cat([rows[:n] + offset, rows[:n] + offset + big_n])
    positive = torch.cat([rows[:n] + offset + big_n, rows[:n] + offset])
    logits = logits.masked_fill(F.one_hot(own, 2 * big_n).bool(), float("-inf"))
    return F.cross_entropy(logits, positive)


def margin_contrastive(e_1: Tensor, e_2: Tensor, is_positive: Tensor, margin: float = 1.0) -> Tensor:
    """The margin (contrastive) loss of Hadsell, Chopra and LeCun 2006.

    For pairs (e_1[i], e_2[i]) at Euclidean distance d_i:

        ℓ_i = d_i²                    if the pair is positive
        ℓ_i = max(0, m - d_i)²        otherwise

    and L is the mean over pairs. is_positive: (N,) bool or 0/1.
    """
    d = pairwise_distance(e_1, e_2)
    pos = is_positive.to(dtype=torch.bool)
    per_pair = torch.where(pos, d.pow(2), F.relu(margin - d).pow(2))
    return per_pair.mean()


def pairwise_distance(x: Tensor, y: Tensor, distance: str = "euclidean") -> Tensor:
    """Row-wise distance between x[i] and y[i]: Euclidean, or cosine distance 1 - cos."""
    if distance == "euclidean":
        # sqrt with a tiny floor: the gradient of sqrt at exactly 0 is infinite
        return (x - y).pow(2).sum(dim=1).clamp_min(1e-12).sqrt()
    if distance == "cosine":
        return 1.0 - F.cosine_similarity(x, y, dim=1)
    raise ValueError(f"unknown distance {distance!r}; choose euclidean or cosine")


def triplet(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 0.2, distance: str = "euclidean") -> Tensor:
    """Triplet loss (Schroff et al. 2015): mean of max(0, d(A,P) - d(A,N) + α)."""
    d_ap = pairwise_distance(anchor, positive, distance)
    d_an = pairwise_distance(anchor, negative, distance)
    return F.relu(d_ap - d_an + margin).mean()

