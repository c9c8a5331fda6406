"""input-corruption: contrastive learning is robust to corrupted pre-training images (Cole et al.
2022 measure downsampling, JPEG compression and noise).

Protocol: SimCLR pre-trained on the training images as they are, downsampled (2x smaller,
then back up, bilinear), JPEG-compressed (quality 10) or with Gaussian noise (σ = 25 of 255),
each the same short schedule; every encoder is probed on the clean images, beside random init.
Effect: the share of clean pre-training's gain over random init that the worst corruption
keeps, min_c (acc_c - acc_random) / (acc_clean - acc_random); "robust" needs 80% (margin 0.8).
"""

from __future__ import annotations

import io

import numpy as np

from .base import SHORT, Experiment, labelled_splits, probe, random_init, register, train

CORRUPTIONS = ("downsampled", "jpeg", "noisy")


def corrupt(images: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """(N, H, W, C) uint8 images, corrupted one way."""
    from PIL import Image

    if kind == "noisy":
        noise = np.random.default_rng(seed).normal(0, 25, images.shape)
        return np.clip(images + noise, 0, 255).round().astype(np.uint8)
    out = np.empty_like(images)
    for i, img in enumerate(images):
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        if kind == "downsampled":
            w, h = pil.size
            pil = pil.resize((max(1, w // 2), max(1, h // 2)), Image.BILINEAR).resize((w, h), Image.BILINEAR)
        else:
            buf = io.BytesIO()
            pil.save(buf, format="JPEG", quality=10)
            pil = Image.open(io.BytesIO(buf.getvalue()))
        arr = np.asarray(pil)
        out[i] = arr[..., None] if arr.ndim == 2 else arr
    return out


@register
class InputCorruption(Experiment):
    name = "input-corruption"
    claim = "contrastive learning is robust to corrupted pre-training images (Cole et al. 2022)"
    protocol = ("SimCLR pre-trained on clean / 2x-downsampled / JPEG q10 / noisy (σ 25) training images, 10 epochs "
                "of batch 128 each; linear probe on clean images, beside random init.")
    effect_text = "share of the clean run's linear-probe gain over random init kept by the worst corruption"
    margin = 0.8
    cost = "5.3 min on digits, measured (3 seeds; 2 shared cores)"

    def arms(self, data, seed, work):
        sets = labelled_splits(data, seed)
        rand = probe(random_init("simclr", data, seed), data, seed, sets)
        arms = {"random init": rand, "clean": probe(train("simclr", work / "clean", seed, data=data, **SHORT),
                                                    data, seed, sets)}
        for kind in CORRUPTIONS:
            path = work / f"{kind}.npz"
            np.savez(path, images=corrupt(sets[0].images, kind, seed), labels=sets[0].labels)
            arms[kind] = probe(train("simclr", work / kind, seed, data=str(path), eval_data=f"{data}:test", **SHORT),
                               data, seed, sets)
        return arms

    def effect(self, arms):
        base = arms["random init"]["linear_top1"]
        gain = arms["clean"]["linear_top1"] - base
        # no gain from clean pre-training: nothing to be robust about, so the claim cannot hold (0)
        return min((arms[k]["linear_top1"] - base) / gain for k in CORRUPTIONS) if gain > 0 else 0.0
