"""MLP heads used on top of backbone features (SimCLR/MoCo/BYOL projectors)."""

from __future__ import annotations

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
