"""The two-view losses shared by SimCLR and MoCo: which loss, and which negatives.

Margin and triplet losses need explicit negative pairs. For anchor z_a[i] the
positive is z_b[i]; its negative is mined from the other z_b[j] of the batch:
``hard`` takes the closest one, ``semi-hard`` (FaceNet) the closest one that is
still farther than the positive, falling back to the hardest when none is.
Embeddings are L2-normalised first, so distances live in [0, 2].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import losses
from ..config import option


@dataclass
class TwoViewOptions:
    """Options every two-view contrastive method shares: its projector and the pair losses."""

    proj_hidden: int = option(512, "projector hidden width", min=1, max=65536)
    proj_dim: int = option(128, "projection (loss space) dimension", min=1, max=65536)
    margin: float = option(0.5, "margin for --loss margin / triplet (normalised embeddings)", above=0.0, max=4.0)
    mining: str = option("semi-hard", "negative mining for margin/triplet", choices=("semi-hard", "hard"))


def mine_negatives(z_a: Tensor, z_b: Tensor, mining: str) -> Tensor:
    """Index j(i) != i of the negative for each anchor, chosen without gradients."""
    with torch.no_grad():
        d = torch.cdist(z_a, z_b)  # (N, N)
        n = d.shape[0]
        d.fill_diagonal_(float("inf"))
        hardest = d.argmin(dim=1)
        if mining == "hard":
            return hardest
        d_pos = (z_a - z_b).norm(dim=1, keepdim=True)
        semi = torch.where(d > d_pos, d, torch.full_like(d, float("inf")))
        best = semi.argmin(dim=1)
        has_semi = torch.isfinite(semi.gather(1, best[:, None]))[:, 0]
        return torch.where(has_semi, best, hardest) if n > 1 else hardest


def two_view_loss(kind: str, z_a: Tensor, z_b: Tensor, margin: float, mining: str) -> Tensor:
    """Margin or triplet loss over a batch of positive pairs (z_a[i], z_b[i])."""
    z_a, z_b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
    neg = mine_negatives(z_a, z_b, mining)
    if kind == "triplet":
        return losses.triplet(z_a, z_b, z_b[neg], margin=margin)
    if kind == "margin":
        # N positive pairs and N mined negative pairs, so both kinds weigh the same
        e_1 = torch.cat([z_a, z_a])
        e_2 = torch.cat([z_b, z_b[neg]])
        is_pos = torch.cat([torch.ones(len(z_a)), torch.zeros(len(z_a))]).to(z_a.device)
        return losses.margin_contrastive(e_1, e_2, is_pos, margin=margin)
    raise ValueError(f"unknown pair loss {kind!r}")
