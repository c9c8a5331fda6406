"""moco-queue: a queue of negatives stands in for a large batch (MoCo, He et al. 2020).

Protocol: at a small batch of 32, SimCLR (its negatives: the other 2·32 - 2 views) against MoCo
v2 (its defaults: a queue of 1,024 keys from an EMA key encoder), both for the same 10 epochs
(so the same steps); SimCLR at batch 256 for the same epochs is shown beside them as the
large-batch reference (it takes 8x fewer steps, so it is not part of the effect).
Effect: the linear-probe top-1 of MoCo at batch 32 minus SimCLR's at batch 32.
"""

from __future__ import annotations

from .base import SHORT, Experiment, probe, register, train

SMALL, LARGE = 32, 256


@register
class MocoQueue(Experiment):
    name = "moco-queue"
    claim = "a queue of negatives stands in for a large batch"
    protocol = (f"SimCLR vs MoCo (queue 1024) at batch {SMALL}, 10 epochs each; SimCLR at batch {LARGE} as the "
                "large-batch reference; linear probe on the backbone features.")
    effect_text = f"linear-probe top-1 of MoCo with its queue minus SimCLR's, both at batch {SMALL}"
    cost = "3.6 min on digits, measured (3 seeds; 2 shared cores)"

    def arms(self, data, seed, work):
        short = {**SHORT, "batch_size": SMALL}
        return {f"simclr b{SMALL}": probe(train("simclr", work / "simclr-small", seed, data=data, **short), data, seed),
                f"moco b{SMALL} queue": probe(train("moco", work / "moco-small", seed, data=data, **short), data, seed),
                f"simclr b{LARGE}": probe(train("simclr", work / "simclr-large", seed, data=data,
                                                **{**SHORT, "batch_size": LARGE}), data, seed)}

    def effect(self, arms):
        return arms[f"moco b{SMALL} queue"]["linear_top1"] - arms[f"simclr b{SMALL}"]["linear_top1"]
