"""The EMA teacher: MoCo's key encoder, BYOL's target, DINO's and iBOT's teacher.

The copy gets no gradients; after each optimiser step it moves towards the online
network: θ_t ← m θ_t + (1 - m) θ_s, with m constant (MoCo v2) or rising from ``base``
to ``end`` on a cosine schedule over training (BYOL, DINO, MoCo v3).
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


class EMATeacher(nn.Module):
    """An EMA copy of ``student`` (a module of the method: encoder and heads), with its schedule.

    ``teacher(x)`` runs the copy without gradients; ``update(step, total_steps)`` after an
    optimiser step moves it by the momentum of that step. The student is only referenced,
    not registered, so its parameters stay the method's own.
    """

    def __init__(self, student: nn.Module, momentum: float, schedule: str = "cosine"):
        super().__init__()
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"momentum schedule {schedule!r} is not cosine or constant")
        self.net = momentum_copy(student)
        self._student = [student]  # a list keeps it out of this module's parameters and state dict
        self.base_momentum, self.schedule = momentum, schedule

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs)

    def momentum(self, step: int, total_steps: int) -> float:
        if self.schedule == "constant":
            return self.base_momentum
        return cosine_momentum(step, total_steps, self.base_momentum)

    @torch.no_grad()
    def update(self, step: int, total_steps: int) -> None:
        ema_update(self.net, self._student[0], self.momentum(step, total_steps))
