import numpy as np
import torch

from elasticrec.config import EvalConfig
from elasticrec.evaluate import Evaluator, build_eval_batch


class FixedScores(torch.nn.Module):
    """A 'model' whose scores are a fixed vector over items (ignores the history)."""

    def __init__(self, scores):
        super().__init__()
        self.scores = torch.tensor(scores, dtype=torch.float32)

    def last_hidden(self, x):
        return torch.ones(x.shape[0], 1)

    def score_all(self, h):
        return h * self.scores[None]


def test_build_eval_batch_leave_one_out(cyclic_data):
    d = cyclic_data
    u = np.array([0, 1])
    x, t, hr, hi = build_eval_batch(d, u, "valid", max_len=5)
    s0 = d.sequence(0)
    assert t[0] == s0[-2] and list(x[0]) == list(s0[:-2][-5:])
    x, t, hr, hi = build_eval_batch(d, u, "test", max_len=50)
    assert t[1] == d.sequence(1)[-1]
    assert (x[1] > 0).sum() == len(d.sequence(1)) - 1  # left padded
    assert x[1, -1] == d.sequence(1)[-2]
    assert len(hi[hr == 1]) == len(d.sequence(1)) - 1


def test_full_ranking_excludes_history_but_not_target(cyclic_data):
    d = cyclic_data
    n = d.n_items
    seq = d.sequence(0)
    target = int(seq[-1])
    scores = np.arange(n + 1, dtype=np.float32)  # item i scores i: higher ids rank first
    m = FixedScores(scores)
    ev = Evaluator(d, EvalConfig(ks=[1, 10]), max_len=50)
    rank_excl = ev.ranks(m, "test", np.array([0]))[0]
    hist = set(seq[:-1].tolist()) - {target}
    expected = sum(1 for i in range(1, n + 1) if i > target and i not in hist)
    assert rank_excl == expected
    ev_keep = Evaluator(d, EvalConfig(ks=[1, 10], exclude_history=False), max_len=50)
    assert ev_keep.ranks(m, "test", np.array([0]))[0] == n - target


def test_sampled_protocol_is_labelled_and_easier(cyclic_data):
    scores = np.random.default_rng(0).normal(size=cyclic_data.n_items + 1)
    m = FixedScores(scores)
    full = Evaluator(cyclic_data, EvalConfig(ks=[10]), max_len=50).evaluate(m, "test")
    samp = Evaluator(cyclic_data, EvalConfig(ks=[10], protocol="sampled", n_negatives=5,
                                             negative_sampling="uniform"), max_len=50).evaluate(m, "test")
    assert full["protocol"] == "full"
    assert samp["protocol"].startswith("SAMPLED")
    assert samp["HR@10"] == 1.0  # only 5 negatives: the target is always in the top 10
    assert full["HR@10"] < 1.0
