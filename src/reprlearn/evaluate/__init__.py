"""One evaluation harness for every method (see harness.py)."""

from .harness import METRICS, evaluate, extract, format_table, score_features
from .labelfree import alignment, label_free_report, rankme, uniformity
from .probes import cluster_scores, few_label, knn_top1, linear_top1

__all__ = ["METRICS", "evaluate", "extract", "format_table", "score_features", "cluster_scores", "few_label",
           "knn_top1", "linear_top1", "alignment", "label_free_report", "rankme", "uniformity"]
