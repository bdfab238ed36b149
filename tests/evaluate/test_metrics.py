import math

import numpy as np
import pytest

from elasticrec.evaluate.metrics import MetricAccumulator, metrics_from_ranks


def test_hand_computed_values():
    # ranks 0, 3, 12 (0-based): hits@1 = 1, hits@5 = 2, hits@10 = 2, hits@20 = 3
    m = metrics_from_ranks(np.array([0, 3, 12]), ks=(1, 5, 10, 20))
    assert m["HR@1"] == pytest.approx(1 / 3)
    assert m["HR@5"] == pytest.approx(2 / 3)
    assert m["HR@10"] == pytest.approx(2 / 3)
    assert m["HR@20"] == pytest.approx(1.0)
    assert m["NDCG@1"] == pytest.approx(1 / 3)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(5)) / 3)
    assert m["NDCG@20"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(14)) / 3)
    assert m["MRR"] == pytest.approx((1 + 1 / 4 + 1 / 13) / 3)


def test_perfect_and_worst():
    assert metrics_from_ranks(np.zeros(5), ks=(10,))["NDCG@10"] == 1.0
    m = metrics_from_ranks(np.full(4, 1000), ks=(10,))
    assert m["HR@10"] == 0.0 and m["NDCG@10"] == 0.0 and m["MRR"] == pytest.approx(1 / 1001)


def test_accumulator_merges_exactly():
    acc = MetricAccumulator(ks=(10,))
    acc.add([0, 5])
    acc.add([20])
    assert acc.compute()["HR@10"] == pytest.approx(2 / 3)
    assert acc.compute()["n_users"] == 3


def test_empty_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        metrics_from_ranks(np.array([]))
