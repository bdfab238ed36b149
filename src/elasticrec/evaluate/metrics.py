"""Ranking metrics from 0-based ranks of the single held-out item.

rank r = number of candidates scored strictly higher than the target (ties favour the target's
earlier neighbours, i.e. we count strictly greater scores; ties are rare with float scores).
HR@K = [r < K];  NDCG@K = [r < K] / log2(r + 2);  MRR = 1 / (r + 1) (no cut-off).
"""

from __future__ import annotations

import numpy as np


def per_user(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Per-user values of ``HR@K``, ``NDCG@K`` or ``MRR`` from 0-based ranks (their mean is the metric)."""
    r = np.asarray(ranks, dtype=np.float64)
    name, _, k = metric.partition("@")
    if name == "MRR" and not k:
        return 1.0 / (r + 1.0)
    if name in ("HR", "NDCG") and k.isdigit() and int(k) > 0:
        hit = r < int(k)
        return hit.astype(np.float64) if name == "HR" else hit / np.log2(r + 2.0)
    raise ValueError(f"unknown metric {metric!r}; use HR@K, NDCG@K or MRR")


def metrics_from_ranks(ranks: np.ndarray, ks=(1, 5, 10, 20, 50, 200)) -> dict[str, float]:
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no ranks to average: the evaluation set is empty")
    names = [f"{m}@{k}" for k in ks for m in ("HR", "NDCG")] + ["MRR"]
    return {name: float(per_user(ranks, name).mean()) for name in names}


class MetricAccumulator:
    """Collects ranks batch by batch (kept exactly, so shards can be merged exactly)."""

    def __init__(self, ks=(1, 5, 10, 20, 50, 200)):
        self.ks = tuple(ks)
        self.ranks: list[np.ndarray] = []

    def add(self, ranks) -> None:
        self.ranks.append(np.asarray(ranks, dtype=np.int64).reshape(-1))

    def all_ranks(self) -> np.ndarray:
        return np.concatenate(self.ranks) if self.ranks else np.zeros(0, dtype=np.int64)

    def compute(self) -> dict[str, float]:
        out = metrics_from_ranks(self.all_ranks(), self.ks)
        out["n_users"] = int(self.all_ranks().size)
        return out
