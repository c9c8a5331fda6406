"""data-quantity: contrastive pre-training's gains shrink with less unlabeled data (Cole et al.
2022, "When does contrastive visual representation learning work?").

Protocol: a fixed pool of training images (digits: all 1,438; CIFAR-10: 5,000 drawn with the
seed), SimCLR on its first 10 / 25 / 50 / 100% (a fixed random order per seed), every run the
same 110 optimiser steps of batch 128; the linear probe on the full labelled splits, beside
the random-init encoder.
Effect: the linear-probe top-1 with 100% of the pool minus with 10% (the gain lost with less data).
"""

from __future__ import annotations

import numpy as np

from .base import Experiment, labelled_splits, probe, random_init, register, train

FRACTIONS = (0.1, 0.25, 0.5, 1.0)
POOL = {"digits": 1438, "cifar10": 5000}
STEPS = {"max_steps": 110, "batch_size": 128, "warmup_epochs": 0}


@register
class DataQuantity(Experiment):
    name = "data-quantity"
    claim = "contrastive pre-training gains shrink with less unlabeled data (Cole et al. 2022)"
    protocol = ("SimCLR on 10 / 25 / 50 / 100% of a fixed pool (digits: 1,438; cifar10: 5,000 images), the same "
                "110 steps of batch 128 each; linear probe on the full splits, beside random init.")
    effect_text = "linear-probe top-1 with 100% of the pool minus with 10%"
    cost = "3.4 min on digits, measured (3 seeds; 2 shared cores)"

    def arms(self, data, seed, work):
        sets = labelled_splits(data, seed)
        pool = sets[0]
        order = np.random.default_rng(seed).permutation(len(pool))[:POOL.get(data, len(pool))]
        arms = {"random init": probe(random_init("simclr", data, seed), data, seed, sets)}
        for f in FRACTIONS:
            part = pool.subset(np.sort(order[:max(2, round(f * len(order)))]))
            path = work / f"pool{round(f * 100)}.npz"
            np.savez(path, images=part.images, labels=part.labels)
            run = train("simclr", work / f"simclr{round(f * 100)}", seed, data=str(path), eval_data=f"{data}:test", **STEPS)
            arms[f"{round(f * 100)}%"] = {**probe(run, data, seed, sets), "images": float(len(part))}
        return arms

    def effect(self, arms):
        return arms["100%"]["linear_top1"] - arms["10%"]["linear_top1"]
