"""SwAV (Caron et al. 2020): online clustering with swapped assignments between views.

Views: 2 global crops and ``n_local`` small local crops (:func:`~reprlearn.augment.multi_crop`,
as DINO). Each goes through the backbone and a projector; the L2-normalised projection z is
scored against K prototypes c_k (:class:`~reprlearn.nets.heads.PrototypeHead`, unit rows), s = zᵀ C.
For each global crop g the codes q_g come from its scores by Sinkhorn–Knopp
(:func:`~reprlearn.losses.sinkhorn_knopp`, ``sinkhorn_iterations`` rounds, ε = ``epsilon``, no
gradients; under DDP over the global batch), which spreads the batch equally over the
prototypes (the equipartition that prevents the trivial all-in-one-cluster solution). Every
other crop v predicts them, the swapped prediction

    L = (1/|P|) Σ_{(g, v) ∈ P} (1/N) Σ_i −Σ_k q_g[i, k] log softmax(s_v[i] / τ)_k,  v ≠ g

(:func:`~reprlearn.losses.swapped_prediction_loss`). As in the paper: the prototypes are
normalised after every optimiser step (the paper: at the start of each iteration) and frozen for
the first ``freeze_prototypes_epochs`` (the paper: 313 iterations, one ImageNet epoch at batch
4096); with small batches a queue of the last ``queue_length`` global-crop projections (per rank,
filled from epoch ``queue_start_epoch`` on and used once full) joins the batch in Sinkhorn–Knopp
only, to give each prototype enough samples. Deviations: K = 64 prototypes and widths 512/128 by
default for small data (3000 prototypes, 2048/128 in the paper); backbones with a fixed token
grid get their local crops at the global size, as in DINO. ``--sinkhorn-iterations 0`` replaces
the codes by softmax(s / ε) (no equipartition), the ablation that invites the trivial solution.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ..augment import local_crop, multi_crop
from ..config import option
from ..losses import sinkhorn_knopp, swapped_prediction_loss
from ..nets import MLPHead
from ..nets.heads import PrototypeHead
from .base import METHODS, Method
from .distillation import drop_frozen_gradients


@dataclass
class SwAVConfig:
    proj_hidden: int = option(512, "projector hidden width (2048 in the paper)", min=1, max=65536)
    proj_dim: int = option(128, "projection dimension, the prototypes' space (128 in the paper)", min=1, max=65536)
    num_prototypes: int = option(64, "number of prototypes K (3000 in the paper for ImageNet)", min=2, max=1 << 20)
    n_local: int = option(4, "local crops per image (6 in the paper)", min=0, max=64)
    temperature: float = option(0.1, "τ of the softmax over the prototype scores", above=0.0, max=10.0)
    epsilon: float = option(0.05, "ε, the entropic regularisation of Sinkhorn-Knopp", above=0.0, max=10.0)
    sinkhorn_iterations: int = option(3, "Sinkhorn-Knopp iterations (0: plain softmax codes, no equipartition; "
                                      "collapses)", min=0, max=1000)
    freeze_prototypes_epochs: int = option(1, "epochs during which the prototypes are frozen", min=0, max=100000)
    queue_length: int = option(0, "global-crop projections kept per rank for Sinkhorn-Knopp (0: no queue; the "
                               "paper: 3840 for batches of 256)", min=0, max=1 << 20)
    queue_start_epoch: int = option(15, "epoch from which the queue is filled (15 in the paper)", min=0, max=100000)


@METHODS.register("swav")
class SwAV(Method):
    Config = SwAVConfig
    run_defaults = {"epochs": 40, "batch_size": 256, "lr": 2e-3, "warmup_epochs": 5}

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        self.projector = MLPHead(encoder.feature_dim, config.proj_hidden, config.proj_dim)
        self.prototypes = PrototypeHead(config.proj_dim, config.num_prototypes)
        local = local_crop(view_spec, info.image_size)
        if hasattr(encoder.backbone, "num_patches"):  # fixed positional grid: keep the global size
            local = replace(local, size=view_spec.size or info.image_size)
        self.local_spec = local
        # the queue of the two global crops' projections (newest first) and how much of it is filled
        self.register_buffer("queue", torch.zeros(2, config.queue_length, config.proj_dim))
        self.register_buffer("queue_filled", torch.tensor(0))
        self.register_buffer("step_now", torch.tensor(0))  # optimiser steps taken (the queue starts by epoch)
        self._to_enqueue: Tensor | None = None

    def views(self, images, generator):
        return multi_crop(images, self.view_spec, self.local_spec, 2, self.config.n_local, generator)

    def embed(self, x: Tensor) -> Tensor:
        return F.normalize(self.projector(self.encoder(x)), dim=1)

    def queue_on(self) -> bool:
        c = self.config
        return c.queue_length > 0 and int(self.step_now) >= c.queue_start_epoch * self.steps_per_epoch

    @torch.no_grad()
    def codes(self, scores: Tensor, crop: int) -> Tensor:
        """Sinkhorn-Knopp codes of one global crop's scores (N, K), the full queue joining the batch."""
        c = self.config
        n = scores.shape[0]
        if self.queue_on() and int(self.queue_filled) >= c.queue_length:
            scores = torch.cat([self.prototypes(self.queue[crop]), scores])
        if c.sinkhorn_iterations == 0:
            return F.softmax(scores / c.epsilon, dim=1)[-n:]
        return sinkhorn_knopp(scores, c.sinkhorn_iterations, c.epsilon)[-n:]

    def loss(self, views):
        z = list(self.embed(torch.cat(views[:2])).chunk(2))  # one pass per crop size
        if len(views) > 2:
            z += list(self.embed(torch.cat(views[2:])).chunk(len(views) - 2))
        scores = [self.prototypes(zv) for zv in z]
        codes = [self.codes(scores[g].detach(), g) for g in range(2)]
        value = swapped_prediction_loss(scores, codes, self.config.temperature)
        self._to_enqueue = torch.stack([z[0].detach(), z[1].detach()]) if self.training and self.queue_on() else None
        return {"loss": value, "swav": value.detach()}

    @torch.no_grad()
    def after_micro_batch(self):
        if self._to_enqueue is not None:
            new = self._to_enqueue[:, : self.config.queue_length]
            self.queue.copy_(torch.cat([new, self.queue], dim=1)[:, : self.config.queue_length])
            self.queue_filled.fill_(min(int(self.queue_filled) + new.shape[1], self.config.queue_length))
            self._to_enqueue = None

    def before_optimizer_step(self, step, total_steps):
        drop_frozen_gradients(self.prototypes.weight, step, self.steps_per_epoch, self.config.freeze_prototypes_epochs)

    @torch.no_grad()
    def after_optimizer_step(self, step, total_steps):
        self.prototypes.normalize_()
        self.step_now.fill_(step + 1)
