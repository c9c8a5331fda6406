"""Split BatchNorm: batch statistics per group of the batch, emulating BN on several devices.

In training mode the batch of N samples is cut into ``splits`` equal contiguous groups
(fewer where ``splits`` does not divide N: the most that do, of 2 samples or more) and each
group g is normalised with its own statistics, exactly as plain BatchNorm on that group
alone would:

    y = γ (x - μ_g) / sqrt(σ²_g + ε) + β,    μ_g, σ²_g over group g (and the spatial axes)

MoCo needs this on one device (He et al. 2020, Sec. 3.3; the authors' single-GPU demo
uses 8 splits): with one BN batch the key encoder's statistics are those of the very
batch the queries come from, a signal the model can exploit instead of learning
features. With groups, and the keys' batch shuffled before the key encoder, a query's
BN group and its key's BN group hold different samples.

The running statistics move by the mean over groups of the group statistics (the
unbiased variance, as BatchNorm keeps), once per forward, as in the authors' demo:
``running ← (1 - m) running + m mean_g(stat_g)``. In eval mode, or with one group, the
layer is plain BatchNorm. Parameters and buffers are BatchNorm's, so checkpoints of
split and plain layers are interchangeable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _SplitBatchNorm:
    splits: int = 1

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        n, c, rest = x.shape[0], x.shape[1], x.shape[2:]
        groups = split_groups(n, self.splits)
        if not self.training or groups == 1:
            return super().forward(x)
        factor = 0.0
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        # (N, C, *) -> (N/G, G·C, *): group j's samples become channels jC..(j+1)C-1, so one
        # batch_norm call normalises every group by its own statistics
        xg = x.reshape(groups, n // groups, c, *rest).transpose(0, 1).reshape(n // groups, groups * c, *rest)
        tile = lambda t: None if t is None else t.repeat(groups)  # noqa: E731
        mean, var = tile(self.running_mean), tile(self.running_var)  # updated per group in place
        y = F.batch_norm(xg, mean, var, tile(self.weight), tile(self.bias), True, factor, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.copy_(mean.view(groups, c).mean(0))
                self.running_var.copy_(var.view(groups, c).mean(0))
        y = y.reshape(n // groups, groups, c, *rest).transpose(0, 1).reshape(n, c, *rest)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous(memory_format=torch.channels_last)  # keep the CNN's layout
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", splits={self.splits}"


class SplitBatchNorm1d(_SplitBatchNorm, nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are per group of ``splits`` (see the module)."""

    def __init__(self, num_features: int, splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.splits = int(splits)


class SplitBatchNorm2d(_SplitBatchNorm, nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are per group of ``splits`` (see the module)."""

    def __init__(self, num_features: int, splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.splits = int(splits)


def split_groups(n: int, splits: int) -> int:
    """How many equal groups a batch of n is cut into: the most, up to ``splits``, that divide n
    and hold at least 2 samples each (BatchNorm of a single sample is undefined)."""
    return next((g for g in range(min(splits, n // 2), 1, -1) if n % g == 0), 1)


def split_batch_norm(module: nn.Module, splits: int) -> nn.Module:
    """Replace every BatchNorm1d/2d inside ``module`` (in place) by its split version.

    The new layers take over the old ones' parameters and buffers (the same tensors), like
    ``nn.SyncBatchNorm.convert_sync_batchnorm``; ``splits`` 1 leaves ``module`` as it is.
    Returns ``module`` (or the new layer when ``module`` itself is a BatchNorm).
    """
    if splits <= 1:
        return module
    kinds = {nn.BatchNorm1d: SplitBatchNorm1d, nn.BatchNorm2d: SplitBatchNorm2d}
    if type(module) in kinds:
        new = kinds[type(module)](module.num_features, splits, eps=module.eps, momentum=module.momentum,
                                  affine=module.affine, track_running_stats=module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = split_batch_norm(child, splits)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
