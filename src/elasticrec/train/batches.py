"""Training batches: next-item prediction at every position of each user's training history.

A user's training history is the sequence minus its last two items (validation, test targets).
Input = history[:-1], target = history[1:], both truncated to the last ``max_len`` positions and
left-padded with 0 (0 targets are ignored by the losses).
"""

from __future__ import annotations

import numpy as np

from elasticrec.data.sequences import SequenceData


class TrainSequences:
    def __init__(self, data: SequenceData, max_len: int):
        self.data, self.max_len = data, max_len
        lens = np.maximum(data.lengths - 2, 0)  # == split_end(u, "train") - offsets[u]
        self.users = np.nonzero(lens >= 2)[0]  # need at least one (input, target) pair
        self.train_len = lens

    def __len__(self) -> int:
        return len(self.users)

    def batch(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        L = self.max_len
        inputs = np.zeros((len(users), L), dtype=np.int64)
        targets = np.zeros((len(users), L), dtype=np.int64)
        for i, u in enumerate(users):
            start = int(self.data.offsets[u])
            seq = self.data.items[start: start + int(self.train_len[u])][-(L + 1):]
            n = len(seq) - 1
            inputs[i, L - n:] = seq[:-1]
            targets[i, L - n:] = seq[1:]
        return inputs, targets

    def batch_timestamps(self, users: np.ndarray) -> np.ndarray:
        """Timestamps [B, max_len] aligned with :meth:`batch`'s inputs (0 at padding); only for
        models with ``uses_timestamps`` on data that has timestamps."""
        if self.data.timestamps is None:
            raise ValueError("this dataset has no timestamps")
        L = self.max_len
        out = np.zeros((len(users), L), dtype=np.int64)
        for i, u in enumerate(users):
            start = int(self.data.offsets[u])
            ts = self.data.timestamps[start: start + int(self.train_len[u])][-(L + 1):][:-1]
            out[i, L - len(ts):] = ts
        return out

    def epoch_batches(self, batch_size: int, rng: np.random.Generator, rank: int = 0, world: int = 1):
        """Shuffled global batches of ``batch_size`` users; with ``world`` > 1 rank r gets the
        ``r::world`` slice of each global batch (possibly empty for a short last batch)."""
        order = self.users[rng.permutation(len(self.users))]
        for s in range(0, len(order), batch_size):
            yield order[s: s + batch_size][rank::world]
