"""Full-ranking leave-one-out evaluator.

For each user with a target in the stage (valid: second-last item, test: last item), the model
reads the last ``max_len`` items of the visible history (``eval.history_len``: another number, or
the whole history; ``eval.drop_recent``: the window ending that many items earlier) and scores
**every** item; items of the
history are excluded by default (never the target itself); the rank of the target among all
remaining items gives HR/NDCG/MRR. ``protocol="sampled"`` ranks the target against
``n_negatives`` sampled items instead — an easier protocol, labelled as such in every output.
"""

from __future__ import annotations

import numpy as np
import torch

from elasticrec.config import ConfigError, EvalConfig
from elasticrec.data.sequences import SequenceData, trimmed_width
from elasticrec.evaluate.metrics import metrics_from_ranks


def input_end(start, end, drop_recent: int = 0):
    """End of the items fed to the model from a history ``[start, end)`` when its ``drop_recent``
    most recent items are left out (``eval.drop_recent``); at least one item stays. Element-wise
    for arrays."""
    return np.maximum(end - drop_recent, np.minimum(start + 1, end))


def build_eval_batch(data: SequenceData, users: np.ndarray, stage: str, max_len: int | None,
                     trim: bool = False, drop_recent: int = 0):
    """Left-padded inputs [B, W], targets [B], and (row, item) pairs of full histories. Each row
    holds the last ``max_len`` history items, W = max_len; ``None``: the whole history, W = the
    batch's longest. ``trim``: W = the batch's longest window rounded up to a multiple of 16 (at
    most max_len); every model ignores left padding, so only the work changes. ``drop_recent``:
    the inputs leave out each history's N most recent items (:func:`input_end`); the history
    pairs still hold them."""
    B = len(users)
    ends = [data.split_end(int(u), stage) for u in users]
    starts = [int(data.offsets[u]) for u in users]
    fed = [int(input_end(s, e, drop_recent)) for s, e in zip(starts, ends)]
    longest = max([f - s for s, f in zip(starts, fed)] + [1])
    if max_len is None:
        max_len = longest
    elif trim:
        max_len = trimmed_width(longest, max_len)
    inputs = np.zeros((B, max_len), dtype=np.int64)
    targets = np.zeros(B, dtype=np.int64)
    hist_rows, hist_items = [], []
    for i, (start, end, stop) in enumerate(zip(starts, ends, fed)):
        hist = data.items[start:end]
        targets[i] = data.items[end]
        w = data.items[start:stop][-max_len:]
        inputs[i, max_len - len(w):] = w
        hist_rows.append(np.full(len(hist), i, dtype=np.int64))
        hist_items.append(hist)
    return inputs, targets, np.concatenate(hist_rows), np.concatenate(hist_items)


def history_window(history_len: int | None, max_len: int) -> int | None:
    """History items evaluation feeds each user (``eval.history_len``): ``max_len`` when unset,
    None (the whole history) for 0, else that many."""
    if history_len is not None and history_len < 0:
        raise ConfigError(f"eval.history_len must be null (model.max_len), 0 (the whole history) or a "
                          f"positive number of items, got {history_len}")
    return max_len if history_len is None else (history_len or None)


def history_label(window: int | None, drop_recent: int = 0) -> str:
    """What a model read of each history, for labels: "last 200 items", "whole history", "last 50
    items, 1 most recent left out"."""
    label = "whole history" if window is None else f"last {window} items"
    return label + (f", {drop_recent} most recent left out" if drop_recent else "")


def build_eval_timestamps(data: SequenceData, users: np.ndarray, stage: str, max_len: int,
                          drop_recent: int = 0) -> np.ndarray:
    """Timestamps [B, max_len] aligned with :func:`build_eval_batch`'s inputs (0 at padding)."""
    out = np.zeros((len(users), max_len), dtype=np.int64)
    for i, u in enumerate(users):
        start = int(data.offsets[u])
        end = int(input_end(start, data.split_end(int(u), stage), drop_recent))
        w = data.timestamps[start:end][-max_len:]
        out[i, max_len - len(w):] = w
    return out


class Evaluator:
    def __init__(self, data: SequenceData, cfg: EvalConfig, max_len: int, device=None):
        self.data, self.cfg, self.max_len = data, cfg, max_len
        self.device = device or torch.device("cpu")
        self.window = history_window(cfg.history_len, max_len)   # history items read; None: all
        if cfg.drop_recent < 0:
            raise ConfigError(f"eval.drop_recent must be 0 (off) or a positive number of the most recent "
                              f"history items to leave out of the input, got {cfg.drop_recent}")
        if cfg.protocol == "sampled":
            counts = data.item_counts("train").astype(np.float64)
            counts[0] = 0
            if cfg.negative_sampling == "uniform":
                counts = (np.arange(data.n_items + 1) > 0).astype(np.float64)
            self._neg_p = counts / counts.sum()

    @property
    def label(self) -> str:
        return "full" if self.cfg.protocol == "full" else f"SAMPLED-{self.cfg.n_negatives}-{self.cfg.negative_sampling}"

    @property
    def history(self) -> str:
        return history_label(self.window, self.cfg.drop_recent)

    def check_model(self, model, stage: str, users: np.ndarray) -> None:
        """Refuse a history window longer than the model can read (e.g. learned positions)."""
        cap = getattr(model, "max_input_len", None)
        if cap is None or (self.window is not None and self.window <= self.max_len):
            return
        hist = input_end(0, self.data.history_lengths(stage)[users], self.cfg.drop_recent)   # items fed
        longest = int(hist.max()) if len(hist) else 0
        need = longest if self.window is None else min(self.window, longest)
        if need > cap:
            raise ConfigError(
                f"eval.history_len={self.cfg.history_len} feeds up to {need} items, but this {model.model_name} "
                f"reads at most {cap} (pos_encoding={model.cfg.pos_encoding}); longer histories need "
                f"positions that do not stop at max_len (ELASTIC: chunk, learned-start or none; "
                f"SASRec: none or rotary), set before training")

    @torch.no_grad()
    def ranks(self, model, stage: str, users: np.ndarray | None = None) -> np.ndarray:
        """0-based rank of each user's target (users default: all with a target for ``stage``)."""
        if users is None:
            users = self.data.eval_users(stage)
        users = np.asarray(users)
        self.check_model(model, stage, users)
        order = np.arange(len(users))
        # batch users of similar length and cut each batch to its longest history (less padding;
        # the sampled protocol keeps the user order, which its negatives' random stream follows)
        if self.window is None or self.cfg.protocol == "full":
            order = np.argsort(self.data.history_lengths(stage)[users], kind="stable")
        was_training = model.training
        model.eval()
        out = []
        rng = np.random.default_rng(self.cfg.seed)
        try:
            for s in range(0, len(users), self.cfg.batch_size):
                batch = users[order[s: s + self.cfg.batch_size]]
                out.append(self._rank_batch(model, batch, stage, rng))
        finally:
            model.train(was_training)
        if not out:
            return np.zeros(0, dtype=np.int64)
        ranks = np.empty(len(users), dtype=np.int64)
        ranks[order] = np.concatenate(out)
        return ranks

    def _rank_batch(self, model, users, stage, rng) -> np.ndarray:
        drop = self.cfg.drop_recent
        inputs, targets, hr, hi = build_eval_batch(self.data, users, stage, self.window, trim=True, drop_recent=drop)
        dev = self.device
        x = torch.from_numpy(inputs).to(dev)
        if getattr(model, "uses_timestamps", False) and self.data.timestamps is not None:
            ts = build_eval_timestamps(self.data, users, stage, inputs.shape[1], drop)
            h = model.last_hidden(x, torch.from_numpy(ts).to(dev))
        else:
            h = model.last_hidden(x)
        scores = model.score_all(h).float()  # [B, n_items + 1]
        t = torch.from_numpy(targets).to(dev)
        rows = torch.arange(len(users), device=dev)
        target_score = scores[rows, t]
        if self.cfg.protocol == "full":
            scores[:, 0] = float("-inf")
            if self.cfg.exclude_history and len(hi):
                scores[torch.from_numpy(hr).to(dev), torch.from_numpy(hi).to(dev)] = float("-inf")
            scores[rows, t] = target_score  # the target is never excluded
            return (scores > target_score[:, None]).sum(1).cpu().numpy()
        # sampled protocol: n negatives not in the user's history and != target
        negs = self._sample_negatives(rng, targets, hr, hi)
        neg_scores = scores.gather(1, torch.from_numpy(negs).to(dev))
        return (neg_scores > target_score[:, None]).sum(1).cpu().numpy()

    def _sample_negatives(self, rng, targets, hr, hi) -> np.ndarray:
        """n distinct negatives per user, not in its history and != target. When fewer than n
        items qualify, all of them are used and the row is padded with the target itself
        (equal scores never count as ranked above the target)."""
        n = self.cfg.n_negatives
        out = np.repeat(targets[:, None], n, axis=1)
        for i in range(len(targets)):
            allowed = self._neg_p.copy()
            allowed[hi[hr == i]] = 0
            allowed[targets[i]] = 0
            k = min(n, int((allowed > 0).sum()))
            if k:
                out[i, :k] = rng.choice(len(allowed), size=k, replace=False, p=allowed / allowed.sum())
        return out

    def summarize(self, ranks: np.ndarray) -> dict:
        """Metrics of these ranks, with the number of users and the protocol label."""
        res = metrics_from_ranks(ranks, self.cfg.ks)
        res.update({"n_users": int(np.asarray(ranks).size), "protocol": self.label})
        return res

    def evaluate(self, model, stage: str, users: np.ndarray | None = None) -> dict:
        return self.summarize(self.ranks(model, stage, users))
