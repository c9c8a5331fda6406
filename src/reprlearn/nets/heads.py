"""Heads on top of backbone features: MLP projectors (SimCLR, MoCo, BYOL), DINO's and SwAV's prototype heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import fail


class MLPHead(nn.Module):
    """Linear-BN-ReLU x (num_layers - 1), then a final Linear (optionally + BN).

    ``last_bn`` adds an affine-free BatchNorm on the output, as SimCLR v2 /
    MoCo v3 / Barlow Twins style projectors do.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_bn: bool = False,
    ):
        super().__init__()
        if num_layers < 1:
            raise fail(f"MLP head num_layers must be >= 1, got {num_layers}")
        self.in_dim, self.out_dim = in_dim, out_dim
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            # No bias before BN: BN's shift makes it redundant.
            layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
        if last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def projection_head(
    in_dim: int,
    out_dim: int = 128,
    hidden_dim: int | None = None,
    num_layers: int = 2,
    batch_norm: bool = True,
    last_bn: bool = False,
) -> MLPHead:
    """Convenience: a projector whose hidden width defaults to the feature width."""
    return MLPHead(in_dim, hidden_dim or in_dim, out_dim, num_layers, batch_norm, last_bn)


class DINOHead(nn.Module):
    """MLP (GELU) -> L2-normalised bottleneck -> weight-normalised linear (unit-norm rows) to K prototypes."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 512, bottleneck_dim: int = 64, num_layers: int = 3,
                 batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # weight norm with the gain fixed to 1 (DINO's norm_last_layer): rows normalised in forward
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(self.prototypes, dim=-1))


class PrototypeHead(nn.Module):
    """K prototypes c_k (unit rows of ``weight``, (K, D)) scoring embeddings by cosine: z̄ᵀ c_k (SwAV).

    The embeddings are L2-normalised here; the prototypes are kept on the sphere by
    :meth:`normalize_`, which SwAV calls after every optimiser step (the paper normalises them
    at each iteration, outside the gradient), so the scores are cosines in [−1, 1].
    """

    def __init__(self, dim: int, num_prototypes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_prototypes, dim) / dim ** 0.5)
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, z: Tensor) -> Tensor:
        return F.normalize(z, dim=-1) @ self.weight.T
