"""ssl-anomaly: self-supervised features are useful for anomaly detection.

Protocol (one-class, held-out class): every model is trained without class c = seed mod 10
(``--exclude-class c``); each test image is scored and the AUROC of "is class c" is measured.
Scores: SimCLR's and BYOL's backbone features, the mean cosine distance to the 5 nearest
training features (evaluate.probes.knn_distance); an autoencoder's (``ae``, its defaults)
reconstruction error; the same kNN distance on the raw pixels. Same short schedule for all.
The held-out class changes with the seed, so the spread includes the classes' difficulty.
Effect: the mean AUROC of SimCLR and BYOL minus the better of the autoencoder and raw pixels.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import SHORT, Experiment, labelled_splits, register, train


@register
class SSLAnomaly(Experiment):
    name = "ssl-anomaly"
    claim = "self-supervised features are useful for anomaly detection"
    protocol = ("train without class c = seed, score the test images: kNN distance (k=5) in SimCLR / BYOL features "
                "vs autoencoder reconstruction error vs kNN distance on raw pixels; one-class AUROC of class c.")
    effect_text = "mean AUROC of SimCLR and BYOL minus the better of the autoencoder and raw pixels"
    metric = "auroc"
    cost = "2.0 min on digits, measured (3 seeds; 2 shared cores)"

    def arms(self, data, seed, work):
        from ..api import embed, load_method
        from ..evaluate.generative import auroc
        from ..evaluate.probes import knn_distance

        c = seed % 10
        train_set, test_set = labelled_splits(data, seed)
        normal = train_set.subset(np.flatnonzero(train_set.labels != c))
        positive = test_set.labels == c
        arms = {}
        for method in ("simclr", "byol"):
            run = train(method, work / method, seed, data=data, exclude_class=c, **SHORT)
            feats = embed(run, normal), embed(run, test_set)
            arms[method] = {"auroc": auroc(knn_distance(*feats), positive)}
        run = train("ae", work / "ae", seed, data=data, exclude_class=c, **SHORT)
        ae, _, _ = load_method(run)
        x = torch.from_numpy(test_set.images).permute(0, 3, 1, 2).float().div(255)
        with torch.no_grad():
            arms["autoencoder"] = {"auroc": auroc(ae.anomaly_score(x).double().numpy(), positive)}
        pixels = (normal.images.reshape(len(normal), -1) / 255.0, test_set.images.reshape(len(test_set), -1) / 255.0)
        arms["raw pixels"] = {"auroc": auroc(knn_distance(*pixels), positive)}
        for arm in arms.values():
            arm["held_out_class"] = float(c)
        return arms

    def effect(self, arms):
        ssl = (arms["simclr"]["auroc"] + arms["byol"]["auroc"]) / 2
        return ssl - max(arms["autoencoder"]["auroc"], arms["raw pixels"]["auroc"])
