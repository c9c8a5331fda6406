"""Optimisers and the learning-rate schedule the engine uses.

LARS is written here because neither PyTorch nor Lightning ships one.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with layer-wise adaptive rate scaling (You et al. 2017), as used by SimCLR/BYOL.

    For each parameter tensor w with gradient g (weight decay folded in):
        local_lr = η ‖w‖ / ‖g + λ w‖   (1 when either norm is 0)
        v ← μ v + local_lr · (g + λ w);   w ← w - lr · v
    Groups with ``lars_exclude=True`` (biases, norm layers) skip the scaling and decay.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["lars_exclude"]:
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    g = g.mul(trust)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = torch.clone(g).detach()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay only weight matrices/kernels; biases and norm scales (1-D) get none (and no LARS)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


def _plain(groups: list[dict]) -> list[dict]:
    """The groups without LARS's own flag (torch's optimisers reject unknown keys)."""
    return [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]


# name -> (param groups, lr, momentum) -> optimiser; RunConfig's --optimizer choices come from here
OPTIMIZERS = {
    "adamw": lambda groups, lr, momentum: torch.optim.AdamW(_plain(groups), lr=lr),
    "sgd": lambda groups, lr, momentum: torch.optim.SGD(_plain(groups), lr=lr, momentum=momentum),
    "lars": lambda groups, lr, momentum: LARS(groups, lr=lr, momentum=momentum),
}


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float, momentum: float):
    return OPTIMIZERS[name](param_groups(model, weight_decay), lr, momentum)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak LR: linear warm-up from ~0, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
