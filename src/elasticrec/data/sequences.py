"""The processed form every model trains on: per-user chronological item sequences.

Items are dense ids ``1..n_items`` (0 is padding); sequences are stored CSR-style as one flat
``items`` array plus ``offsets`` (user u owns ``items[offsets[u]:offsets[u+1]]``), so a
100M-interaction dataset is two numpy arrays (memory-mappable), never Python lists.

Leave-one-out split: the last item of each sequence is the test target, the second last the
validation target, the rest is training history. A refit (``train.fit=train+valid``) trains on
the validation target too: its training history is stage ``"train+valid"``, everything but the
test item.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


_CUT = {"train": 2, "valid": 2, "test": 1, "train+valid": 1}  # items hidden from each stage's history
FIT_STAGES = ("train", "train+valid")  # what a model may train on (train.fit)
TRIM_MULTIPLE = 16  # a trimmed batch's width is rounded up to a multiple of this (fewer shapes)


def trimmed_width(longest: int, cap: int) -> int:
    """Columns a left-padded batch whose longest row holds ``longest`` items needs: rounded up to
    a multiple of ``TRIM_MULTIPLE``, at least one multiple, never more than ``cap``."""
    return min(cap, -(-max(int(longest), 1) // TRIM_MULTIPLE) * TRIM_MULTIPLE)


@dataclass
class SequenceData:
    items: np.ndarray  # int64 [n_interactions], dense item ids 1..n_items, chronological per user
    offsets: np.ndarray  # int64 [n_users + 1]
    n_items: int
    item_raw_ids: np.ndarray  # str [n_items + 1]; index 0 is "<pad>"
    user_raw_ids: np.ndarray  # str [n_users]
    timestamps: np.ndarray | None = None  # int64 [n_interactions] or None
    meta: dict = field(default_factory=dict)  # name, source digest, options ...

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_interactions(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u]: self.offsets[u + 1]]

    # -------------------------------------------------------------- leave-one-out split
    def split_end(self, u: int, stage: str) -> int:
        """Exclusive end (index into ``items``) of the history visible for ``stage`` of user u.

        train: everything but the last two items (inputs and shifted targets come from it);
        valid: the same history, target = ``items[end]`` (second last);
        test: all but the last item, target = ``items[end]`` (last);
        train+valid: the training history of a refit, the test history (validation item included).
        """
        n = self.offsets[u + 1] - self.offsets[u]
        cut = _CUT[stage]
        return int(self.offsets[u] + max(n - cut, 0))

    def history_lengths(self, stage: str) -> np.ndarray:
        """Per user, the length of the history visible for ``stage`` (``split_end - offsets``):
        the items before the stage's target (train: the training history)."""
        return np.maximum(self.lengths - _CUT[stage], 0)

    def seen_transitions(self, stage: str, fit: str = "train") -> np.ndarray:
        """Per user, whether the step from the last history item to the ``stage`` target (valid or
        test) also occurs as two consecutive items in some user's ``fit`` history (the training
        data): the target then follows the latest item as it did in training. False for a user
        with no history or no target. Used to split paired comparisons (``compare --by-transition``)."""
        if stage not in ("valid", "test"):
            raise ValueError(f"stage must be valid or test, got {stage!r}")
        if self.n_interactions == 0:
            return np.zeros(self.n_users, dtype=bool)
        # consecutive items both in a fit history: a user's last item never is, so no pair crosses users
        keep = self._history_mask(fit)
        both = keep[:-1] & keep[1:]
        base = np.int64(self.n_items + 1)
        seen = np.unique(self.items[:-1][both].astype(np.int64) * base + self.items[1:][both])
        start = self.offsets[:-1]
        end = start + self.history_lengths(stage)  # index of each user's target
        ok = end > start  # a history, hence a target (the stage hides at least one item)
        last, target = self.items[np.where(ok, end - 1, 0)], self.items[np.where(ok, end, 0)]
        return ok & np.isin(last.astype(np.int64) * base + target, seen)

    def eval_users(self, stage: str) -> np.ndarray:
        """Users that have a target for ``stage``: valid needs >= 3 items, test needs >= 3 too
        (so both protocols score the same user set and training keeps >= 1 item)."""
        return np.nonzero(self.lengths >= 3)[0]

    def item_counts(self, stage: str = "train") -> np.ndarray:
        """Interaction count per dense item id over the training part (index 0 = padding)."""
        counts = np.zeros(self.n_items + 1, dtype=np.int64)
        np.add.at(counts, self.items[self._history_mask(stage)], 1)
        return counts

    def _history_mask(self, stage: str) -> np.ndarray:
        """Per interaction, whether it belongs to its user's visible history for ``stage``."""
        n = self.lengths
        pos = np.arange(self.n_interactions) - np.repeat(self.offsets[:-1], n)
        return pos < np.repeat(self.history_lengths(stage), n)

    def stats(self) -> dict:
        n = self.lengths
        pct = np.percentile(n, [50, 90, 95, 99]) if len(n) else [0, 0, 0, 0]
        return {
            "name": self.meta.get("name", "?"),
            "users": int(self.n_users),
            "items": int(self.n_items),
            "interactions": int(self.n_interactions),
            "avg_len": float(n.mean()) if len(n) else 0.0,
            "min_len": int(n.min()) if len(n) else 0,
            "p50_len": float(pct[0]),
            "p90_len": float(pct[1]),
            "p95_len": float(pct[2]),
            "p99_len": float(pct[3]),
            "max_len": int(n.max()) if len(n) else 0,
            "density": float(self.n_interactions / max(1, self.n_users * self.n_items)),
        }
