"""SimSiam (Chen and He 2021): a Siamese network with a predictor and a stop-gradient.

Two views -> backbone -> projector f (3 layers, BN after each, the last affine-free) -> z;
a bottleneck predictor h (Linear-BN-ReLU, Linear) -> p. The symmetrised loss

    L = ½ D(p_a, sg(z_b)) + ½ D(p_b, sg(z_a)),   D(p, z) = −cos(p, z)

(:func:`~reprlearn.losses.simsiam_loss`) with the stop-gradient sg is all that prevents
collapse: no negatives, no momentum encoder (the paper's point). Deviations from the paper:
widths ``proj_dim`` 256 / ``pred_hidden`` 64 instead of 2048 / 512 (the same 4x bottleneck);
the predictor trains with the run's learning-rate schedule (the paper keeps its lr fixed, which
it reports as slightly better, not necessary). ``--no-stop-gradient`` is the paper's Fig. 2
ablation (on digits with the cnn its projections lose rank, 113 -> 13 of 256 in 10 epochs, while
the backbone's features keep their spread).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..losses import simsiam_loss
from ..nets import MLPHead
from .base import METHODS, Method


@dataclass
class SimSiamConfig:
    proj_hidden: int = option(512, "projector hidden width (2048 in the paper)", min=1, max=65536)
    proj_dim: int = option(256, "projection dimension (2048 in the paper)", min=1, max=65536)
    pred_hidden: int = option(64, "predictor bottleneck width (512 in the paper: a quarter of proj-dim)", min=1,
                              max=65536)
    stop_gradient: bool = option(True, "stop the gradient at the target projection (false: the paper's collapsing "
                                 "ablation)")


@METHODS.register("simsiam")
class SimSiam(Method):
    Config = SimSiamConfig
    run_defaults = {"epochs": 40, "batch_size": 256, "lr": 2e-3, "warmup_epochs": 5}

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        self.projector = MLPHead(encoder.feature_dim, config.proj_hidden, config.proj_dim, num_layers=3, last_bn=True)
        self.predictor = MLPHead(config.proj_dim, config.pred_hidden, config.proj_dim, num_layers=2)

    def loss(self, views):
        x_a, x_b = views
        z_a = self.projector(self.encoder(x_a))
        z_b = self.projector(self.encoder(x_b))
        p_a, p_b = self.predictor(z_a), self.predictor(z_b)
        sg = self.config.stop_gradient
        value = 0.5 * (simsiam_loss(p_a, z_b, sg) + simsiam_loss(p_b, z_a, sg))
        return {"loss": value, "simsiam": value.detach()}
