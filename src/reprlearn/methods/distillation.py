"""What DINO and iBOT share: the teacher-temperature warm-up, the teacher centre, frozen prototypes.

(The EMA teacher itself is methods/momentum.py; the prototype head is nets/heads.DINOHead.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..distributed import all_reduce_sum


def teacher_temperature(step: int, warmup_steps: int, start: float, end: float) -> float:
    """τ_t(s) = start + (end − start) · s / W for optimiser steps s < W = ``warmup_steps``, then ``end``.

    The paper's ``np.linspace(start, end, W)`` reaches ``end`` at step W − 1; here it is reached at W.
    """
    if step >= warmup_steps:
        return end
    return start + (end - start) * max(step, 0) / warmup_steps


def drop_frozen_gradients(parameter: nn.Parameter, step: int, steps_per_epoch: int, frozen_epochs: int) -> None:
    """While step < frozen_epochs · steps_per_epoch, set the gradient to None: the optimiser skips the parameter."""
    if step < frozen_epochs * steps_per_epoch:
        parameter.grad = None


@torch.no_grad()
def update_center(center: Tensor, teacher_logits: list[Tensor], momentum: float) -> None:
    """c ← m c + (1 − m) mean(teacher outputs over the batch and the global views), in place.

    Under torch.distributed the batch mean is all-reduced, so every rank holds the same centre.
    """
    t = torch.cat([x.detach() for x in teacher_logits])
    batch_sum = t.sum(dim=0).to(center.dtype)
    count = torch.tensor(float(t.shape[0]), device=center.device, dtype=center.dtype)
    all_reduce_sum(batch_sum)
    all_reduce_sum(count)
    center.mul_(momentum).add_(batch_sum / count, alpha=1.0 - momentum)
