"""MoCo v2 (He et al. 2020; Chen et al. 2020): a momentum key encoder and a queue.

query = projector(encoder(view 1)); key = EMA copy of both applied to view 2 (no
gradients). InfoNCE classifies each query's own key among the batch keys and the
K queued keys of earlier batches. The loss is symmetrised over the two views, and
the momentum rises from ``ema_momentum`` to 1 on a cosine schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import option
from ..losses import info_nce
from ..nets import MLPHead
from . import METHODS
from .base import Method
from .momentum import cosine_momentum, ema_update, momentum_copy
from .pair_losses import TwoViewOptions, pair_loss


@dataclass
class MoCoConfig(TwoViewOptions):
    temperature: float = option(0.2, "InfoNCE temperature τ", above=0.0, max=10.0)
    queue_size: int = option(1024, "negative keys kept in the queue (0: batch negatives only)", min=0, max=1 << 20)
    ema_momentum: float = option(0.99, "base EMA momentum of the key encoder (rises to 1, cosine)", min=0.0, max=1.0)
    loss: str = option("info_nce", "the two-view loss", choices=("info_nce", "margin", "triplet"))


@METHODS.register("moco")
class MoCo(Method):
    Config = MoCoConfig

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        self.projector = MLPHead(encoder.feature_dim, config.proj_hidden, config.proj_dim)
        self.key_net = momentum_copy(nn.Sequential(encoder, self.projector))
        self.register_buffer("queue", F.normalize(torch.randn(config.queue_size, config.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._new_keys: torch.Tensor | None = None

    def loss(self, views):
        x_a, x_b = views
        c = self.config
        q_a = self.projector(self.encoder(x_a))
        q_b = self.projector(self.encoder(x_b))
        with torch.no_grad():
            k_a, k_b = self.key_net(x_a), self.key_net(x_b)
        if c.loss == "info_nce":
            queue = self.queue.clone() if c.queue_size else None  # clone: the queue changes after the step
            value = 0.5 * (info_nce(q_a, k_b, queue, c.temperature) + info_nce(q_b, k_a, queue, c.temperature))
        else:
            value = 0.5 * (pair_loss(c.loss, q_a, k_b, c.margin, c.mining) + pair_loss(c.loss, q_b, k_a, c.margin, c.mining))
        self._new_keys = F.normalize(torch.cat([k_a, k_b]), dim=1)
        return {"loss": value, c.loss: value.detach()}

    @torch.no_grad()
    def after_optimizer_step(self, step, total_steps):
        ema_update(self.key_net, nn.Sequential(self.encoder, self.projector),
                   cosine_momentum(step, total_steps, self.config.ema_momentum))
        if self._new_keys is not None and self.config.queue_size:
            self._enqueue(_gather(self._new_keys))
            self._new_keys = None

    def _enqueue(self, keys: torch.Tensor) -> None:
        size = self.queue.shape[0]
        keys = keys[:size]
        ptr = int(self.queue_ptr)
        idx = (torch.arange(len(keys), device=keys.device) + ptr) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + len(keys)) % size)


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Keys from every rank enter the queue (no gradients needed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)
