"""Training batches: next-item prediction at every position of each user's training history.

A user's training history is the sequence minus its last two items (validation, test targets),
or with ``fit="train+valid"`` (a refit, ``train.fit``) minus the test item only.
A training sample is a window of that history ending at some position ``end``: input =
history[end-L-1:end-1], target = history[end-L:end], left-padded with 0 to ``max_len`` = L (0
targets are ignored by the losses). Which windows an epoch uses is ``train.windows``:

- ``last`` (the default; SASRec's and HSTU's reference code): one window per user, the most
  recent. Items older than the last L+1 of a long history are never trained on.
- ``all``: every user's history cut, from its end, into windows whose targets do not overlap, so
  each epoch predicts every training item (but each user's first) exactly once. An epoch holds
  more samples than users (on ML-1M at L=200 about 1.6 times as many targets as ``last``).
- ``random``: one window per user per epoch, its end drawn uniformly from the positions that
  give a full window: same cost per epoch as ``last``, and over epochs the whole history is seen.

How an epoch's samples become tensors is ``train.batching``:

- ``padded`` (the default, and every result in docs/results.md before 2026-12-05): shuffled
  batches, every row left-padded to L.
- ``trimmed``: the same batches, cut to the batch's longest window (rounded up to a multiple of
  16, at most L). Every model here ignores left padding (tests/models), so the model computes the
  same function on fewer columns; only the random streams (dropout, sampled negatives) that are
  drawn per column differ.
- ``bucketed``: shuffled samples are taken ``bucket_pool`` batches at a time, sorted by window
  length inside that pool, cut into batches, and the batches of the epoch shuffled; then trimmed.
  On ML-1M at L = 1000 this trains on about 1.2 million columns per epoch instead of 6 million
  (and at L = 200 on 0.7 instead of 1.2 million), at the price of batches of similar lengths.
  The trainer then divides each step's loss sum by the epoch's mean tokens per batch, not by the
  batch's own, so that every target token keeps the same weight.
"""

from __future__ import annotations

import numpy as np

from elasticrec.data.sequences import FIT_STAGES, SequenceData, trimmed_width

WINDOWS = ("last", "all", "random")


class TrainSequences:
    def __init__(self, data: SequenceData, max_len: int, windows: str = "last", fit: str = "train"):
        if windows not in WINDOWS:
            raise ValueError(f"train.windows must be one of {WINDOWS}, got {windows!r}")
        if fit not in FIT_STAGES:
            raise ValueError(f"train.fit must be one of {FIT_STAGES}, got {fit!r}")
        self.data, self.max_len, self.windows, self.fit = data, max_len, windows, fit
        lens = data.history_lengths(fit)
        self.users = np.nonzero(lens >= 2)[0]  # need at least one (input, target) pair
        self.train_len = lens
        if windows == "all":  # ends T, T-L, T-2L, ... while a window still holds a target pair
            per_user = [np.arange(int(lens[u]), 1, -max_len) for u in self.users]
            counts = np.array([len(e) for e in per_user], dtype=np.int64)
            self.sample_users = np.repeat(self.users, counts)
            self.sample_ends = np.concatenate(per_user) if per_user else np.zeros(0, np.int64)
        else:
            self.sample_users, self.sample_ends = self.users, lens[self.users]

    def __len__(self) -> int:
        """Samples per epoch."""
        return len(self.sample_users)

    def _windows(self, users: np.ndarray, ends: np.ndarray | None):
        """For each sample, the [lo, hi) range of ``data.items`` holding its window: at most L+1
        items of the user's history ending at position ``end`` (default: the training history's
        end). ``batch`` and ``batch_timestamps`` slice the same ranges, so they stay aligned."""
        ends = self.train_len[users] if ends is None else ends
        for u, e in zip(users, ends):
            start, e = int(self.data.offsets[u]), int(e)
            yield start + max(0, e - self.max_len - 1), start + e

    def window_lengths(self, users: np.ndarray, ends: np.ndarray | None = None) -> np.ndarray:
        """Input items in each sample's window (at most L)."""
        ends = self.train_len[users] if ends is None else np.asarray(ends)
        return np.minimum(ends, self.max_len + 1) - 1

    def width(self, users: np.ndarray, ends: np.ndarray | None = None) -> int:
        """Columns a trimmed batch needs: its longest window rounded up to a multiple of 16
        (fewer distinct shapes), never more than L."""
        return trimmed_width(int(self.window_lengths(users, ends).max(initial=1)), self.max_len)

    def batch(self, users: np.ndarray, ends: np.ndarray | None = None,
              width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) [B, W] for the windows of ``users`` ending at ``ends`` (history
        positions; default: each user's most recent window); W = ``width`` (default L), which must
        hold every window (see :meth:`width`)."""
        L = self._checked_width(users, ends, width)
        inputs = np.zeros((len(users), L), dtype=np.int64)
        targets = np.zeros((len(users), L), dtype=np.int64)
        for i, (lo, hi) in enumerate(self._windows(users, ends)):
            seq = self.data.items[lo:hi]  # the inputs plus one more item: the last target
            n = len(seq) - 1
            inputs[i, L - n:] = seq[:-1]
            targets[i, L - n:] = seq[1:]
        return inputs, targets

    def batch_timestamps(self, users: np.ndarray, ends: np.ndarray | None = None,
                         width: int | None = None) -> np.ndarray:
        """Timestamps [B, W] aligned with :meth:`batch`'s inputs (0 at padding); only for
        models with ``uses_timestamps`` on data that has timestamps."""
        if self.data.timestamps is None:
            raise ValueError("this dataset has no timestamps")
        L = self._checked_width(users, ends, width)
        out = np.zeros((len(users), L), dtype=np.int64)
        for i, (lo, hi) in enumerate(self._windows(users, ends)):
            ts = self.data.timestamps[lo:hi - 1]  # the inputs' timestamps
            out[i, L - len(ts):] = ts
        return out

    def _checked_width(self, users, ends, width: int | None) -> int:
        if width is None:
            return self.max_len
        need = int(self.window_lengths(users, ends).max(initial=0))
        if not need <= width <= self.max_len:
            raise ValueError(f"batch width {width} must hold the longest window ({need}) and be at "
                             f"most max_len ({self.max_len})")
        return width

    def epoch_batches(self, batch_size: int, rng: np.random.Generator, rank: int = 0, world: int = 1,
                      bucket_pool: int | None = None):
        """Shuffled global batches of ``batch_size`` samples, as (users, ends) arrays; with
        ``world`` > 1 rank r gets the ``r::world`` slice of each global batch (possibly empty for a
        short last global batch). With ``bucket_pool`` = P, each run of P batches' worth of
        shuffled samples is sorted by window length before it is cut into batches, and the
        batches are then shuffled (``train.batching=bucketed``). The same ``rng`` state gives the
        same epoch."""
        order = rng.permutation(len(self.sample_users))
        users, ends = self.sample_users[order], self.sample_ends[order]
        if self.windows == "random":  # end uniform in [min(T, L+1), T]
            lo = np.minimum(ends, self.max_len + 1)
            ends = lo + np.floor(rng.random(len(ends)) * (ends - lo + 1)).astype(np.int64)
        starts = np.arange(0, len(order), batch_size)
        if bucket_pool is not None:
            if bucket_pool < 1:
                raise ValueError(f"train.bucket_pool must be >= 1, got {bucket_pool}")
            lens, pool = self.window_lengths(users, ends), bucket_pool * batch_size
            by_len = np.concatenate([p + np.argsort(lens[p:p + pool], kind="stable")
                                     for p in range(0, len(order), pool)] or [np.zeros(0, np.int64)])
            users, ends = users[by_len], ends[by_len]
            starts = starts[rng.permutation(len(starts))]
        for s in starts:
            sl = slice(s, s + batch_size)
            yield users[sl][rank::world], ends[sl][rank::world]
