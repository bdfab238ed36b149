"""Raw :class:`Interactions` -> :class:`SequenceData` (filtering, ordering, dense ids).

Steps, in this order, all vectorised (no Python loop per interaction):

1. ``min_rating``: keep rows with ``rating >= min_rating``; an error if the format carries no
   ratings (never silently ignored).
2. k-core: drop items with fewer than ``min_item_count`` interactions, then users with fewer
   than ``min_user_count`` (one pass, item filter first). With ``kcore_iterative`` the two
   filters repeat until nothing changes (a true k-core). A count of 0 or 1 disables a filter.
3. Order: per user, ascending timestamp with ties broken by file order (stable); without
   timestamps, file order (the formats without timestamps are stored chronologically).
4. Dense ids: users ``0..U-1`` in order of their first appearance in the (filtered) file;
   items ``1..n`` in order of first appearance in the final user-major chronological stream
   (so item 1 is user 0's first item). For files whose ids are already numbered that way
   (e.g. the S3-Rec text files) the dense id equals the raw id. 0 is padding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from .errors import DataError
from .readers import Interactions
from .sequences import SequenceData


@dataclass(frozen=True)
class PreprocessOptions:
    min_rating: float | None = None
    min_user_count: int = 0
    min_item_count: int = 0
    kcore_iterative: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def kcore_filter(users: np.ndarray, items: np.ndarray, min_user_count: int, min_item_count: int,
                 iterative: bool) -> np.ndarray:
    """Indices of the rows kept by the k-core filter (``users``/``items`` are dense codes)."""
    idx = np.arange(len(users))
    n_u = int(users.max()) + 1 if len(users) else 0
    n_i = int(items.max()) + 1 if len(items) else 0
    while True:
        changed = False
        if min_item_count > 1 and len(idx):
            cnt = np.bincount(items[idx], minlength=n_i)
            keep = cnt[items[idx]] >= min_item_count
            if not keep.all():
                idx, changed = idx[keep], True
        if min_user_count > 1 and len(idx):
            cnt = np.bincount(users[idx], minlength=n_u)
            keep = cnt[users[idx]] >= min_user_count
            if not keep.all():
                idx, changed = idx[keep], True
        if not iterative or not changed:
            return idx


def preprocess(inter: Interactions, opts: PreprocessOptions, meta: dict | None = None
               ) -> SequenceData:
    """Apply ``opts`` to ``inter`` and build the CSR :class:`SequenceData`."""
    src = inter.source or "<interactions>"
    n_raw = len(inter)
    if n_raw == 0:
        raise DataError(f"{src}: no interactions")
    u_codes, u_uni = pd.factorize(inter.user)
    i_codes, i_uni = pd.factorize(inter.item)
    u_codes = u_codes.astype(np.int64, copy=False)
    i_codes = i_codes.astype(np.int64, copy=False)

    idx = np.arange(n_raw)
    if opts.min_rating is not None:
        if inter.rating is None:
            raise DataError(f"{src}: min_rating={opts.min_rating} is set but this format has no "
                            f"ratings; unset data.min_rating (or set data.rating_col)")
        idx = np.flatnonzero(np.asarray(inter.rating, dtype=np.float64) >= opts.min_rating)
    n_after_rating = len(idx)
    if len(idx):
        sub = kcore_filter(u_codes[idx], i_codes[idx], opts.min_user_count, opts.min_item_count,
                           opts.kcore_iterative)
        idx = idx[sub]
    if len(idx) == 0:
        raise DataError(f"{src}: no interactions left after filtering ({n_raw} read, "
                        f"{n_after_rating} after min_rating; options {opts.as_dict()})")

    # users in order of first appearance among the kept rows
    new_u, u_first = pd.factorize(u_codes[idx])
    new_u = new_u.astype(np.int64, copy=False)
    n_users = len(u_first)
    ts = None
    if inter.timestamp is not None:
        ts_k = np.asarray(inter.timestamp)[idx]
        order = np.lexsort((np.arange(len(idx)), ts_k, new_u))  # stable tie-break: file order
        ts = ts_k[order]
        if ts.dtype.kind == "f":
            ts = np.floor(ts)
        ts = ts.astype(np.int64)
    else:
        order = np.argsort(new_u, kind="stable")
    rows = idx[order]
    users_sorted = new_u[order]
    new_i, i_first = pd.factorize(i_codes[rows])
    items = new_i.astype(np.int64) + 1
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users_sorted, minlength=n_users), out=offsets[1:])

    item_raw = np.concatenate([np.array(["<pad>"]), _as_str(i_uni[i_first])])
    user_raw = _as_str(u_uni[u_first])
    m = dict(meta or {})
    m.setdefault("source", src)
    m["options"] = opts.as_dict()
    m["raw_interactions"] = int(n_raw)
    m["raw_users"] = int(len(u_uni))
    m["raw_items"] = int(len(i_uni))
    m["has_timestamps"] = ts is not None
    return SequenceData(items=items, offsets=offsets, n_items=int(len(i_first)),
                        item_raw_ids=item_raw, user_raw_ids=user_raw, timestamps=ts, meta=m)


def _as_str(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind == "U":
        return a
    return a.astype(str)
