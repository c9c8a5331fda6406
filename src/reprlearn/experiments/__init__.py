"""Published claims about the methods, measured: one fixed protocol each (``reprlearn experiment NAME``).

Each module defines one :class:`~reprlearn.experiments.base.Experiment` and registers it; the
runner (runner.py) repeats it over seeds, writes table.csv, chart.png and summary.md, and
applies the one verdict rule stated there.
"""

from .base import EXPERIMENTS, Experiment
from .runner import experiment_list, run_experiment, verdict

# each module registers its one experiment when imported
from . import (augmentations, clip_score_filtering, data_quantity, domain_invariance, input_corruption,  # noqa: E402
               linear_ae_pca, mae_mask_ratio, moco_queue, projection_head, siglip_small_batch, ssl_anomaly,
               transfer)

MODULES = (augmentations, clip_score_filtering, data_quantity, domain_invariance, input_corruption, linear_ae_pca,
           mae_mask_ratio, moco_queue, projection_head, siglip_small_batch, ssl_anomaly, transfer)

__all__ = ["EXPERIMENTS", "Experiment", "experiment_list", "run_experiment", "verdict"]
