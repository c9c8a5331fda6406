"""Domain adaptation scores, for methods that declare ``AdaptsDomains`` (domain-invariant).

On the held-out images of both domains (the run's evaluation set and its target evaluation set):

- ``target_top1``: the adapted encoder and classifier on the target; ``source_top1`` on the source;
  beside the references trained with the same F, C and initialisation: ``source_only_top1``
  (the source images alone), ``lambda0_top1`` (λ = 0 on the method's batches, target images
  through F's BatchNorm too) and ``target_oracle_top1`` (target labels, the ceiling); ``domain_top1`` per domain and
  ``worst_domain_top1``, the multi-domain setting's headline;
- ``critic_w1``: the trained critic's Wasserstein estimate between the two domains' features;
- ``domain_classifier``: a logistic regression telling the domains apart from frozen features
  (balanced domains, fit on one half, scored on the other: 0.5 = indistinguishable), before
  training (the initial weights), after, and for the source-only and λ = 0 references;
- ``umap_domains.png``: UMAP of both domains' features before and after training, coloured by
  domain and by class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import ImageSet, stratified_split
from ..data.pixels import unit_float
from .harness import extract

MAX_POINTS = 1000  # per domain, in the UMAP figure


@torch.no_grad()
def top1(predict, images: ImageSet, device, batch_size: int = 1024) -> float | None:
    """Accuracy of ``predict`` (float images in [0, 1] -> logits) on a labelled ImageSet (None: no labels)."""
    if images.labels is None:
        return None
    x = images.tensor()
    preds = [predict(unit_float(x[s:s + batch_size].to(device))).argmax(1).cpu() for s in range(0, len(x), batch_size)]
    return float((torch.cat(preds).numpy() == images.labels).mean())


def domain_classifier_top1(source: np.ndarray, target: np.ndarray, seed: int = 0) -> float:
    """Held-out accuracy of a logistic regression telling source features from target features.

    The larger domain is subsampled to the smaller one's size (chance is 0.5); standardised
    features, fit on a stratified half, scored on the other half."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    n = min(len(source), len(target))
    x = np.concatenate([source[rng.choice(len(source), n, replace=False)],
                        target[rng.choice(len(target), n, replace=False)]])
    y = np.repeat([0, 1], n)
    fit, held = stratified_split(y, len(y), 0.5, seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(x[fit], y[fit])
    return float(clf.score(x[held], y[held]))


def domain_metrics(method, random_encoder: torch.nn.Module, source: ImageSet, target: ImageSet | None,
                   device, run_dir: Path | None = None, seed: int = 0) -> dict:
    """The scores above for a method declaring AdaptsDomains; writes umap_domains.png into ``run_dir``."""
    if target is None:
        return {"domain": "skipped: the run has no target evaluation images (--target-data)"}
    result: dict = {"target_eval_data": target.name, "target_test_images": len(target)}
    result["target_top1"] = top1(method.classify, target, device)
    result["source_top1"] = top1(method.classify, source, device)
    refs = method.references()
    for name, (encoder, classifier) in refs.items():
        predict = lambda x, e=encoder, c=classifier: c(e(x))  # noqa: E731
        result[f"{name}_top1"] = top1(predict, target, device)
        result[f"{name}_source_top1"] = top1(predict, source, device)
    per_domain = {"source": result["source_top1"], "target": result["target_top1"]}
    if None not in per_domain.values():
        result["domain_top1"] = per_domain
        result["worst_domain_top1"] = min(per_domain.values())
    xs, xt = source.tensor(device), target.tensor(device)
    after_s, after_t = extract(method.encoder, xs), extract(method.encoder, xt)
    before_s, before_t = extract(random_encoder.to(device), xs), extract(random_encoder, xt)
    labels = torch.from_numpy(source.labels).to(device) if source.labels is not None else None
    result["critic_w1"] = method.domain_distance(torch.from_numpy(after_s).to(device),
                                                 torch.from_numpy(after_t).to(device), labels)
    classifier = {"before": domain_classifier_top1(before_s, before_t, seed),
                  "after": domain_classifier_top1(after_s, after_t, seed)}
    for name, (encoder, _) in refs.items():
        if name != "target_oracle":
            classifier[name] = domain_classifier_top1(extract(encoder, xs), extract(encoder, xt), seed)
    result["domain_classifier"] = classifier
    if run_dir is not None and source.labels is not None and target.labels is not None:
        from .figures import umap_domains_plot

        rng = np.random.default_rng(seed)
        pick_s = np.sort(rng.choice(len(source), min(MAX_POINTS, len(source)), replace=False))
        pick_t = np.sort(rng.choice(len(target), min(MAX_POINTS, len(target)), replace=False))
        panels = {"before training": np.concatenate([before_s[pick_s], before_t[pick_t]]),
                  "after training": np.concatenate([after_s[pick_s], after_t[pick_t]])}
        domain = np.repeat([0, 1], [len(pick_s), len(pick_t)])
        classes = np.concatenate([source.labels[pick_s], target.labels[pick_t]])
        names = source.class_names or [str(c) for c in range(int(classes.max()) + 1)]
        umap_domains_plot(panels, domain, classes, names, (source.name, target.name),
                          Path(run_dir) / "umap_domains.png", title="source and target features (UMAP)", seed=seed)
    return result
