"""Is run B better than run A, or is the difference noise? A paired test on the same users.

Every run saves the 0-based test rank of each user's held-out item (``<run>/test_ranks.npz``;
``elasticrec evaluate --save-ranks`` writes it for older runs or for ``--stage valid``). Two runs
on the same dataset and protocol rank the same users, so their per-user metric values pair up, and
the difference of two means is judged against the spread of the per-user differences rather than
against the (much larger) spread of either run alone:

- a **paired bootstrap** resamples users with replacement and gives a percentile confidence
  interval for mean(B) - mean(A);
- a **paired randomization test** (sign flips of the per-user differences, the usual test in IR
  evaluation) gives a two-sided p-value for "A and B are exchangeable".

Both are plain numpy and seeded, so a comparison prints the same numbers every time.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from elasticrec.evaluate.metrics import per_user  # noqa: F401  (re-exported: the per-user values compared here)
from elasticrec.evaluate.ranking import history_window
from elasticrec.utils import atomic_save

DEFAULT_METRICS = ("HR@10", "NDCG@10", "MRR")


class RanksError(ValueError):
    """A ranks file is missing, unreadable, or not comparable with another."""


def ranks_path(run_dir: str | Path, stage: str = "test") -> Path:
    return Path(run_dir) / f"{stage}_ranks.npz"


def save_ranks(path: str | Path, users: np.ndarray, ranks: np.ndarray, meta: dict) -> None:
    """Write users and their ranks (sorted by user id) and a JSON ``meta`` dict, atomically."""
    users, ranks = np.asarray(users, dtype=np.int64), np.asarray(ranks, dtype=np.int64)
    if users.shape != ranks.shape:
        raise ValueError(f"users {users.shape} and ranks {ranks.shape} differ in shape")
    order = np.argsort(users, kind="stable")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez* would append ".npz" to a path
            np.savez_compressed(f, users=users[order], ranks=ranks[order], meta=np.array(json.dumps(meta)))

    atomic_save(path, write)


def ranks_meta(cfg, data, stage: str, protocol: str, epoch: int | None = None) -> dict:
    """What a ranks file records about its run: enough to refuse meaningless pairings."""
    return {"dataset": cfg.data.name, "data_key": data.meta.get("cache_key"), "n_items": int(data.n_items),
            "model": cfg.model.name, "stage": stage, "protocol": protocol, "max_len": cfg.model.max_len,
            "exclude_history": cfg.eval.exclude_history, "epoch": epoch, "fit": cfg.train.fit,
            "history_len": history_window(cfg.eval.history_len, cfg.model.max_len) or 0,  # 0: whole history
            "drop_recent": cfg.eval.drop_recent}


def load_ranks(source: str | Path, stage: str = "test") -> tuple[np.ndarray, np.ndarray, dict]:
    """(users, ranks, meta) from a ranks file or from a run directory's ``<stage>_ranks.npz``."""
    p = Path(source)
    if p.is_dir():
        p = ranks_path(p, stage)
        if not p.exists():
            raise RanksError(f"{p}: no {stage} ranks in this run directory (runs trained before they "
                             f"were saved, and refits for validation ranks, lack them); write them with "
                             f"`elasticrec evaluate --run {source} --stage {stage} --save-ranks`")
    if not p.exists():
        raise RanksError(f"{p}: no such run directory or ranks file")
    try:
        with np.load(p, allow_pickle=False) as z:
            users, ranks, meta = z["users"], z["ranks"], json.loads(str(z["meta"]))
    except Exception as e:
        raise RanksError(f"{p}: not a ranks file written by elasticrec ({type(e).__name__}: {e})") from e
    if users.ndim != 1 or users.shape != ranks.shape or len(np.unique(users)) != len(users):
        raise RanksError(f"{p}: users and ranks must be 1-d, of equal length, one rank per user")
    if len(ranks) and ranks.min() < 0:
        raise RanksError(f"{p}: negative rank {int(ranks.min())}")
    meta.setdefault("source", str(p))
    return users, ranks, meta


@dataclass
class PairedResult:
    metric: str
    n_users: int
    a: float  # mean over users, run A
    b: float  # mean over users, run B
    diff: float  # b - a
    ci_low: float  # paired-bootstrap percentile interval of diff
    ci_high: float
    p_value: float  # two-sided paired randomization (sign-flip) test
    b_better: int  # users whose value is higher in B
    a_better: int

    def to_dict(self) -> dict:
        return asdict(self)


def paired_test(xa: np.ndarray, xb: np.ndarray, metric: str = "", n_resamples: int = 10_000,
                confidence: float = 0.95, seed: int = 0, chunk: int = 256) -> PairedResult:
    """Compare per-user values ``xa`` and ``xb`` of the same users (same order)."""
    xa, xb = np.asarray(xa, dtype=np.float64), np.asarray(xb, dtype=np.float64)
    if xa.shape != xb.shape or xa.ndim != 1 or xa.size == 0:
        raise ValueError("paired_test needs two non-empty 1-d arrays of the same users")
    if n_resamples < 1 or not 0 < confidence < 1:
        raise ValueError("n_resamples must be >= 1 and confidence in (0, 1)")
    d = xb - xa
    n, obs = d.size, d.mean()
    rng = np.random.default_rng(seed)
    boot = np.empty(n_resamples)
    extreme = 0
    tol = 1e-12 * max(1.0, abs(obs))  # sign flips that reproduce |obs| up to float error count as extreme
    for s in range(0, n_resamples, chunk):
        m = min(chunk, n_resamples - s)
        boot[s:s + m] = d[rng.integers(0, n, size=(m, n))].mean(1)
        signs = rng.integers(0, 2, size=(m, n), dtype=np.int8) * 2 - 1
        extreme += int((np.abs(signs @ d) / n >= abs(obs) - tol).sum())
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    return PairedResult(metric, n, float(xa.mean()), float(xb.mean()), float(obs), float(lo), float(hi),
                        (extreme + 1) / (n_resamples + 1), int((d > 0).sum()), int((d < 0).sum()))


COMPARABLE = ("dataset", "data_key", "n_items", "stage", "protocol", "exclude_history")


def load_pair(a: str | Path, b: str | Path, stage: str = "test") -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """The ranks of two runs (directories or ranks files), checked to be of the same users in the
    same order under the same data and protocol: (ranks_a, ranks_b, meta_a, meta_b)."""
    ua, ra, ma = load_ranks(a, stage)
    ub, rb, mb = load_ranks(b, stage)
    _check_pairable(ua, ma, ub, mb)
    return ra, rb, ma, mb


def _check_pairable(ua: np.ndarray, ma: dict, ub: np.ndarray, mb: dict) -> None:
    for key in COMPARABLE:
        if key in ma and key in mb and ma[key] != mb[key]:
            raise RanksError(f"{ma['source']} and {mb['source']} differ in {key} "
                             f"({ma[key]!r} vs {mb[key]!r}): their ranks cannot be paired")
    if not np.array_equal(ua, ub):
        only_a, only_b = np.setdiff1d(ua, ub).size, np.setdiff1d(ub, ua).size
        raise RanksError(f"{ma['source']} and {mb['source']} rank different users ({only_a} only in A, "
                         f"{only_b} only in B): was the data filtered or split differently?")


Sources = str | Path | list  # one run (directory or ranks file), or a list of runs (e.g. seeds)


def _as_list(x: Sources) -> list:
    return [x] if isinstance(x, (str, Path)) else list(x)


def load_sides(a: Sources, b: Sources, stage: str = "test"
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict], list[dict]]:
    """The ranks of one or more A runs and one or more B runs, every run checked against A's
    first (same users, data and protocol): (users, ranks_a [n_a, users], ranks_b [n_b, users],
    metas_a, metas_b)."""
    runs_a, runs_b = _as_list(a), _as_list(b)
    if not runs_a or not runs_b:
        raise RanksError("compare needs at least one run on each side")
    users, r0, m0 = load_ranks(runs_a[0], stage)
    ranks, metas = ([r0], []), ([m0], [])
    for side, runs in ((0, runs_a[1:]), (1, runs_b)):
        for run in runs:
            u, r, m = load_ranks(run, stage)
            _check_pairable(users, m0, u, m)
            ranks[side].append(r)
            metas[side].append(m)
    return users, np.stack(ranks[0]), np.stack(ranks[1]), metas[0], metas[1]


def side_values(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Per-user ``metric`` averaged over a side's runs (rows of ``ranks``; 1-d: one run)."""
    return per_user(np.atleast_2d(ranks), metric).mean(axis=0)


def compare_runs(a: Sources, b: Sources, metrics=DEFAULT_METRICS, stage: str = "test",
                 n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
                 ) -> tuple[list[PairedResult], dict, dict]:
    """Paired comparison of two runs (directories or ranks files) on each metric. ``a`` and ``b``
    may each be a list of runs (seeds of one setting): each user's value is then averaged over the
    runs of its side before pairing, which lowers, but does not remove, the training-seed noise
    that a single pair of runs carries. Returns (results, meta of A's first run, of B's first)."""
    _, ra, rb, ma, mb = load_sides(a, b, stage)
    return paired_results(ra, rb, metrics, n_resamples, confidence, seed), ma[0], mb[0]


def paired_results(ra: np.ndarray, rb: np.ndarray, metrics=DEFAULT_METRICS, n_resamples: int = 10_000,
                   confidence: float = 0.95, seed: int = 0) -> list[PairedResult]:
    """:func:`paired_test` on each metric, from one run's ranks or [runs, users] per side."""
    return [paired_test(side_values(ra, m), side_values(rb, m), m, n_resamples, confidence, seed) for m in metrics]


def compare_stages(a: Sources, b: Sources, metrics=DEFAULT_METRICS, n_resamples: int = 10_000,
                   confidence: float = 0.95, seed: int = 0) -> list[PairedResult]:
    """Does validation predict test for this pair? Per user, the gap ``B - A`` on the validation
    item and on the test item (each side averaged over its runs), then :func:`paired_test` of
    the two gaps over the users ranked at both stages: in each result ``a`` is the mean test gap,
    ``b`` the mean validation gap and ``diff`` (with its interval and p-value) validation minus
    test. Every run needs both ``valid_ranks.npz`` and ``test_ranks.npz``."""
    uv, rav, rbv, _, _ = load_sides(a, b, "valid")
    ut, rat, rbt, _, _ = load_sides(a, b, "test")
    both, iv, it = np.intersect1d(uv, ut, return_indices=True)
    if both.size == 0:
        raise RanksError("compare --stage-gap: no user is ranked at both stages")
    out = []
    for m in metrics:
        gv = (side_values(rbv, m) - side_values(rav, m))[iv]
        gt = (side_values(rbt, m) - side_values(rat, m))[it]
        out.append(paired_test(gt, gv, m, n_resamples, confidence, seed))
    return out


def format_stage_table(results: list[PairedResult], confidence: float = 0.95) -> str:
    pct = f"{confidence:.0%}"
    lines = ["", "Validation against test (B - A at each stage, paired over the users ranked at both):", "",
             f"| metric | users | B - A, valid | B - A, test | valid - test | {pct} CI | p |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.metric} | {r.n_users} | {r.b:+.4f} | {r.a:+.4f} | {r.diff:+.4f} "
                     f"| [{r.ci_low:+.4f}, {r.ci_high:+.4f}] | {r.p_value:.4f} |")
    return "\n".join(lines)


def history_lengths(source: str | Path, meta: dict, stage: str = "test", data_path: str | None = None
                    ) -> np.ndarray:
    """Each user's history length at ``stage`` (the items before its target: all but the last one
    for test, the last two for valid), indexed by user id, read from the dataset of the run that
    wrote ``source`` (a run directory, or a ranks file inside one: its ``config.yaml``). The full
    history is counted, not the ``max_len`` window the model saw."""
    return run_dataset(source, meta, data_path).history_lengths(stage)


def run_dataset(source: str | Path, meta: dict, data_path: str | None = None):
    """The dataset of the run that wrote ``source`` (a run directory, or a ranks file inside one),
    from its ``config.yaml``; refused if it no longer loads as the data the ranks were computed on."""
    from elasticrec.config import load_config, merge
    from elasticrec.data import load_dataset

    p = Path(source)
    cfg_path = (p if p.is_dir() else p.parent) / "config.yaml"
    if not cfg_path.exists():
        raise RanksError(f"{cfg_path}: not found; per-user grouping reads the run's dataset from it "
                         f"(give a run directory)")
    cfg = load_config(cfg_path)
    if data_path:
        cfg = merge(cfg, {"data": {"path": data_path}})
    data = load_dataset(cfg.data)
    key = meta.get("data_key")
    if key is not None and data.meta.get("cache_key") not in (None, key):
        raise RanksError(f"{cfg_path}: its dataset now loads as {data.meta.get('cache_key')}, but the ranks "
                         f"were computed on {key}: the data changed since that run")
    return data


def length_buckets(edges) -> list[tuple[int, int | None]]:
    """[lo, hi) history-length buckets from increasing positive edges: 16,50 gives [0, 16),
    [16, 50) and [50, inf) (hi = None)."""
    edges = [int(e) for e in edges]
    if not edges or any(e <= 0 for e in edges) or edges != sorted(set(edges)):
        raise ValueError(f"length edges must be increasing positive integers, got {edges}")
    lows = [0, *edges]
    return [(lo, hi) for lo, hi in zip(lows, [*edges, None])]


def length_groups(hist: np.ndarray, edges) -> list[tuple[str, np.ndarray]]:
    """(label, boolean mask over ``hist``) for each bucket of :func:`length_buckets`, labelled
    "0-15", "16-49", ">=50"; empty buckets are kept (their mask is all False)."""
    hist = np.asarray(hist)
    return [(f"{lo}-{hi - 1}" if hi is not None else f">={lo}",
             (hist >= lo) & (hist < hi) if hi is not None else hist >= lo)
            for lo, hi in length_buckets(edges)]


def compare_by_length(ra: np.ndarray, rb: np.ndarray, hist: np.ndarray, edges, metrics=DEFAULT_METRICS,
                      n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
                      ) -> list[tuple[str, PairedResult]]:
    """The paired test inside each history-length bucket: (bucket label, result) per non-empty
    bucket and metric; ``hist`` holds each paired user's history length, in the ranks' order;
    ``ra`` / ``rb`` are one run's ranks or [runs, users] (averaged per user, as in compare_runs)."""
    hist = np.asarray(hist)
    if hist.ndim != 1:
        raise ValueError("ranks and history lengths must be of the same users")
    return compare_groups(ra, rb, length_groups(hist, edges), metrics, n_resamples, confidence, seed)


def transition_groups(seen: np.ndarray, groups: list[tuple[str, np.ndarray]] | None = None
                      ) -> list[tuple[str, np.ndarray]]:
    """Split each (label, mask) group (default: everyone) by ``seen`` (per paired user: does the
    target follow the last history item as in training?) into "<label>, seen step" and
    "<label>, new step"."""
    seen = np.asarray(seen, dtype=bool)
    groups = groups if groups is not None else [("all", np.ones(len(seen), dtype=bool))]
    return [(f"{label}, {name}", sel & m) for label, sel in groups
            for name, m in (("seen step", seen), ("new step", ~seen))]


def compare_groups(ra: np.ndarray, rb: np.ndarray, groups: list[tuple[str, np.ndarray]],
                   metrics=DEFAULT_METRICS, n_resamples: int = 10_000, confidence: float = 0.95,
                   seed: int = 0) -> list[tuple[str, PairedResult]]:
    """The paired test inside each (label, boolean mask over the paired users) group: (label,
    result) per non-empty group and metric."""
    ra, rb = np.atleast_2d(ra), np.atleast_2d(rb)
    out = []
    for label, sel in groups:
        sel = np.asarray(sel, dtype=bool)
        if not sel.shape[0] == ra.shape[1] == rb.shape[1]:
            raise ValueError("ranks and group masks must be of the same users")
        if sel.any():
            out += [(label, r) for r in paired_results(ra[:, sel], rb[:, sel], metrics, n_resamples, confidence, seed)]
    return out


def format_length_table(rows: list[tuple[str, PairedResult]], confidence: float = 0.95,
                        title: str = "By history length (items before the target):", column: str = "history") -> str:
    pct = f"{confidence:.0%}"
    lines = ["", title, "",
             f"| {column} | users | metric | A | B | B - A | {pct} CI | p |", "|---|---|---|---|---|---|---|---|"]
    for label, r in rows:
        lines.append(f"| {label} | {r.n_users} | {r.metric} | {r.a:.4f} | {r.b:.4f} | {r.diff:+.4f} "
                     f"| [{r.ci_low:+.4f}, {r.ci_high:+.4f}] | {r.p_value:.4f} |")
    return "\n".join(lines)


def format_table(results: list[PairedResult], label_a: str, label_b: str, confidence: float = 0.95) -> str:
    pct = f"{confidence:.0%}"
    lines = [f"A: {label_a}", f"B: {label_b}", "",
             f"| metric | A | B | B - A | {pct} CI (paired bootstrap) | p (sign-flip) | users B>A | users A>B |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.metric} | {r.a:.4f} | {r.b:.4f} | {r.diff:+.4f} | [{r.ci_low:+.4f}, {r.ci_high:+.4f}] "
                     f"| {r.p_value:.4f} | {r.b_better} | {r.a_better} |")
    n = results[0].n_users if results else 0
    lines.append(f"\n{n} users paired.")
    return "\n".join(lines)

