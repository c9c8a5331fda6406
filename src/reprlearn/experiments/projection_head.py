"""projection-head: a non-linear projection head improves linear evaluation of the backbone
(SimCLR, Chen et al. 2020, Fig. 8).

Protocol: SimCLR (``--head none | linear | mlp``, everything else its defaults) on the same
short schedule; the linear probe on the backbone features h (never on z).
Effect: the linear-probe top-1 of ``mlp`` minus the better of ``none`` and ``linear``.
"""

from __future__ import annotations

from .base import SHORT, Experiment, best_other, probe, register, train

HEADS = ("none", "linear", "mlp")


@register
class ProjectionHead(Experiment):
    name = "projection-head"
    claim = "a non-linear projection head improves linear evaluation of the backbone features"
    protocol = ("SimCLR with --head none / linear / mlp, 10 epochs of batch 128 each; linear probe (and kNN) on "
                "the backbone features.")
    effect_text = "linear-probe top-1 of the mlp head minus the better of no head and a linear head"
    cost = "2.2 min on digits, measured (3 seeds; 2 shared cores)"

    def arms(self, data, seed, work):
        return {head: probe(train("simclr", work / head, seed, data=data, head=head, **SHORT), data, seed)
                for head in HEADS}

    def effect(self, arms):
        return best_other(arms, "mlp", ["none", "linear"], "linear_top1")
