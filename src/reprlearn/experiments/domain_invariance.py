"""domain-invariance: a Wasserstein critic makes domains indistinguishable and helps the target
domain (WDGRL, Shen et al. 2018).

Protocol: ``reprlearn train domain-invariant`` with its defaults (source digits, target
digits-m; the evaluation trains the source-only reference from the same initialisation and
batches, as benchmarks/domain_shift.py reports), read from its evaluation: target top-1 of the
adapted and the source-only model, and the domain classifier's accuracy on their features.
Effect: the smaller of the two claimed gains, min(target top-1 adapted - source only,
domain-classifier accuracy source only - adapted): both halves of the claim must show.
"""

from __future__ import annotations

import json

from .base import Experiment, register, train


@register
class DomainInvariance(Experiment):
    name = "domain-invariance"
    claim = "a Wasserstein critic makes domains indistinguishable and helps the target domain"
    protocol = ("domain-invariant (its defaults, 40 epochs) on digits -> digits-m vs its source-only reference; "
                "target top-1 and domain-classifier accuracy.")
    effect_text = ("min(target top-1 gain over source only, drop in domain-classifier accuracy from source only "
                   "to adapted)")
    metric = "target_top1"
    data_choices = ("digits",)
    cost = "not measured here; 95-375 s a run in benchmarks/RESULTS.md, so 3 seeds ~5-19 min"

    def arms(self, data, seed, work):
        run = train("domain-invariant", work / "run", seed, data=data, eval=True)
        r = json.loads((run / "eval.json").read_text())
        dc = r["domain_classifier"]
        return {"adapted": {"target_top1": float(r["target_top1"]), "domain_classifier": float(dc["after"])},
                "source only": {"target_top1": float(r["source_only_top1"]),
                                "domain_classifier": float(dc["source_only"])}}

    def effect(self, arms):
        a, s = arms["adapted"], arms["source only"]
        return min(a["target_top1"] - s["target_top1"], s["domain_classifier"] - a["domain_classifier"])
