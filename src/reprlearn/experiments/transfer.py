"""transfer: self-supervised features transfer to other datasets.

Protocol (target: digits): SimCLR pre-trained on another source, CIFAR-10's training images
brought to the target's form (grayscale luma, resized to 8x8; the first 10,000, in memory),
then the linear probe on digits; beside it the random-init encoder and SimCLR trained on the
digits themselves (the in-domain reference), all on the same short schedule and digits' views.
Effect: the linear-probe top-1 of the transferred features minus random init's.
Needs CIFAR-10 ($REPRLEARN_CIFAR10 pointing at its shards, or the download).
"""

from __future__ import annotations

import numpy as np

from .base import SHORT, Experiment, labelled_splits, probe, random_init, register, train

SOURCE_IMAGES = 10000


def as_target(source: str, size: int, channels: int, n: int) -> np.ndarray:
    """The first ``n`` images of ``source`` resized to ``size`` px with ``channels`` channels (luma for 1)."""
    from ..data import load_source

    images = load_source(source, image_size=size).images[:n]
    if channels == 1 and images.shape[-1] == 3:
        images = (images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        images = images.round().clip(0, 255).astype(np.uint8)
    return images


@register
class Transfer(Experiment):
    name = "transfer"
    claim = "self-supervised features transfer to other datasets"
    protocol = ("SimCLR pre-trained on CIFAR-10 (10,000 images, grayscale, 8x8) vs random init vs SimCLR on digits "
                "itself, 10 epochs of batch 128; linear probe on digits.")
    effect_text = "linear-probe top-1 on digits of the CIFAR-10-pre-trained encoder minus random init's"
    data_choices = ("digits",)
    cost = "2.7 min on digits (+ CIFAR-10 decoded once), measured (3 seeds; 2 shared cores)"

    def arms(self, data, seed, work):
        sets = labelled_splits(data, seed)
        path = work / "source.npz"
        if not path.is_file():
            np.savez(path, images=as_target("cifar10:train", sets[0].image_size, sets[0].channels, SOURCE_IMAGES))
        # the target's own views for every run, so only the pre-training images differ
        views = {"augment": "auto", **SHORT, "epochs": 2}  # 10,000 images: 2 epochs ~ 156 steps (digits: 110)
        return {"random init": probe(random_init("simclr", data, seed), data, seed, sets),
                "cifar10 -> digits": probe(train("simclr", work / "source", seed, data=str(path), eval_data=f"{data}:test", **views),
                                           data, seed, sets),
                "digits (in-domain)": probe(train("simclr", work / "target", seed, data=data, **SHORT), data, seed,
                                            sets)}

    def effect(self, arms):
        return arms["cifar10 -> digits"]["linear_top1"] - arms["random init"]["linear_top1"]
