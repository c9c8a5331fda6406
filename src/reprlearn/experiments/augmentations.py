"""augmentations: composing a crop with colour distortion is key for SimCLR
(Chen et al. 2020, Fig. 5 and Table 1).

Protocol: SimCLR with the views of ``--augment none | crop | colour | crop+colour | auto``
(the parts of the data's own recipe, see augment/spec.py; ``auto`` is the full one: on digits it
adds rotation and translation, on CIFAR-10 nothing beyond crop+colour as blur is off at 32 px)
on the same short schedule; the linear probe on the backbone features.
Effect: the linear-probe top-1 of crop+colour minus the better of crop alone and colour alone.
"""

from __future__ import annotations

from .base import SHORT, Experiment, best_other, probe, register, train

ARMS = {"none": "none", "crop": "crop", "colour": "colour", "crop+colour": "crop+colour", "full": "auto"}


@register
class Augmentations(Experiment):
    name = "augmentations"
    claim = "composite augmentation (crop + colour) is key for SimCLR"
    protocol = ("SimCLR with views: none / crop only / colour only / crop+colour / the full recipe, 10 epochs of "
                "batch 128 each; linear probe on the backbone features.")
    effect_text = "linear-probe top-1 of crop+colour minus the better of crop only and colour only"
    cost = "3.9 min on digits, measured (3 seeds; 2 shared cores)"

    def arms(self, data, seed, work):
        return {arm: probe(train("simclr", work / arm.replace("+", "-"), seed, data=data, augment=spec, **SHORT),
                           data, seed) for arm, spec in ARMS.items()}

    def effect(self, arms):
        return best_other(arms, "crop+colour", ["crop", "colour"], "linear_top1")
