"""Training windows (train.windows): which parts of each history an epoch trains on."""

import numpy as np
import pytest

from elasticrec.data.sequences import SequenceData
from elasticrec.train.batches import TrainSequences


def position_data(lengths=(3, 4, 9, 25, 40), timestamps=True) -> SequenceData:
    """Item id = global position + 1, so every target names the position it came from."""
    lens = np.array(lengths)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    n = int(offsets[-1])
    return SequenceData(items=np.arange(1, n + 1, dtype=np.int64), offsets=offsets, n_items=n,
                        item_raw_ids=np.array(["<pad>"] + [f"i{i}" for i in range(n)]),
                        user_raw_ids=np.array([f"u{u}" for u in range(len(lens))]),
                        timestamps=np.arange(n, dtype=np.int64) * 10 + 7 if timestamps else None)


def train_positions(data: SequenceData, u: int) -> np.ndarray:
    """Item ids of u's training history (all but the last two items)."""
    return data.items[data.offsets[u]: data.offsets[u + 1] - 2]


def epoch(ts: TrainSequences, seed=0, batch_size=3, rank=0, world=1):
    rng = np.random.default_rng(seed)
    return [ts.batch(u, e) + (u, e) for u, e in ts.epoch_batches(batch_size, rng, rank, world)]


def check_window(data, x, y, u, L):
    """A window is a contiguous, left-padded slice of u's training history, shifted by one."""
    hist = train_positions(data, u)
    m = y > 0
    assert (x > 0).tolist() == m.tolist() and m.sum() <= L
    assert list(y[m]) == list(x[m] + 1)  # next position
    assert set(y[m]) <= set(hist[1:]) and set(x[m]) <= set(hist[:-1])  # never valid/test items
    assert not m[: L - m.sum()].any()  # left padding only


@pytest.mark.parametrize("L", [4, 8, 50])
def test_all_windows_predict_every_training_item_once(L):
    data = position_data()
    ts = TrainSequences(data, L, windows="all")
    seen = []
    for x, y, users, ends in epoch(ts):
        for i, u in enumerate(users):
            check_window(data, x[i], y[i], u, L)
            seen += list(y[i][y[i] > 0])
    expected = np.concatenate([train_positions(data, u)[1:] for u in ts.users])
    assert sorted(seen) == sorted(expected)  # each training target exactly once
    assert len(ts) == sum(-(-(len(train_positions(data, u)) - 1) // L) for u in ts.users)


def test_last_windows_are_the_most_recent_and_the_default():
    data, L = position_data(), 8
    ts = TrainSequences(data, L)
    assert ts.windows == "last" and len(ts) == len(ts.users)
    for x, y, users, ends in epoch(ts):
        for i, u in enumerate(users):
            check_window(data, x[i], y[i], u, L)
            assert y[i][-1] == train_positions(data, u)[-1]
        assert (ts.batch(users)[1] == y).all()  # ends=None means the last window


def test_random_windows_vary_by_epoch_are_full_and_reproducible():
    data, L = position_data(), 8
    ts = TrainSequences(data, L, windows="random")
    assert len(ts) == len(ts.users)
    last_targets = {}
    for seed in range(6):
        for x, y, users, ends in epoch(ts, seed):
            for i, u in enumerate(users):
                check_window(data, x[i], y[i], u, L)
                n_train = len(train_positions(data, u))
                assert (y[i] > 0).sum() == min(L, n_train - 1)  # always a full window
                last_targets.setdefault(int(u), set()).add(int(y[i][-1]))
    assert len(last_targets[4]) > 3  # 40 items, L=8: the window moves
    assert 0 not in last_targets  # 3 items leave 1 for training: no (input, target) pair
    assert len(last_targets[1]) == 1  # 4 items: one window only
    a, b = epoch(ts, 3), epoch(ts, 3)
    assert all((p[1] == q[1]).all() for p, q in zip(a, b))


@pytest.mark.parametrize("windows", ["last", "all", "random"])
def test_timestamps_align_with_inputs(windows):
    data = position_data()
    ts = TrainSequences(data, 8, windows=windows)
    for x, y, users, ends in epoch(ts, 1):
        t = ts.batch_timestamps(users, ends)
        m = x > 0
        assert (t[m] == (x[m] - 1) * 10 + 7).all() and (t[~m] == 0).all()


def test_ranks_split_each_global_batch():
    data = position_data()
    ts = TrainSequences(data, 4, windows="all")
    full = epoch(ts, 2, batch_size=4)
    r0, r1 = epoch(ts, 2, 4, 0, 2), epoch(ts, 2, 4, 1, 2)
    for f, a, b in zip(full, r0, r1):
        assert sorted(zip(f[2], f[3])) == sorted(list(zip(a[2], a[3])) + list(zip(b[2], b[3])))


def test_unknown_windows_is_rejected():
    with pytest.raises(ValueError, match="train.windows"):
        TrainSequences(position_data(), 8, windows="sliding")


@pytest.mark.parametrize("windows", ["last", "all"])
def test_refit_trains_on_the_validation_item_never_the_test_item(windows):
    """fit="train+valid": the training history is everything but the test item, so the
    validation item becomes the last target; the test item is never an input or a target."""
    data, L = position_data(), 8
    ts = TrainSequences(data, L, windows=windows, fit="train+valid")
    assert (ts.train_len == data.lengths - 1).all()
    test_items = {int(data.items[data.offsets[u + 1] - 1]) for u in range(data.n_users)}
    valid_items = {int(data.items[data.offsets[u + 1] - 2]) for u in range(data.n_users)}
    seen_x, seen_y = set(), set()
    for x, y, users, ends in epoch(ts):
        seen_x |= set(x[x > 0].tolist())
        seen_y |= set(y[y > 0].tolist())
        m = y > 0
        assert (y[m] == x[m] + 1).all()  # still the next position
    assert not (seen_x | seen_y) & test_items
    assert valid_items <= seen_y  # every user's validation item is trained on
    plain = TrainSequences(data, L, windows=windows)
    assert not set().union(*[set(y[y > 0].tolist()) for _, y, _, _ in epoch(plain)]) & valid_items
    with pytest.raises(ValueError, match="train.fit"):
        TrainSequences(data, L, fit="test")


@pytest.mark.parametrize("windows", ["last", "all", "random"])
def test_bucketed_epoch_holds_every_sample_once_in_length_sorted_pools(windows):
    """train.batching=bucketed: the epoch's samples are those of the plain shuffle (each once),
    in as many batches, each sorted by window length (its pool was)."""
    data = position_data(lengths=(3, 4, 9, 25, 40, 6, 12, 30, 5, 18, 22, 7, 11))
    ts = TrainSequences(data, 8, windows=windows)
    bs, pool = 2, 3
    plain = list(ts.epoch_batches(bs, np.random.default_rng(1)))
    bucketed = list(ts.epoch_batches(bs, np.random.default_rng(1), bucket_pool=pool))
    key = lambda us, es: sorted(zip(us.tolist(), es.tolist()))  # noqa: E731
    flat = lambda bb: key(np.concatenate([u for u, _ in bb]), np.concatenate([e for _, e in bb]))  # noqa: E731
    if windows != "random":  # random ends are drawn after the shuffle: same samples, other ends
        assert flat(bucketed) == flat(plain)
    assert len(bucketed) == len(plain) and sum(len(u) for u, _ in bucketed) == len(ts)
    lens = [ts.window_lengths(u, e) for u, e in bucketed]
    assert all(np.all(np.diff(x) >= 0) for x in lens)  # sorted inside each batch
    with pytest.raises(ValueError, match="bucket_pool"):
        next(ts.epoch_batches(bs, np.random.default_rng(1), bucket_pool=0))


def test_bucketed_batches_are_shorter_and_within_a_pool_ordered():
    data = position_data(lengths=tuple(range(3, 43)))
    ts = TrainSequences(data, 32)
    bs = 4
    batches = list(ts.epoch_batches(bs, np.random.default_rng(0), bucket_pool=len(ts)))  # one pool
    spans = sorted((int(ts.window_lengths(u, e).min()), int(ts.window_lengths(u, e).max())) for u, e in batches)
    for (lo1, hi1), (lo2, hi2) in zip(spans, spans[1:]):
        assert hi1 <= lo2  # one pool sorted by length: batches cover disjoint length ranges
    plain = list(ts.epoch_batches(bs, np.random.default_rng(0)))
    width = lambda bb: sum(ts.width(u, e) * len(u) for u, e in bb)  # noqa: E731
    assert width(batches) < width(plain) <= len(ts) * 32


def test_trimmed_batch_is_the_padded_batch_without_its_empty_columns():
    data = position_data()
    ts = TrainSequences(data, 40)
    users = ts.users[:2]  # training histories of 2 and 7 items: windows of 1 and 6 inputs
    w = ts.width(users)
    assert w == 16 and ts.width(ts.users) == 40  # rounded up to a multiple of 16, at most L
    x, y = ts.batch(users)
    xt, yt = ts.batch(users, width=w)
    np.testing.assert_array_equal(xt, x[:, -w:])
    np.testing.assert_array_equal(yt, y[:, -w:])
    assert not x[:, :-w].any() and not y[:, :-w].any()
    np.testing.assert_array_equal(ts.batch_timestamps(users, width=w), ts.batch_timestamps(users)[:, -w:])
    with pytest.raises(ValueError, match="longest window"):
        ts.batch(ts.users, width=16)
