"""SimCLR (Chen et al. 2020): two views -> backbone -> MLP projector -> NT-Xent.

The projector is used for the loss only; evaluation uses the backbone features.
Under DDP the negatives are the views of the whole global batch.

``--head`` picks the projector g of z = g(h), as compared in the paper's Figure 8 (the
``projection-head`` experiment re-measures it): ``mlp`` (the paper's, Linear-BN-ReLU-Linear),
``linear`` (one Linear to ``proj_dim``) or ``none`` (z = h, the loss on the backbone features).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import option
from ..losses import nt_xent
from ..nets import MLPHead
from .base import METHODS, Method
from .two_view_losses import TwoViewOptions, two_view_loss


@dataclass
class SimCLRConfig(TwoViewOptions):
    temperature: float = option(0.2, "NT-Xent temperature τ", above=0.0, max=10.0)
    loss: str = option("nt_xent", "the two-view loss", choices=("nt_xent", "margin", "triplet"))
    head: str = option("mlp", "projector between the backbone and the loss: mlp (the paper's), linear, or none "
                       "(the loss on the backbone features)", choices=("mlp", "linear", "none"))


@METHODS.register("simclr")
class SimCLR(Method):
    Config = SimCLRConfig

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        if config.head == "none":
            self.projector = nn.Identity()
        else:  # a one-layer MLPHead is a single Linear
            self.projector = MLPHead(encoder.feature_dim, config.proj_hidden, config.proj_dim,
                                     num_layers=2 if config.head == "mlp" else 1)

    def loss(self, views):
        x_a, x_b = views
        z_a = self.projector(self.encoder(x_a))
        z_b = self.projector(self.encoder(x_b))
        c = self.config
        if c.loss == "nt_xent":
            value = nt_xent(z_a, z_b, temperature=c.temperature, gather=True)
        else:
            value = two_view_loss(c.loss, z_a, z_b, c.margin, c.mining)
        return {"loss": value, c.loss: value.detach()}
