"""MoCo v2 (He et al. 2020, "Momentum Contrast"; Chen et al. 2020, "Improved Baselines"),
with MoCo v3's symmetric loss and batch negatives (Chen, Xie & He 2021) as options.

Per step, for a batch of images and two augmented views x_1, x_2 of each:

    q = projector(encoder(x_1))                  the query, with gradients; projector: v2's
                                                 fc-ReLU-fc head (``--proj-bn``: v3's, with BN)
    k = key_net(x_2)                             the key, no gradients; key_net = EMA copy
    L = InfoNCE(q, k; negatives = the K queued keys of earlier steps)
    after the optimiser step:  θ_k ← m θ_k + (1 - m) θ_q  (m = 0.999, constant), then
                               the step's keys enter the queue, the oldest leave it

That is MoCo v2 by default: one direction, negatives from the queue only, τ = 0.2, a
constant momentum. ``--symmetric`` adds the other direction, ctr(q_1, k_2) + ctr(q_2, k_1)
(MoCo v3's loss; both views' keys then enter the queue); ``--batch-negatives`` makes the
other keys of the global batch negatives too (v3); ``--momentum-schedule cosine`` raises m
to 1 over training (v3, BYOL).

BatchNorm must not let a query see its own key's batch statistics (MoCo, Sec. 3.3):
the key encoder runs on a shuffled batch. Under DDP that is shuffle-BN as in the paper:
the keys' images are gathered from every rank, permuted with one permutation all ranks
share (rank 0's), each rank encodes its slice, and the keys are gathered and unshuffled.
On one device that shuffle alone changes nothing, so every BatchNorm of both encoders
normalises per group of ``bn_splits`` (split-BN, :mod:`reprlearn.nets.split_bn`), the
query in batch order and the key in the shuffled order, so the groups differ, as in the
authors' single-GPU demo. The groups are per device; ``--bn-splits 1`` under DDP is the
paper's per-GPU BN exactly.

Under ``--accumulate N`` the queue receives the keys of every micro-batch, once, after
the optimiser step that trained on them; all N micro-batches of a step contrast against
the same queue, as one batch of N times the size would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import option
from ..distributed import broadcast, gather, world_and_rank
from ..errors import fail
from ..losses import info_nce
from ..nets import MLPHead, split_batch_norm
from .base import METHODS, Method
from .momentum import EMATeacher
from .two_view_losses import TwoViewOptions, two_view_loss


@dataclass
class MoCoConfig(TwoViewOptions):
    """MoCo v2 by default (momentum 0.999, queue-only negatives, one direction, τ 0.2, no BN in
    the projector); ``symmetric``, ``batch_negatives``, ``momentum_schedule cosine`` and
    ``proj_bn`` are MoCo v3's choices."""

    temperature: float = option(0.2, "InfoNCE temperature τ (0.2: MoCo v2; v1 used 0.07)", above=0.0, max=10.0)
    queue_size: int = option(
        1024, "negative keys in the queue (the paper's 65,536 suits ImageNet's 1.28M images; digits has "
        "1,438 training images, and a queue longer than the data would hold each image's own earlier "
        "keys as negatives)", min=0, max=1 << 20)
    ema_momentum: float = option(0.999, "EMA momentum m of the key encoder (0.999: MoCo v2)", min=0.0, max=1.0)
    momentum_schedule: str = option("constant", "m constant (MoCo v2) or rising from m to 1 on a cosine (v3, BYOL)",
                                    choices=("constant", "cosine"))
    symmetric: bool = option(False, "MoCo v3's symmetric loss ctr(q1,k2) + ctr(q2,k1); both views' keys enter "
                             "the queue")
    batch_negatives: bool = option(False, "the global batch's other keys are negatives too (v3); off: the queue "
                                   "only (v2)")
    bn_splits: int = option(
        8, "BatchNorm groups per device (split-BN; the key encoder sees a shuffled batch): 8 as in the MoCo "
        "authors' single-GPU demo; 1 is plain BN, where a query shares its key's batch statistics", min=1, max=1024)
    proj_bn: bool = option(False, "BatchNorm after the projector's hidden layer (v3 has it; off: v2's fc-ReLU-fc head)")
    loss: str = option("info_nce", "the two-view loss", choices=("info_nce", "margin", "triplet"))

    def check(self) -> None:
        if self.loss == "info_nce" and self.queue_size == 0 and not self.batch_negatives:
            raise fail("moco: --queue-size 0 leaves InfoNCE no negatives; use --queue-size 1 or more, "
                       "or add --batch-negatives")


@METHODS.register("moco")
class MoCo(Method):
    Config = MoCoConfig

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        split_batch_norm(encoder, config.bn_splits)
        self.projector = split_batch_norm(MLPHead(encoder.feature_dim, config.proj_hidden, config.proj_dim,
                                                  batch_norm=config.proj_bn),
                                          config.bn_splits)
        self.key_net = EMATeacher(nn.Sequential(encoder, self.projector), config.ema_momentum,
                                  config.momentum_schedule)
        self.register_buffer("queue", F.normalize(torch.randn(config.queue_size, config.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._keys: Tensor | None = None  # the last micro-batch's keys, until its backward is done
        self._step_keys: list[Tensor] = []  # every micro-batch's keys of the coming optimiser step

    def views(self, images, generator):
        x_1, x_2 = super().views(images, generator)
        # shuffle-BN: the permutation of the global batch the key encoder sees
        perm = torch.randperm(len(x_2) * world_and_rank()[0], generator=generator, device=generator.device)
        return x_1, x_2, perm

    def loss(self, views):
        x_1, x_2, perm = views
        c = self.config
        broadcast(perm)  # every rank shuffles alike
        q_1 = self.projector(self.encoder(x_1))
        k_2, all_k_2 = self._encode_keys(x_2, perm)
        pairs = [(q_1, k_2, all_k_2)]
        if c.symmetric:
            k_1, all_k_1 = self._encode_keys(x_1, perm)
            pairs.append((self.projector(self.encoder(x_2)), k_1, all_k_1))
        if c.loss == "info_nce":
            value = sum(self._contrast(q, k, all_k) for q, k, all_k in pairs)
        else:
            value = sum(two_view_loss(c.loss, q, k, c.margin, c.mining) for q, k, _ in pairs)
        # the global batch's keys, x_1's before x_2's as in the demo's symmetric loss
        self._keys = F.normalize(torch.cat([all_k for _, _, all_k in reversed(pairs)]), dim=1)
        return {"loss": value, c.loss: value.detach()}

    @torch.no_grad()
    def _encode_keys(self, x: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
        """Shuffle-BN: key_net on a shuffled global batch; (this rank's keys, every rank's keys)."""
        world, rank = world_and_rank()
        n = len(x)
        mine = perm[rank * n:(rank + 1) * n]  # the samples this rank encodes
        shuffled = gather(self.key_net(gather(x)[mine]))  # row j: the key of sample perm[j]
        keys = torch.empty_like(shuffled)
        keys[perm] = shuffled  # unshuffle
        return keys[rank * n:(rank + 1) * n], keys

    def _contrast(self, q: Tensor, k: Tensor, all_k: Tensor) -> Tensor:
        c = self.config
        queue = self.queue if c.queue_size else None
        if not c.batch_negatives:
            return info_nce(q, k, queue, c.temperature, batch_negatives=False)
        # this rank's keys are the batch negatives; the other ranks' join the queue's
        rank, n = world_and_rank()[1], len(k)
        others = torch.cat([all_k[:rank * n], all_k[(rank + 1) * n:]])
        negatives = others if queue is None else torch.cat([others, queue])
        return info_nce(q, k, negatives, c.temperature)

    def after_micro_batch(self):
        if self._keys is not None:
            self._step_keys.append(self._keys)
            self._keys = None

    @torch.no_grad()
    def after_optimizer_step(self, step, total_steps):
        c = self.config
        self.key_net.update(step, total_steps)
        if self._step_keys and c.queue_size:
            self._enqueue(torch.cat(self._step_keys))
        self._step_keys = []

    def _enqueue(self, keys: Tensor) -> None:
        """First in, first out: the keys are written in order from the pointer on, wrapping around."""
        size, ptr = self.queue.shape[0], int(self.queue_ptr)
        # only the newest ``size`` keys would survive writing them all; cut them here, as one
        # assignment with repeated indices leaves which write wins undefined (on GPU)
        if len(keys) > size:
            ptr = (ptr + len(keys) - size) % size
            keys = keys[-size:]
        idx = (torch.arange(len(keys), device=keys.device) + ptr) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + len(keys)) % size)
