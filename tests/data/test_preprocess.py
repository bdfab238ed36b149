from __future__ import annotations

import numpy as np
import pytest

from elasticrec.data import DataError, Interactions, PreprocessOptions, preprocess


def _inter(users, items, ts=None, rating=None):
    return Interactions(np.asarray(users), np.asarray(items),
                        None if ts is None else np.asarray(ts),
                        None if rating is None else np.asarray(rating, dtype=float), "mem")


def seqs(d):
    return [d.item_raw_ids[d.sequence(u)].tolist() for u in range(d.n_users)]


def test_order_stable_tie_break_and_remap():
    # user b appears first; ties at t=5 keep file order (y before x)
    it = _inter(["b", "a", "b", "b", "a", "b"], ["y", "z", "x", "w", "y", "v"],
                ts=[5, 3, 5, 1, 2, 9])
    d = preprocess(it, PreprocessOptions())
    assert d.user_raw_ids.tolist() == ["b", "a"]
    assert seqs(d) == [["w", "y", "x", "v"], ["y", "z"]]
    assert d.timestamps.tolist() == [1, 5, 5, 9, 2, 3]
    # items numbered by first appearance in the user-major chronological stream
    assert d.item_raw_ids.tolist() == ["<pad>", "w", "y", "x", "v", "z"]
    assert d.items.tolist() == [1, 2, 3, 4, 2, 5]
    assert d.offsets.tolist() == [0, 4, 6]
    assert d.items.dtype == np.int64 and d.offsets.dtype == np.int64
    assert d.n_items == 5


def test_no_timestamps_keeps_file_order():
    d = preprocess(_inter([2, 1, 2, 1], [30, 10, 20, 40]), PreprocessOptions())
    assert d.user_raw_ids.tolist() == ["2", "1"]
    assert seqs(d) == [["30", "20"], ["10", "40"]]
    assert d.timestamps is None


def test_min_rating():
    it = _inter([1, 1, 1, 2], [1, 2, 3, 1], rating=[5, 3, 4, 1])
    d = preprocess(it, PreprocessOptions(min_rating=4))
    assert seqs(d) == [["1", "3"]]
    with pytest.raises(DataError, match="no ratings"):
        preprocess(_inter([1], [1]), PreprocessOptions(min_rating=4))
    with pytest.raises(DataError, match="no interactions left"):
        preprocess(it, PreprocessOptions(min_rating=6))


def test_kcore_one_pass_vs_iterative():
    # item filter first, then user filter; one pass can leave an item below the threshold
    it = _inter(["u1", "u1", "u2", "u2", "u3", "u3", "u3"], ["A", "B", "A", "C", "C", "D", "D"])
    # items: A2 B1 C2 D2 -> drop B; users: u1 now 1 -> dropped; A is left with 1 interaction
    one = preprocess(it, PreprocessOptions(min_item_count=2, min_user_count=2))
    assert one.user_raw_ids.tolist() == ["u2", "u3"]
    assert seqs(one) == [["A", "C"], ["C", "D", "D"]]
    full = preprocess(it, PreprocessOptions(min_item_count=2, min_user_count=2,
                                            kcore_iterative=True))
    # iterative: A dropped too, then u2 has 1 -> dropped, then C has 1 -> dropped, u3 = D D
    assert seqs(full) == [["D", "D"]]
    counts = np.bincount(full.items, minlength=full.n_items + 1)[1:]
    assert counts.min() >= 2 and full.lengths.min() >= 2
    # user-only and item-only filters
    assert preprocess(it, PreprocessOptions(min_user_count=3)).user_raw_ids.tolist() == ["u3"]
    assert preprocess(it, PreprocessOptions(min_item_count=2)).n_items == 3


def test_kcore_iterative_to_empty_raises():
    it = _inter([1, 2], [1, 2])
    with pytest.raises(DataError, match="no interactions left"):
        preprocess(it, PreprocessOptions(min_item_count=2, kcore_iterative=True))


def test_leave_one_out_split_end():
    d = preprocess(_inter([1] * 5 + [2] * 2, [1, 2, 3, 4, 5, 6, 7]), PreprocessOptions())
    seq = d.sequence(0)
    tr, va, te = (d.split_end(0, s) for s in ("train", "valid", "test"))
    assert d.items[d.offsets[0]:tr].tolist() == seq[:-2].tolist()  # training history
    assert d.items[va] == seq[-2]  # validation target: second last
    assert d.items[te] == seq[-1]  # test target: last
    assert d.items[d.offsets[0]:te].tolist() == seq[:-1].tolist()  # test history
    assert d.eval_users("test").tolist() == [0]  # user 1 has only 2 items
    for stage in ("train", "valid", "test"):  # the vectorised form of split_end - offsets
        assert d.history_lengths(stage).tolist() == [d.split_end(u, stage) - d.offsets[u] for u in range(2)]


def test_seen_transitions_read_the_training_histories_only():
    """A step (last history item -> target) counts as seen when some user's training history (all
    but its last two items) holds it as two consecutive items; held-out items never count."""
    users = [0] * 5 + [1] * 6 + [2] * 4
    items = [1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8, 2, 7, 8, 9]
    d = preprocess(_inter(users, items), PreprocessOptions())
    assert [list(map(int, s)) for s in seqs(d)] == [[1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8], [2, 7, 8, 9]]
    # training steps: 1>2 2>3 (user 0), 3>4 4>5 5>6 (user 1), 2>7 (user 2)
    # test steps: 4>5 seen (user 1's training); 7>8 only among user 1's own held-out items; 8>9 nowhere
    assert d.seen_transitions("test").tolist() == [True, False, False]
    # validation steps: 3>4 seen (user 1's training); 6>7 and 7>8 only among held-out items
    assert d.seen_transitions("valid").tolist() == [True, False, False]
    with pytest.raises(ValueError, match="valid or test"):
        d.seen_transitions("train")


def test_empty_raises():
    with pytest.raises(DataError, match="no interactions"):
        preprocess(_inter([], []), PreprocessOptions())


def test_large_log_iterative_kcore():
    """Two million events (the scale the vectorised path exists for): the iterative 5-core holds
    for users and items, no event is invented, and each user's events stay in time order. No
    wall-clock assertion: speed belongs in benchmarks, and a loaded CI machine would flake."""
    rng = np.random.default_rng(0)
    n = 2_000_000
    it = _inter(rng.integers(0, 50_000, n), rng.integers(0, 20_000, n), ts=rng.integers(0, 10**6, n))
    d = preprocess(it, PreprocessOptions(min_item_count=5, min_user_count=5, kcore_iterative=True))
    assert 0 < d.items.size <= n and d.lengths.min() >= 5
    assert np.bincount(d.items, minlength=d.n_items + 1)[1:].min() >= 5
    assert np.all(np.diff(d.timestamps)[np.diff(np.repeat(np.arange(d.n_users), d.lengths)) == 0] >= 0)
