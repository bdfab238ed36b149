"""Seeded synthetic sequences with planted long-term and short-term structure.

Model (driven by :class:`elasticrec.config.SyntheticConfig`):

* the catalogue ``1..n_items`` is partitioned at random into ``n_clusters`` interest clusters
  of near-equal size;
* every user draws ``clusters_per_user`` distinct clusters: their persistent interests;
* every item has ``markov_fanout`` successors drawn uniformly from the whole catalogue
  (so the short-term signal says nothing about the user's clusters);
* a user's length is uniform in ``[min_len, max_len]``; the first item comes from one of the
  user's clusters; each next item is

  - w.p. ``p_markov`` a uniformly chosen successor of the previous item,
  - else w.p. ``p_long`` a uniform item of a uniformly chosen cluster of the user,
  - else a uniform catalogue item (noise).

Why long history matters: the last few items are dominated by Markov hops and noise that are
unrelated to the user's clusters, while about ``(1 - p_markov) * p_long`` of *all* events are
in-cluster; a model that sees the whole history can identify the clusters (and predict the
~``(1-p_markov)*p_long`` in-cluster next events), one that sees only the last few items cannot.
The last item still determines the Markov part, so short-range models are not useless.

Generation is vectorised: cluster and noise draws happen for all events at once; Markov events
are resolved by their depth inside a run of consecutive Markov events (one numpy step per depth
level, usually a few dozen), never a Python loop per interaction. Deterministic per ``seed``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..config import SyntheticConfig
from .errors import DataError
from .sequences import SequenceData


@dataclass
class SyntheticTruth:
    """The planted structure (for tests and analysis)."""

    item_cluster: np.ndarray  # int64 [n_items + 1]; cluster of each item (index 0: -1)
    user_clusters: np.ndarray  # int64 [n_users, clusters_per_user]
    successors: np.ndarray  # int64 [n_items + 1, markov_fanout]
    source: np.ndarray  # int8 [n_interactions]: 0 markov, 1 long-term cluster, 2 noise


def _validate(c: SyntheticConfig) -> None:
    problems = []
    if c.n_users < 1:
        problems.append("n_users must be >= 1")
    if c.n_items < 2:
        problems.append("n_items must be >= 2")
    if not 1 <= c.min_len <= c.max_len:
        problems.append("need 1 <= min_len <= max_len")
    if not 1 <= c.n_clusters <= c.n_items:
        problems.append("need 1 <= n_clusters <= n_items")
    if not 1 <= c.clusters_per_user <= c.n_clusters:
        problems.append("need 1 <= clusters_per_user <= n_clusters")
    if c.markov_fanout < 1:
        problems.append("markov_fanout must be >= 1")
    for p in ("p_markov", "p_long"):
        if not 0.0 <= getattr(c, p) <= 1.0:
            problems.append(f"{p} must be in [0, 1]")
    if problems:
        raise DataError("synthetic config: " + "; ".join(problems))


def _distinct_choice(rng: np.random.Generator, n_rows: int, n: int, k: int) -> np.ndarray:
    """[n_rows, k] distinct integers in [0, n) per row, vectorised over rows."""
    if k * 3 > n:  # dense: sort random keys per row (n is small here)
        keys = rng.random((n_rows, n))
        return np.argsort(keys, axis=1)[:, :k].astype(np.int64)
    out = np.empty((n_rows, k), dtype=np.int64)
    for j in range(k):
        col = rng.integers(0, n, size=n_rows)
        while True:
            dup = (out[:, :j] == col[:, None]).any(axis=1)
            if not dup.any():
                break
            col[dup] = rng.integers(0, n, size=int(dup.sum()))
        out[:, j] = col
    return out


def generate_synthetic(cfg: SyntheticConfig | None = None, return_truth: bool = False
                       ) -> SequenceData | tuple[SequenceData, SyntheticTruth]:
    cfg = cfg or SyntheticConfig()
    _validate(cfg)
    rng = np.random.default_rng(cfg.seed)
    U, N, C, K = cfg.n_users, cfg.n_items, cfg.n_clusters, cfg.clusters_per_user

    # catalogue partition: cluster c owns members[cstart[c]:cstart[c+1]]
    perm = rng.permutation(N) + 1
    csize = np.full(C, N // C, dtype=np.int64)
    csize[: N % C] += 1
    cstart = np.concatenate(([0], np.cumsum(csize)))
    members = perm
    item_cluster = np.full(N + 1, -1, dtype=np.int64)
    item_cluster[perm] = np.repeat(np.arange(C), csize)

    user_clusters = _distinct_choice(rng, U, C, K)
    successors = rng.integers(1, N + 1, size=(N + 1, cfg.markov_fanout), dtype=np.int64)
    successors[0] = 0

    lengths = rng.integers(cfg.min_len, cfg.max_len + 1, size=U, dtype=np.int64)
    offsets = np.zeros(U + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    T = int(offsets[-1])
    user_of = np.repeat(np.arange(U, dtype=np.int64), lengths)
    is_first = np.zeros(T, dtype=bool)
    is_first[offsets[:-1]] = True

    # which mechanism produces each event
    r = rng.random(T)
    p_m, p_l = cfg.p_markov, (1.0 - cfg.p_markov) * cfg.p_long
    source = np.where(r < p_m, 0, np.where(r < p_m + p_l, 1, 2)).astype(np.int8)
    source[is_first & (source == 0)] = 1  # nothing to follow yet

    # long-term and noise events, all at once
    items = np.empty(T, dtype=np.int64)
    lt = np.flatnonzero(source == 1)
    c = user_clusters[user_of[lt], rng.integers(0, K, size=len(lt))]
    pick = (rng.random(len(lt)) * csize[c]).astype(np.int64)
    items[lt] = members[cstart[c] + np.minimum(pick, csize[c] - 1)]
    nz = np.flatnonzero(source == 2)
    items[nz] = rng.integers(1, N + 1, size=len(nz))

    # Markov events: resolve by depth inside runs of consecutive Markov events
    mk = np.flatnonzero(source == 0)
    if len(mk):
        branch = rng.integers(0, cfg.markov_fanout, size=len(mk))
        anchor = np.where(source != 0, np.arange(T), 0)
        np.maximum.accumulate(anchor, out=anchor)  # last non-Markov position at or before t
        depth = mk - anchor[mk]
        order = np.argsort(depth, kind="stable")
        d_sorted = depth[order]
        bounds = np.flatnonzero(np.diff(d_sorted)) + 1
        for grp in np.split(order, bounds):
            pos = mk[grp]
            items[pos] = successors[items[pos - 1], branch[grp]]

    data = SequenceData(
        items=items, offsets=offsets, n_items=N,
        item_raw_ids=np.concatenate([np.array(["<pad>"]), np.arange(1, N + 1).astype(str)]),
        user_raw_ids=np.arange(U).astype(str), timestamps=None,
        meta={"name": "synthetic", "format": "synthetic", "source": "synthetic",
              "source_sha256": None, "synthetic": dataclasses.asdict(cfg)})
    if return_truth:
        return data, SyntheticTruth(item_cluster, user_clusters, successors, source)
    return data
