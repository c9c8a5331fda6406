"""domain-invariant, single-seed variants and a look at what the alignment matched: why the adapted
model does or does not beat λ = 0 on digits -> digits-m (benchmarks/RESULTS.md).

    python benchmarks/domain_diagnose.py --epochs 20 --variant '{}' --variant '{"lam": 0.01}'
    python benchmarks/domain_diagnose.py --epochs 40 --variant '{"align": "joint", "pseudo_threshold": 0.95}'

Each variant is ``reprlearn train domain-invariant --no-eval`` with the method's defaults plus the
variant's options, then the domain scores (evaluate/domain.py, no UMAP) and, with --diagnose, for
the adapted model and the references: the target predictions per class, per-class recall, the
nearest source class centroid, and a 5-fold logistic regression on frozen target features fit with
the target's labels. These use target labels for analysis only: no option is chosen by them.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

import reprlearn
from reprlearn.data.run_data import load_run_data
from reprlearn.evaluate.domain import domain_metrics
from reprlearn.runs import build_encoder, load_method


def features(encoder, images) -> np.ndarray:
    with torch.no_grad():
        return encoder(images.tensor().float() / 255).numpy()


def diagnose(method, data) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    source, target = data.eval, data.target_eval
    classes = int(source.labels.max()) + 1
    models = {"adapted": (method.encoder, method.classifier), **method.references()}
    for name, (encoder, classifier) in models.items():
        hs, ht = features(encoder, source), features(encoder, target)
        with torch.no_grad():
            pred = classifier(torch.from_numpy(ht)).argmax(1).numpy()
        recall = [float((pred[target.labels == c] == c).mean()) for c in range(classes)]
        centroids = np.stack([hs[source.labels == c].mean(0) for c in range(classes)])
        nearest = np.argmin(((ht[:, None] - centroids[None]) ** 2).sum(-1), 1)
        probe = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), ht,
                                target.labels, cv=5).mean()
        print(f"  {name}: target predictions per class {np.bincount(pred, minlength=classes).tolist()}; "
              f"recall per class {np.round(recall, 2).tolist()}; nearest source centroid "
              f"{(nearest == target.labels).mean():.3f}; target linear probe (target labels) {probe:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", action="append", default=None, help="JSON of method/run options (repeatable)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--diagnose", action="store_true", help="also the per-class look (see above)")
    p.add_argument("--out", default="/tmp/domain-diagnose")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    for i, variant in enumerate(a.variant or ["{}"]):
        options = json.loads(variant)
        run = Path(a.out) / f"e{a.epochs}-s{a.seed}-{i}"
        if not (run / "checkpoints" / "last.ckpt").is_file():
            reprlearn.train("domain-invariant", out=run, progress=False, eval=False, epochs=a.epochs, seed=a.seed,
                            **options)
        method, cfg, info = load_method(run)
        data = load_run_data(cfg, captions=False)
        r = domain_metrics(method, build_encoder(cfg, info), data.eval, data.target_eval, "cpu")
        dc = r["domain_classifier"]
        print(f"{variant} ({a.epochs} epochs, seed {a.seed}): target top-1 adapted {r['target_top1']:.3f}, "
              f"λ = 0 {r['lambda0_top1']:.3f}, source only {r['source_only_top1']:.3f}, oracle "
              f"{r['target_oracle_top1']:.3f}; source top-1 {r['source_top1']:.3f}; domain classifier after "
              f"{dc['after']:.3f} (λ = 0 {dc['lambda0']:.3f}); critic W1 {r['critic_w1']:.3f}", flush=True)
        if a.diagnose:
            diagnose(method, data)


if __name__ == "__main__":
    main()
