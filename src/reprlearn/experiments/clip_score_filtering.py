"""clip-score-filtering: CLIP-score filtering beats no filtering at equal samples seen (DataComp,
Gadre et al. 2023).

Protocol: the curation experiment itself (curate/experiment.py, ``reprlearn curate experiment``)
on its default pool ``scenes:corrupt=0.5`` with its default budget, one seed per seed here: a
scorer trained on clean seed pairs, each strategy's subset, clip trained on each for the same
samples seen, evaluated on the clean held-out pairs.
Effect: the average of zero-shot and retrieval with clip-score-30 minus with no filtering.
"""

from __future__ import annotations

from .base import Experiment, register


@register
class ClipScoreFiltering(Experiment):
    name = "clip-score-filtering"
    claim = "CLIP-score filtering beats no filtering at equal samples seen"
    protocol = "the curation experiment's table (scenes:corrupt=0.5, 12,000 samples seen per run), one per seed."
    effect_text = "average of zero-shot and retrieval, clip-score-30 minus none"
    metric = "average"
    data = "scenes"
    data_choices = ("scenes",)
    cost = "17.9 min on scenes, measured (3 seeds; 2 shared cores)"

    def arms(self, data, seed, work):
        from ..curate.experiment import DEFAULT_POOL, run_experiment

        rows = run_experiment(work, DEFAULT_POOL, seed=seed, progress=False)
        keep = ("size", "zeroshot_top1", "i2t_recall@1", "t2i_recall@1", "average")
        return {r["strategy"]: {k: float(r[k]) for k in keep if k in r} for r in rows}

    def effect(self, arms):
        return arms["clip-score-30"]["average"] - arms["none"]["average"]
