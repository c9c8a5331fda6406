"""Collapse watch: is the representation still spread out, or has it collapsed?

Two numbers on L2-normalised embeddings z (N, D), logged every epoch for every method:
- ``embedding_std``: the mean over dimensions of the per-dimension standard deviation,
  times sqrt(D). About 1 for embeddings spread over the sphere, 0 when every input maps
  to the same point (the BYOL / SimSiam collapse check).
- ``effective_rank``: exp of the entropy of the normalised singular values of the
  centred embeddings (Roy & Vetterli 2007). Near D when all directions are used, near 1
  when the embeddings lie on a line (dimensional collapse).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F


def embedding_std(z: torch.Tensor) -> float:
    z = F.normalize(z.float(), dim=1)
    return float(z.std(dim=0).mean() * math.sqrt(z.shape[1]))


def effective_rank(z: torch.Tensor) -> float:
    z = F.normalize(z.float(), dim=1)
    s = torch.linalg.svdvals(z - z.mean(dim=0))
    if s.max() < 1e-4:
        return 0.0  # every embedding identical (up to float noise): no direction is used
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def collapse_report(z: torch.Tensor, std_floor: float = 0.1, rank_floor: float = 2.0) -> tuple[dict, str | None]:
    """The two metrics and, when either is below its floor, a one-line warning."""
    metrics = {"embedding_std": embedding_std(z), "effective_rank": effective_rank(z)}
    if metrics["embedding_std"] < std_floor or metrics["effective_rank"] < rank_floor:
        return metrics, (f"the representation looks collapsed: embedding std {metrics['embedding_std']:.3f} "
                         f"(healthy ~1), effective rank {metrics['effective_rank']:.2f} of {z.shape[1]}; "
                         "try a lower --lr, a larger batch, or check the method's options")
    return metrics, None


# The spread below which embeddings no longer depend on the input in any usable way: 8x below
# the lowest healthy run measured (ijepa on digits plateaus at 0.008, mae at 0.02, dinov2 at 0.1).
COMPLETE_COLLAPSE_STD = 1e-3


def relative_floors(initial: dict, std_floor: float = 0.1, rank_floor: float = 2.0,
                    fraction: float = 0.5, narrow_std_floor: float = COMPLETE_COLLAPSE_STD) -> tuple[float, float]:
    """Floors that a network's own random init does not already fail.

    The std floor is SimSiam's check, and it is only informative when the init spreads the
    embeddings over the sphere (a CNN: std about 0.2-1). A random ViT's class tokens share a
    large common component (std about 0.1 at init), and healthy ViT runs grow it further: ijepa
    on digits falls to 0.008 and mae to 0.02 while kNN accuracy rises and the effective rank
    stays near 20. A shrinking spread on top of a shared component is only a change of scale,
    which cosine kNN and a standardised linear probe do not see, so for such an init the std
    floor is lowered to complete collapse (``narrow_std_floor``: the embedding no longer depends
    on the input) and the rank floor to ``fraction`` of the init's where that is lower than 2.
    """
    std = std_floor if initial["embedding_std"] >= std_floor else min(narrow_std_floor,
                                                                    fraction * initial["embedding_std"])
    return std, min(rank_floor, fraction * initial["effective_rank"])


def warn_collapse(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=2)
