"""Top-k recommendation from a trained run: raw item ids in, raw item ids and scores out.

:func:`load_run` rebuilds a run's dataset and model exactly like ``elasticrec evaluate --run``
(``config.yaml`` + ``checkpoints/best.safetensors``) and wraps them in a :class:`Recommender`:

* raw <-> internal item ids (raw ids are the dataset's strings; ints are matched on ``str(x)``);
* each dataset user's full known history (train + valid + test items, chronological), for
  :meth:`Recommender.recommend_user`;
* item popularity over the training interactions, the answer for an empty history.

Scoring is the evaluator's: the last ``max_len`` items, left-padded, go through
``model.last_hidden``; every item is scored, padding (column 0) is never returned and, by
default, items of the given history are excluded (the whole history, also the part that did not
fit into the model window).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

MAX_K = 1000  # hard cap on k, whatever the catalogue size
UNKNOWN_POLICIES = ("skip", "error")


class ServingError(ValueError):
    """A request that cannot be served; the message says why (shown to the caller)."""

    status = 422


class UnknownItemError(ServingError):
    status = 422


class UnknownUserError(ServingError):
    status = 404


class RunLoadError(ServingError):
    status = 500


@dataclass
class Recommendation:
    """One answer: ``items`` is a list of ``(raw_item_id, score)``, best first."""

    items: list[tuple[str, float]]
    history_len: int  # known items of the request's history
    used_len: int  # items the model read (<= max_len)
    truncated: int = 0  # oldest known items that did not fit into the model window
    skipped_unknown: list[str] = field(default_factory=list)  # raw ids not in the catalogue
    fallback: str | None = None  # "popularity" when the history had no known item

    @property
    def item_ids(self) -> list[str]:
        return [i for i, _ in self.items]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["items"] = [{"item": i, "score": s} for i, s in self.items]
        return d


def raw_key(x) -> str:
    """Raw ids are matched on their string form: JSON 12 and "12" are the same item."""
    if isinstance(x, (bool, float)) or not isinstance(x, (int, str, np.integer, np.str_)):
        raise ServingError(f"item ids must be integers or strings, got {x!r} ({type(x).__name__})")
    return str(x)


class Recommender:
    """A model in eval mode plus the id maps, histories and popularity of its dataset.

    Thread-safe: model calls run under one lock.
    """

    def __init__(self, model, data, *, device="cpu", name: str | None = None):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.data = data
        self.n_items = int(data.n_items)
        self.max_len = int(model.max_len)
        self.name = name or getattr(model, "model_name", type(model).__name__)
        self.item_raw = np.asarray(data.item_raw_ids).astype(str)
        self.item_index = {r: i for i, r in enumerate(self.item_raw.tolist()) if i > 0}
        self.user_index = {str(r): u for u, r in enumerate(np.asarray(data.user_raw_ids).tolist())}
        pop = data.item_counts("train").astype(np.float32)
        pop[0] = -np.inf
        self.popularity = torch.from_numpy(pop)
        self.lock = threading.RLock()

    @property
    def supports_streaming(self) -> bool:
        return bool(getattr(self.model, "supports_streaming", False))

    # ------------------------------------------------------------------ ids
    def check_k(self, k) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ServingError(f"k must be an integer, got {k!r}")
        hi = min(self.n_items, MAX_K)
        if not 1 <= k <= hi:
            raise ServingError(f"k={k} out of range: need 1 <= k <= {hi} "
                               f"(catalogue of {self.n_items} items, cap {MAX_K})")
        return int(k)

    def to_internal(self, history: Iterable, unknown: str = "skip") -> tuple[np.ndarray, list[str]]:
        """Internal ids of the known items (order kept) and the raw ids that were skipped."""
        if unknown not in UNKNOWN_POLICIES:
            raise ServingError(f"unknown={unknown!r}; choose one of {', '.join(UNKNOWN_POLICIES)}")
        if isinstance(history, (str, bytes)):
            raise ServingError("history must be a list of item ids, not a single string")
        ids, skipped = [], []
        for x in history:
            key = raw_key(x)
            i = self.item_index.get(key)
            if i is None:
                skipped.append(key)
            else:
                ids.append(i)
        if skipped and unknown == "error":
            shown = ", ".join(repr(s) for s in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
            raise UnknownItemError(f"{len(skipped)} unknown item id(s) not in the catalogue: {shown}")
        return np.asarray(ids, dtype=np.int64), skipped

    def user_history(self, raw_user_id) -> np.ndarray:
        """The dataset user's full known history (train + valid + test), internal ids."""
        u = self.user_index.get(str(raw_user_id))
        if u is None:
            raise UnknownUserError(f"unknown user {str(raw_user_id)!r}: not in the dataset "
                                   f"({len(self.user_index)} users)")
        return np.asarray(self.data.sequence(u), dtype=np.int64)

    # ------------------------------------------------------------------ scoring
    def window(self, ids: np.ndarray) -> np.ndarray:
        """Left-padded [max_len] model input holding the most recent items."""
        w = np.zeros(self.max_len, dtype=np.int64)
        tail = ids[-self.max_len:]
        if len(tail):
            w[self.max_len - len(tail):] = tail
        return w

    @torch.no_grad()
    def score_windows(self, windows: np.ndarray) -> torch.Tensor:
        """Scores [B, n_items + 1] for left-padded inputs [B, max_len] (float32, on CPU)."""
        x = torch.from_numpy(np.ascontiguousarray(windows)).to(self.device)
        with self.lock:
            h = self.model.last_hidden(x)
            return self.model.score_all(h).float().cpu()

    def finish(self, scores: torch.Tensor, k: int, exclude: Iterable[np.ndarray] | None
               ) -> list[list[tuple[str, float]]]:
        """Mask padding and excluded items, take the top k, map to raw ids (in place on scores)."""
        scores[:, 0] = float("-inf")
        if exclude is not None:
            for r, ex in enumerate(exclude):
                if len(ex):
                    scores[r, torch.from_numpy(np.asarray(ex, dtype=np.int64))] = float("-inf")
        vals, idx = scores.topk(k, dim=1)
        out = []
        for v, i in zip(vals.tolist(), idx.tolist()):
            out.append([(self.item_raw[j], float(s)) for s, j in zip(v, i) if s != float("-inf")])
        return out

    def recommend_ids(self, histories: Sequence[np.ndarray], k: int, exclude_history: bool = True
                      ) -> list[tuple[list[tuple[str, float]], str | None]]:
        """Top-k for internal-id histories; empty ones get the popularity ranking."""
        k = self.check_k(k)
        scores = torch.empty(len(histories), self.n_items + 1)
        fallback: list[str | None] = [None] * len(histories)
        rows = [r for r, h in enumerate(histories) if len(h)]
        if rows:
            scores[rows] = self.score_windows(np.stack([self.window(histories[r]) for r in rows]))
        for r, h in enumerate(histories):
            if not len(h):
                scores[r] = self.popularity
                fallback[r] = "popularity"
        exclude = histories if exclude_history else None
        return list(zip(self.finish(scores, k, exclude), fallback))

    def recommend(self, histories: Sequence[Iterable], k: int = 10, exclude_history: bool = True,
                  unknown: str = "skip") -> list[Recommendation]:
        """Batched top-k: ``histories`` is a list of histories of RAW item ids (oldest first)."""
        if isinstance(histories, (str, bytes)) or not isinstance(histories, Sequence):
            raise ServingError("histories must be a list of histories (lists of raw item ids)")
        k = self.check_k(k)
        converted = [self.to_internal(h, unknown) for h in histories]
        ids = [c[0] for c in converted]
        results = self.recommend_ids(ids, k, exclude_history)
        out = []
        for (h, skipped), (items, fb) in zip(converted, results):
            used = min(len(h), self.max_len)
            out.append(Recommendation(items, len(h), used, len(h) - used, skipped, fb))
        return out

    def recommend_user(self, raw_user_id, k: int = 10, exclude_history: bool = True) -> Recommendation:
        """Top-k for a dataset user from the user's full known history (train + valid + test)."""
        h = self.user_history(raw_user_id)
        (items, fb), = self.recommend_ids([h], k, exclude_history)
        used = min(len(h), self.max_len)
        return Recommendation(items, len(h), used, len(h) - used, [], fb)


def load_run(run_dir, device: str = "cpu", checkpoint: str = "best", *, data=None,
             data_path: str | None = None) -> Recommender:
    """Rebuild a run's dataset and model (``checkpoint``: ``best`` or ``last``) for serving.

    ``data``: an already loaded :class:`~elasticrec.data.sequences.SequenceData` (skips the
    rebuild from ``config.yaml``); ``data_path``: where the dataset lives if it moved.
    """
    from elasticrec.config import ConfigError, load_config, merge
    from elasticrec.models import build_model
    from elasticrec.train.checkpoint import CheckpointError, load_best, load_checkpoint
    from elasticrec.utils import resolve_device

    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise RunLoadError(f"{run}: not a run directory (no config.yaml); pass the directory "
                           f"written by `elasticrec train`")
    if checkpoint not in ("best", "last"):
        raise RunLoadError(f"checkpoint={checkpoint!r}; choose best or last")
    try:
        cfg = load_config(run / "config.yaml")
    except ConfigError as e:
        raise RunLoadError(f"{run / 'config.yaml'}: {e}") from None
    if data_path:
        cfg = merge(cfg, {"data": {"path": str(data_path)}})
    if data is None:
        from elasticrec.data import load_dataset

        data = load_dataset(cfg.data)
    try:
        dev = resolve_device(str(device))
    except RuntimeError as e:
        raise RunLoadError(str(e)) from None
    model = build_model(cfg.model, data.n_items)
    try:
        if checkpoint == "best":
            load_best(run / "checkpoints", model, map_location="cpu")
        else:
            load_checkpoint(run / "checkpoints", model, map_location="cpu")
    except CheckpointError as e:
        raise RunLoadError(str(e)) from None
    except RuntimeError as e:  # shape mismatch: the dataset is not the one the run trained on
        raise RunLoadError(f"{run}: checkpoint does not fit the dataset ({data.n_items} items); "
                           f"was the data changed? ({str(e).splitlines()[0]})") from None
    return Recommender(model, data, device=dev, name=cfg.model.name)
