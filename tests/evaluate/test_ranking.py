import numpy as np
import pytest
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


def test_build_eval_batch_whole_history_pads_to_the_longest(cyclic_data):
    d = cyclic_data
    u = np.array([0, 1, 2])
    x, t, hr, hi = build_eval_batch(d, u, "test", max_len=None)
    lens = [len(d.sequence(i)) - 1 for i in u]
    assert x.shape == (3, max(lens))
    for row, (i, n) in enumerate(zip(u, lens)):
        assert list(x[row, x.shape[1] - n:]) == list(d.sequence(i)[:-1])
        assert (x[row, : x.shape[1] - n] == 0).all()


def _tiny(name, max_len, align="end", **kw):
    from elasticrec.config import ModelConfig
    from elasticrec.models import build_model

    cfg = ModelConfig(name=name, max_len=max_len, d_model=16, n_layers=2, n_heads=2, dropout=0.0, **kw)
    if name == "elastic":
        cfg.elastic.chunk_size, cfg.elastic.n_dispatchers, cfg.elastic.chunk_align = 4, 3, align
    torch.manual_seed(0)
    return cfg, build_model(cfg, 30).eval()


def _direct_ranks(d, model, users, window, drop=0):
    """Each user alone, unpadded, through the model: the rank of its test item among the items
    outside its history (the evaluator's protocol, written out one user at a time); ``drop``: the
    model reads the history without its ``drop`` most recent items."""
    out = []
    for u in users:
        seq = d.sequence(int(u))
        hist, target = seq[:-1], int(seq[-1])
        fed = hist[: max(len(hist) - drop, 1)]
        x = torch.as_tensor(fed[-window:] if window else fed, dtype=torch.long)[None]
        with torch.no_grad():
            s = model.score_all(model.last_hidden(x))[0].float()
        s[0] = float("-inf")
        s[torch.as_tensor([i for i in set(hist.tolist()) if i != target], dtype=torch.long)] = float("-inf")
        out.append(int((s > s[target]).sum()))
    return np.array(out)


@pytest.mark.parametrize("pos", ["chunk", "none", "learned-start"])
def test_whole_history_equals_each_user_alone(cyclic_data, pos):
    """eval.history_len=0 feeds every user's whole history (longer than max_len here), batches of
    mixed lengths sorted by length and restored to the users' order: the ranks equal those of each
    user run alone, unpadded."""
    d = cyclic_data
    _, model = _tiny("elastic", max_len=6, align="start" if pos == "chunk" else "end", pos_encoding=pos)
    users = d.eval_users("test")[::-1][:40]   # not sorted by id or length
    ev = Evaluator(d, EvalConfig(ks=[10], history_len=0, batch_size=7), max_len=6)
    assert ev.history == "whole history"
    assert d.history_lengths("test")[users].max() > 6
    np.testing.assert_array_equal(ev.ranks(model, "test", users), _direct_ranks(d, model, users, None))
    ev8 = Evaluator(d, EvalConfig(ks=[10], history_len=8, batch_size=7), max_len=6)
    assert ev8.history == "last 8 items"
    np.testing.assert_array_equal(ev8.ranks(model, "test", users), _direct_ranks(d, model, users, 8))


def test_shorter_window_and_refusal_of_learned_positions(cyclic_data):
    """A window inside max_len works for any model; beyond it, learned positions (counted from the
    end, max_len of them) are refused with a clear error, and so is a negative length."""
    from elasticrec.config import ConfigError

    d = cyclic_data
    _, sasrec = _tiny("sasrec", max_len=12)
    users = d.eval_users("test")[:20]
    ev = Evaluator(d, EvalConfig(ks=[10], history_len=5), max_len=12)
    np.testing.assert_array_equal(ev.ranks(sasrec, "test", users), _direct_ranks(d, sasrec, users, 5))
    with pytest.raises(ConfigError, match="reads at most 12 .*pos_encoding=learned"):
        Evaluator(d, EvalConfig(history_len=0), max_len=12).ranks(sasrec, "test", users)
    _, rope = _tiny("sasrec", max_len=6, pos_encoding="rotary")   # rotary: any length
    ev0 = Evaluator(d, EvalConfig(ks=[10], history_len=0), max_len=6)
    np.testing.assert_array_equal(ev0.ranks(rope, "test", users), _direct_ranks(d, rope, users, None))
    _, hstu = _tiny("hstu", max_len=12)
    with pytest.raises(ConfigError, match="hstu reads at most 12"):
        ev0.ranks(hstu, "test", users)
    with pytest.raises(ConfigError, match="history_len must be"):
        Evaluator(d, EvalConfig(history_len=-1), max_len=12)


@pytest.mark.parametrize("name", ["sasrec", "elastic", "hstu", "linrec"])
def test_trimmed_evaluation_batches_equal_each_user_alone(cyclic_data, name):
    """The evaluator sorts users by length and cuts each batch to its longest history (histories
    of 7-19 items, max_len 64 here): the ranks equal those of each user run alone, unpadded."""
    d = cyclic_data
    _, model = _tiny(name, max_len=64)
    users = d.eval_users("test")[::-1][:40]
    ev = Evaluator(d, EvalConfig(ks=[10], batch_size=7), max_len=64)
    np.testing.assert_array_equal(ev.ranks(model, "test", users), _direct_ranks(d, model, users, 64))
    x, *_ = build_eval_batch(d, users[:7], "test", max_len=64, trim=True)
    assert x.shape[1] == 32 and x.shape[1] < 64  # 19 at most, rounded up to a multiple of 16


def test_drop_recent_feeds_an_earlier_window(cyclic_data):
    """eval.drop_recent=N: the inputs end N items earlier (the window keeps its length), the
    left-out items stay in the history the ranking excludes, and at least the oldest item is fed.
    Dropping one item at the test stage feeds exactly the validation input."""
    d = cyclic_data
    u = np.array([0, 1, 2])
    x, t, hr, hi = build_eval_batch(d, u, "test", max_len=5, drop_recent=1)
    xv, _, _, _ = build_eval_batch(d, u, "valid", max_len=5)
    np.testing.assert_array_equal(x, xv)
    for row, i in enumerate(u):
        seq = d.sequence(int(i))
        assert t[row] == seq[-1] and list(hi[hr == row]) == list(seq[:-1])
    x, _, hr, hi = build_eval_batch(d, u, "test", max_len=None, drop_recent=100)
    assert x.shape == (3, 1) and list(x[:, 0]) == [d.sequence(int(i))[0] for i in u]
    assert len(hi) == sum(len(d.sequence(int(i))) - 1 for i in u)


@pytest.mark.parametrize("name", ["sasrec", "elastic"])
def test_drop_recent_ranks_equal_each_user_alone(cyclic_data, name):
    from elasticrec.config import ConfigError

    d = cyclic_data
    _, model = _tiny(name, max_len=6)
    users = d.eval_users("test")[::-1][:30]
    for drop in (1, 3):
        ev = Evaluator(d, EvalConfig(ks=[10], drop_recent=drop, batch_size=7), max_len=6)
        assert ev.history == f"last 6 items, {drop} most recent left out"
        np.testing.assert_array_equal(ev.ranks(model, "test", users), _direct_ranks(d, model, users, 6, drop))
    full = Evaluator(d, EvalConfig(ks=[10]), max_len=6).ranks(model, "test", users)
    assert not np.array_equal(full, _direct_ranks(d, model, users, 6, 1))   # the left-out item mattered
    with pytest.raises(ConfigError, match="drop_recent must be"):
        Evaluator(d, EvalConfig(drop_recent=-1), max_len=6)


def test_drop_recent_timestamps_follow_the_items():
    from elasticrec.data.sequences import SequenceData
    from elasticrec.evaluate.ranking import build_eval_timestamps

    items = np.arange(1, 11, dtype=np.int64)
    d = SequenceData(items=items, offsets=np.array([0, 6, 10]), n_items=10, timestamps=items * 100,
                     item_raw_ids=np.array(["<pad>"] + [f"i{i}" for i in range(1, 11)]),
                     user_raw_ids=np.array(["a", "b"]), meta={"name": "t"})
    u = np.array([0, 1])
    x, _, _, _ = build_eval_batch(d, u, "test", max_len=4, drop_recent=2)
    ts = build_eval_timestamps(d, u, "test", 4, drop_recent=2)
    np.testing.assert_array_equal(x, [[0, 1, 2, 3], [0, 0, 0, 7]])
    np.testing.assert_array_equal(ts, x * 100)
