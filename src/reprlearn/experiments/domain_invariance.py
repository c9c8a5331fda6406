"""domain-invariance: a Wasserstein critic makes domains indistinguishable and helps the target
domain (WDGRL, Shen et al. 2018).

Protocol: ``reprlearn train domain-invariant`` with its defaults (source digits, target
digits-m), read from its evaluation, which trains the references beside it from the same
initialisation and batches (benchmarks/domain_shift.py reports the same): target top-1 and the
domain classifier's accuracy on the features of the adapted model, of source only, which is
λ = 0 as the method's evaluation defines it (the same batches, so BatchNorm sees the target images too, and
no critic: the comparison isolates the critic), and of the source images alone (reported
beside, not in the effect). Effect: the smaller of the two claimed gains, min(target top-1
adapted - λ = 0, domain-classifier accuracy λ = 0 - adapted): both halves of the claim must show.
"""

from __future__ import annotations

import json

from .base import Experiment, register, train


@register
class DomainInvariance(Experiment):
    name = "domain-invariance"
    claim = "a Wasserstein critic makes domains indistinguishable and helps the target domain"
    protocol = ("domain-invariant (its defaults, 40 epochs) on digits -> digits-m vs source only (λ = 0: the same "
                "batches, no critic) and the source images alone; target top-1 and domain-classifier accuracy.")
    effect_text = ("min(target top-1 gain over λ = 0, drop in domain-classifier accuracy from λ = 0 to adapted)")
    metric = "target_top1"
    data_choices = ("digits",)
    cost = "6.2 min on digits, measured (3 seeds; 2 shared cores)"

    def arms(self, data, seed, work):
        run = train("domain-invariant", work / "run", seed, data=data, eval=True)
        r = json.loads((run / "eval.json").read_text())
        dc = r["domain_classifier"]
        return {"adapted": {"target_top1": float(r["target_top1"]), "domain_classifier": float(dc["after"])},
                "λ = 0": {"target_top1": float(r["lambda0_top1"]), "domain_classifier": float(dc["lambda0"])},
                "source images alone": {"target_top1": float(r["source_only_top1"]),
                                        "domain_classifier": float(dc["source_only"])}}

    def effect(self, arms):
        a, s = arms["adapted"], arms["λ = 0"]
        return min(a["target_top1"] - s["target_top1"], s["domain_classifier"] - a["domain_classifier"])
