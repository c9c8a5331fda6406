"""An EMA copy of a network (MoCo's key encoder, BYOL's target, DINO's teacher).

The copy gets no gradients; after each optimiser step it moves towards the online
network: θ_t ← m θ_t + (1 - m) θ_s, with m rising from ``base`` to ``end`` on a
cosine schedule over training (BYOL, DINO).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def cosine_momentum(step: int, total_steps: int, base: float, end: float = 1.0) -> float:
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return end - (end - base) * (math.cos(math.pi * progress) + 1) / 2


def momentum_copy(module: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    t_params = list(teacher.parameters())
    s_params = list(student.parameters())
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers()):
        t_buf.copy_(s_buf)  # BN running statistics follow the student
