"""Products of one fixed matrix with a few rows at a time, ``x W^T`` and ``G x``, fast on a CPU.

The linear probe's L-BFGS multiplies the same (N, D) features by a (C, D) weight and by a
(C, N) gradient factor 50-60 times a fit, and k-means multiplies them by its centres and its
member masks every step, with C = 10-100. Against so few columns MKL's float32 GEMM (torch's
CPU default) runs far below its peak, while oneDNN's inner-product primitive, on tensors in
its own layout, runs the same products about 2x faster on CIFAR-10 pixels (8,001 x 3,072, 10
rows, 2 AVX-512 cores: x W^T 11.6 -> 6.0 ms, G x 15.3 -> 7.2 ms; benchmarks/probe_fit_speed.py),
equal within float32 rounding (tests/test_softmax_fit.py); k-means on them 3.6 -> 3.35 s. ``x``
is converted once (and its transpose, on the first ``G x``): 0.17 s and two more copies of
``x``, paid back within a dozen products. Elsewhere (a
GPU, a torch without oneDNN, float64) the products are torch's GEMMs, with the few-row side
zero-padded to a multiple of 16 rows, which MKL runs up to 2x faster than 10 rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def onednn_usable(x: torch.Tensor) -> bool:
    """Whether :class:`FixedRows` runs ``x``'s products on oneDNN: float32 on a CPU with oneDNN."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()


def padded_rows(c: torch.Tensor) -> torch.Tensor:
    """``c`` (m, D) with zero rows appended up to a multiple of 16 (the GEMM path's shape)."""
    m = -(-len(c) // 16) * 16
    return c if m == len(c) else torch.cat([c, c.new_zeros(m - len(c), c.shape[1])])


class FixedRows:
    """``x`` (N, D), held for many products with a few rows: :meth:`times` and :meth:`left`."""

    def __init__(self, x: torch.Tensor, onednn: bool | None = None):
        self.x = x
        self.onednn = onednn_usable(x) if onednn is None else onednn and onednn_usable(x)
        self._x = x.contiguous().to_mkldnn() if self.onednn else None
        self._xt = None

    @classmethod
    def of(cls, x: FixedRows | torch.Tensor, onednn: bool | None = None) -> FixedRows:
        """``x`` itself when it is held already, else ``FixedRows(x, onednn)``."""
        return x if isinstance(x, FixedRows) else cls(x, onednn)

    def __len__(self) -> int:
        return len(self.x)

    def times(self, rows: torch.Tensor) -> torch.Tensor:
        """``x rows^T``: (N, m) for ``rows`` (m, D)."""
        if self.onednn:
            return torch.ops.aten.mkldnn_linear(self._x, rows.contiguous().to_mkldnn(), None).to_dense()
        return F.linear(self.x, padded_rows(rows))[:, :len(rows)]

    def left(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows x``: (m, D) for ``rows`` (m, N)."""
        if self.onednn:
            if self._xt is None:
                self._xt = self.x.T.contiguous().to_mkldnn()
            return torch.ops.aten.mkldnn_linear(rows.contiguous().to_mkldnn(), self._xt, None).to_dense()
        return (padded_rows(rows) @ self.x)[:len(rows)]
