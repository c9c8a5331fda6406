"""Image-text contrastive losses: CLIP's symmetric cross-entropy and SigLIP's sigmoid loss.

Re-exported by :mod:`reprlearn.losses` (``reprlearn.losses.clip_loss`` and
``reprlearn.losses.siglip_loss``), whose conventions they follow: pure functions,
embeddings first as (B, D) tensors, a scalar result.

Distributed training. Both losses are written so that, with each rank holding B_local
pairs of a global batch of B = W·B_local pairs, the per-rank losses averaged over the W
ranks equal the single-process loss on the global batch, and the parameter gradients
after DDP's averaging equal the single-process gradients:

- ``clip_loss(..., gather=True)`` all-gathers the embeddings with gradients and scores
  the local rows against the global columns (work per rank: B_local x B).
- ``siglip_loss(..., distributed=True)`` never forms more than a B_local x B_local
  block: the text embeddings travel round the ring of ranks, W−1 neighbour exchanges
  that carry gradients back the opposite way.

Every rank must hold the same number of pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .distributed import gather_with_grad, ring_shift, world_and_rank

__all__ = ["clip_loss", "siglip_loss"]


def clip_loss(image: Tensor, text: Tensor, logit_scale: Tensor | float, gather: bool = False) -> Tensor:
    """CLIP's symmetric contrastive loss (Radford et al. 2021).

    image, text: (B, D), already L2-normalised, pair i being (image_i, text_i);
    logit_scale t: the multiplier itself (a scalar tensor such as exp(learned log-scale),
    or a float). With the logits l_ij = t ⟨I_i, T_j⟩:

        L = ½ [ (1/B) Σ_i −log( exp(l_ii) / Σ_j exp(l_ij) )          (image → text, rows)
              + (1/B) Σ_j −log( exp(l_jj) / Σ_i exp(l_ij) ) ]        (text → image, columns)

    With ``gather=True`` under torch.distributed (W ranks of B_local pairs each), the
    embeddings of every rank are gathered with gradients; each rank returns L_r, the same
    formula over its own B_local rows against all B = W·B_local columns, in both
    directions. Then (1/W) Σ_r L_r is the loss on the global batch, and DDP's averaged
    gradients are its gradients (including t's, each rank's local copy of t receiving
    ∂L_r/∂t).
    """
    world, rank = world_and_rank() if gather else (1, 0)
    b = image.shape[0]
    if world > 1:
        all_image, all_text = gather_with_grad(image), gather_with_grad(text)
    else:
        all_image, all_text = image, text
    targets = torch.arange(b, device=image.device) + rank * b
    logits_i2t = logit_scale * image @ all_text.T  # (B_local, B): local images, all texts
    logits_t2i = logit_scale * text @ all_image.T  # (B_local, B): local texts, all images
    return 0.5 * (F.cross_entropy(logits_i2t, targets) + F.cross_entropy(logits_t2i, targets))


def _siglip_sum(image: Tensor, text: Tensor, logit_scale, logit_bias, positives_on_diagonal: bool) -> Tensor:
    """Σ_ij log σ(z_ij (t ⟨I_i, T_j⟩ + b)) over one block; z_ij = +1 on the diagonal if it holds the positives."""
    logits = logit_scale * image @ text.T + logit_bias
    if positives_on_diagonal:
        z = 2.0 * torch.eye(logits.shape[0], logits.shape[1], device=logits.device, dtype=logits.dtype) - 1.0
    else:
        z = -torch.ones_like(logits)
    return F.logsigmoid(z * logits).sum()


def siglip_loss(image: Tensor, text: Tensor, logit_scale: Tensor | float, logit_bias: Tensor | float,
                distributed: bool = False) -> Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023).

    image, text: (B, D), already L2-normalised, pair i being (image_i, text_i);
    logit_scale t: the multiplier itself (e.g. exp(learned log-scale)); logit_bias b.
    With z_ij = +1 if i = j (a match) and −1 otherwise:

        L = −(1/B) Σ_i Σ_j log σ( z_ij (t ⟨I_i, T_j⟩ + b) )
          =  (1/B) Σ_i Σ_j softplus( −z_ij (t ⟨I_i, T_j⟩ + b) )

    so a match with a low logit, or a mismatch with a high one, is what costs.
    Summed over the B² pairs, averaged over the B images (not over B²).

    With ``distributed=True`` under torch.distributed (W ranks of B_local pairs each,
    B = W·B_local), no rank forms the global B x B matrix. Rank r scores its B_local
    images against its own texts (positives on the diagonal), then W − 1 times passes
    the texts it holds to rank r + 1 and receives those of rank r − 1 (all negatives),
    the exchange carrying gradients back the opposite way. Its partial sum S_r covers
    its images' rows of the global matrix, and it returns

        L_r = −(1/B_local) S_r = −(W/B) S_r

    so that (1/W) Σ_r L_r = L, and DDP's average (1/W) Σ_r ∂L_r/∂θ = ∂L/∂θ for every
    parameter θ, t and b included (each rank's copies of t and b get ∂L_r/∂t, ∂L_r/∂b).
    """
    world, _ = world_and_rank() if distributed else (1, 0)
    b_local = image.shape[0]
    total = _siglip_sum(image, text, logit_scale, logit_bias, positives_on_diagonal=True)
    held = text
    for _ in range(world - 1):
        held = ring_shift(held)
        total = total + _siglip_sum(image, held, logit_scale, logit_bias, positives_on_diagonal=False)
    return -total / b_local
