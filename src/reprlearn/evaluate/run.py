"""The one harness on a trained method: what ``reprlearn eval`` computes and writes to eval.json.

Every method's encoder gets the probes and the three baselines (evaluate/harness.py) and the
label-free figures beside its random init (evaluate/labelfree.py); on evaluation images without
labels, the label-free report alone, with its neighbour and cluster sheets. What a method declares
adds the rest: ``EmbedsText`` zero-shot, retrieval and CLIP-score AUROC
(image_text_harness.py), ``Reconstructs`` reconstructions, figures, densities and the anomaly
AUROC (generative.py), ``ModelsText`` masked-token accuracy, perplexity and the text probe instead
of the image probes (text.py), ``AdaptsDomains`` target accuracy beside its references, the critic's
distance and the domain classifier (domain.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.run_data import RunData
from ..data.stream import ShardStream, read_subset
from ..errors import fail
from ..files import atomic_write
from ..methods import AdaptsDomains, EmbedsText, ModelsText, Reconstructs
from ..methods.lookup import short_name
from ..config import run_device
from ..runs import untrained_encoder
from .harness import evaluate, labelled
from .labelfree import label_free_report

GENERATIVE_MAX = 10000  # a streamed evaluation set: the densities are computed on this many of its images


def evaluate_method(method, cfg, info, data: RunData, run_dir: Path, anomaly_class: int | None = None,
                    iwae_k: int = 50) -> dict:
    """Score ``method`` on ``data`` with the run config's evaluation options; writes RUN/eval.json."""
    from ..augment import augment, preset

    train_set, eval_set = data.train, data.eval
    if eval_set is None and not cfg.eval:
        raise fail(f"the run trained on every image of {cfg.data} (--no-eval), so none is held out; "
                   "give evaluation images (reprlearn eval RUN --data SOURCE)")
    if eval_set is None:
        raise fail(f"{cfg.data} is too small to hold out evaluation images; give --data with a test set")
    device = run_device(cfg)
    method = method.to(device).eval()
    if isinstance(method, ModelsText):  # text alone: masked tokens and the text probe, no image probes
        from .text import text_metrics

        result = text_metrics(method, untrained_encoder(method, cfg, info).to(device), train_set, eval_set, device,
                              seed=cfg.seed, max_train=cfg.eval_max_train, labels_per_class=cfg.labels_per_class)
        result.update(method=cfg.method, eval_data=eval_set.name)
        with atomic_write(run_dir / "eval.json", "w") as f:
            f.write(json.dumps(result, indent=2))
        return result
    spec = preset(cfg.augment, info.image_size, info.channels)
    views = lambda x, g: augment(x, spec, g)  # noqa: E731  (the run's own views)
    name, image_text = short_name(cfg.method), isinstance(method, EmbedsText)
    if labelled(eval_set):
        random_init = untrained_encoder(method, cfg, info)
        result = evaluate(method.encoder, random_init, train_set, eval_set,
                          labels_per_class=cfg.labels_per_class, seed=cfg.seed, max_train=cfg.eval_max_train,
                          finetune_views=views if cfg.finetune else None, run_dir=run_dir, method=name,
                          knn_k=cfg.knn_k, knn_temperature=cfg.knn_temperature, probe_backend=cfg.probe_backend,
                          linear_c=cfg.linear_c, baseline_cache=cfg.baseline_cache)
        if not image_text:  # an image-text run is scored in its joint space below
            result["label_free"] = label_free_report(method.encoder, random_init, train_set, None, views,
                                                     seed=cfg.seed)
    elif not image_text:  # no labels: no probe to fit, the label-free report instead
        if cfg.finetune:
            raise fail(f"--finetune needs labelled evaluation data and {eval_set.name} has no labels; drop --finetune")
        result = {"method": name, "evaluation": "label-free", "train_images": len(train_set),
                  "test_images": len(eval_set)}
        result["label_free"] = label_free_report(method.encoder, untrained_encoder(method, cfg, info), train_set,
                                                 eval_set, views, seed=cfg.seed, method=name, run_dir=run_dir)
    else:  # captions but no labels (e.g. Flickr8k): no probe to fit; the joint space is scored below
        result = {"method": cfg.method, "test_images": len(eval_set),
                  "probes": "skipped: the evaluation pairs have no class labels"}
    if isinstance(method, EmbedsText):
        from .image_text_harness import image_text_metrics

        result.update(image_text_metrics(method, data.eval_pairs, device))
    result["labels_per_class"] = cfg.labels_per_class
    result["eval_data"] = eval_set.name
    result["skipped_items"] = {"train": len(train_set.skipped), "eval": len(eval_set.skipped)}
    if isinstance(method, Reconstructs):
        from .generative import generative_metrics

        if isinstance(eval_set, ShardStream):  # likelihoods and figures on a decoded random subset
            eval_set = read_subset(eval_set, min(len(eval_set), GENERATIVE_MAX), cfg.seed)
            result["generative_images"] = len(eval_set)

        result.update(generative_metrics(method, cfg, info, eval_set, run_dir, anomaly_class, iwae_k, device))
    if isinstance(method, AdaptsDomains):
        from .domain import domain_metrics

        result.update(domain_metrics(method, untrained_encoder(method, cfg, info), eval_set, data.target_eval, device, run_dir,
                                     seed=cfg.seed))
    with atomic_write(run_dir / "eval.json", "w") as f:
        f.write(json.dumps(result, indent=2))
    return result
