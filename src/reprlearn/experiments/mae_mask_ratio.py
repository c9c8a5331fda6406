"""mae-mask-ratio: a high masking ratio (75%) gives the best representation (MAE, He et al. 2022,
Fig. 5).

Protocol: MAE (its defaults: vit-micro, 2x2 patches on digits) with ``--mask-ratio`` 0.25, 0.5,
0.75 and 0.9, each for 20 epochs of batch 256; the linear probe on the encoder's features.
Effect: the linear-probe top-1 at 75% minus the best of the other three ratios.
"""

from __future__ import annotations

from .base import Experiment, best_other, probe, register, train

RATIOS = (0.25, 0.5, 0.75, 0.9)
BUDGET = {"epochs": 20, "batch_size": 256, "warmup_epochs": 2}


@register
class MAEMaskRatio(Experiment):
    name = "mae-mask-ratio"
    claim = "a high masking ratio (75%) gives the best MAE representation"
    protocol = "MAE at mask ratio 25 / 50 / 75 / 90%, 20 epochs of batch 256 each; linear probe on the encoder."
    effect_text = "linear-probe top-1 at 75% minus the best of 25%, 50% and 90%"
    cost = "27 min on digits, measured (3 seeds; 2 shared cores, load ~9)"

    def arms(self, data, seed, work):
        return {f"{round(r * 100)}%": probe(train("mae", work / f"mask{round(r * 100)}", seed, data=data,
                                                  mask_ratio=r, **BUDGET), data, seed) for r in RATIOS}

    def effect(self, arms):
        return best_other(arms, "75%", ["25%", "50%", "90%"], "linear_top1")
