"""Evaluation: leave-one-out, full ranking over all items (sampled protocol optional, labelled)."""

from elasticrec.evaluate.metrics import MetricAccumulator, metrics_from_ranks
from elasticrec.evaluate.ranking import Evaluator, build_eval_batch

__all__ = ["Evaluator", "MetricAccumulator", "build_eval_batch", "metrics_from_ranks"]
