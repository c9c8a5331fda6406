"""siglip-small-batch: the sigmoid loss does not need a large batch (SigLIP, Zhai et al. 2023).

Protocol: clip and siglip (their defaults on ``scenes``) at batch 16, 64 and 256, every run
the same 8,000 samples seen without warm-up; evaluated on the held-out scenes pairs with the
curation experiment's evaluation (zero-shot top-1, image->text and text->image Recall@1/@5,
and their average).
Effect: the average of siglip at batch 16 minus clip's at batch 16.
"""

from __future__ import annotations

from .base import Experiment, register, train

BATCHES = (16, 64, 256)
SAMPLES = 8000


@register
class SigLIPSmallBatch(Experiment):
    name = "siglip-small-batch"
    claim = "the sigmoid loss does not need a large batch"
    protocol = (f"clip vs siglip at batch {' / '.join(map(str, BATCHES))} on scenes, {SAMPLES} samples seen each; "
                "zero-shot and retrieval on the held-out pairs.")
    effect_text = f"average of zero-shot and retrieval, siglip minus clip, both at batch {BATCHES[0]}"
    metric = "average"
    data = "scenes"
    data_choices = ("scenes",)
    cost = "21 min on scenes, measured (3 seeds; 2 shared cores)"

    def arms(self, data, seed, work):
        from ..api import load_method
        from ..curate.experiment import evaluate_pairs
        from ..data.run_data import load_run_data

        arms = {}
        for method in ("clip", "siglip"):
            for b in BATCHES:
                run = train(method, work / f"{method}-b{b}", seed, data=data, batch_size=b, samples_seen=SAMPLES,
                            warmup_epochs=0)
                model, cfg, _ = load_method(run)
                arms[f"{method} b{b}"] = evaluate_pairs(model, load_run_data(cfg, True).eval_pairs)
        return arms

    def effect(self, arms):
        return arms[f"siglip b{BATCHES[0]}"]["average"] - arms[f"clip b{BATCHES[0]}"]["average"]
