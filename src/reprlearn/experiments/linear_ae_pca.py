"""linear-ae-pca: a linear autoencoder trained with squared error spans the PCA subspace
(Baldi & Hornik 1989).

Protocol: ``ae --linear --backbone linear --recon mse`` with a code of k = 8 on the training
images (the library's own training loop: mini-batch AdamW, cosine schedule), against PCA on
the same images. Measured: the principal angles θ_1..θ_k between the column span of the
decoder W_d (x̂ = m + W_d z + b) and the top-k principal directions, and the test images'
reconstruction error (squared error summed over pixels in [0, 1], mean per image) of both.
Effect: the subspace overlap (1/k) Σ cos² θ_i, which is 1 for the same subspace and k/D on
average for a random one (D pixels); the claim needs an overlap of 0.9 (margin δ = 0.9).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Experiment, labelled_splits, register, train

K = 8


def principal_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending) between the column spans of a (D, k) and b (D, k)."""
    qa, _ = np.linalg.qr(a)
    qb, _ = np.linalg.qr(b)
    return np.arccos(np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), -1.0, 1.0))[::-1]


@register
class LinearAEPCA(Experiment):
    name = "linear-ae-pca"
    claim = "a linear autoencoder (squared error) spans the PCA subspace"
    protocol = (f"ae --linear (backbone linear, MSE, code {K}) for 40 epochs of batch 128 vs PCA with {K} "
                "components on the same training images; principal angles and test reconstruction error.")
    effect_text = (f"subspace overlap (1/k) Σ cos² θ_i of the decoder's span and the top-{K} PCs "
                   "(1: the same subspace; k/D for a random one)")
    metric = "overlap"
    margin = 0.9
    data_choices = ("digits", "cifar10")
    cost = "0.6 min on digits, measured (3 seeds; 2 shared cores)"

    def arms(self, data, seed, work):
        from ..api import load_method

        train_set, test_set = labelled_splits(data, seed)
        run = train("ae", work / "ae", seed, data=data, backbone="linear", linear=True, recon="mse", latent_dim=K,
                    epochs=40, batch_size=128, lr=5e-3, warmup_epochs=1, weight_decay=0.0, augment="none")
        method, _, _ = load_method(run)
        x = torch.from_numpy(train_set.images).permute(0, 3, 1, 2).float().div(255)
        xt = torch.from_numpy(test_set.images).permute(0, 3, 1, 2).float().div(255)
        flat, flat_t = x.flatten(1).double().numpy(), xt.flatten(1).double().numpy()
        mean = flat.mean(0)
        pcs = np.linalg.svd(flat - mean, full_matrices=False)[2][:K].T  # (D, K)
        w = method.decoder.linear.weight.detach().double().numpy()  # (D, K)
        theta = principal_angles(w, pcs)
        rand = np.random.default_rng(seed).standard_normal(w.shape)
        with torch.no_grad():
            ae_err = float(method.anomaly_score(xt).mean())
        centred = flat_t - mean
        pca_err = float(((centred - centred @ pcs @ pcs.T) ** 2).sum(1).mean())
        both = {"overlap": float(np.mean(np.cos(theta) ** 2)), "max_angle_deg": float(np.degrees(theta.max())),
                "median_angle_deg": float(np.degrees(np.median(theta))),
                "random_overlap": float(np.mean(np.cos(principal_angles(rand, pcs)) ** 2))}
        return {"linear-ae": {**both, "test_recon_error": ae_err},
                "pca": {"overlap": 1.0, "max_angle_deg": 0.0, "median_angle_deg": 0.0,
                        "random_overlap": both["random_overlap"], "test_recon_error": pca_err}}

    def effect(self, arms):
        return arms["linear-ae"]["overlap"]
