"""The one place that knows about ranks: world size, rank, and the collectives we use.

Every helper is the identity (or the trivial answer) when torch.distributed is not
initialised or runs one process, so single-device code paths need no branches.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True under an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_and_rank() -> tuple[int, int]:
    """(world size, rank); (1, 0) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping gradients.

    ``torch.distributed.nn.all_gather`` sums the incoming gradients back to each
    rank's own slice, so anchors on other ranks still push on our embeddings.
    Identity when not distributed.
    """
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


@torch.no_grad()
def gather(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0, rank order, without gradients (queues)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def broadcast(x: Tensor, src: int = 0) -> Tensor:
    """Rank ``src``'s ``x`` on every rank, in place; returned for chaining. Identity when not distributed."""
    if is_distributed():
        dist.broadcast(x, src=src)
    return x


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum ``x`` over ranks, in place; returned for chaining. Identity when not distributed."""
    if is_distributed():
        dist.all_reduce(x)
    return x


def all_reduce_max(x: Tensor) -> Tensor:
    """The elementwise maximum of ``x`` over ranks, in place; returned for chaining. Identity when not distributed."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


class _RingShift(torch.autograd.Function):
    """Send x to the right neighbour (rank + 1), return what arrives from the left (rank − 1).

    The output of rank r is x of rank r − 1, so the gradient of that output belongs to
    rank r − 1: the backward sends it to the left and receives, from the right, the
    gradient of our own x.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return _exchange(x, to_right=True)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _exchange(grad, to_right=False)


def _exchange(x: Tensor, to_right: bool) -> Tensor:
    """Send x one step round the ring (to the right or to the left) and receive from the other side."""
    world, rank = world_and_rank()
    right, left = (rank + 1) % world, (rank - 1) % world
    dst, src = (right, left) if to_right else (left, right)
    x = x.contiguous()
    out = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x, dst), dist.P2POp(dist.irecv, out, src)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return out


def ring_shift(x: Tensor) -> Tensor:
    """x of rank r − 1 arrives at rank r (one step round the ring), with gradients sent back."""
    return _RingShift.apply(x)
