"""Next-item losses over all valid positions (target 0 = padding, ignored).

- ``ce``: full softmax cross-entropy over the whole catalogue.
- ``sampled``: sampled softmax; negatives = other positions' targets in the batch (in-batch)
  plus ``n_negatives`` uniform items, shared by all positions; accidental hits are masked;
  optional logQ correction for the popularity-biased in-batch negatives; temperature.
- ``bce``: SASRec's binary cross-entropy with one uniform negative per position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from elasticrec.config import TrainConfig


def next_item_loss(model, h: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig,
                   log_q: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Loss averaged (``reduction="mean"``) or summed (``"sum"``) over the valid positions."""
    mask = targets > 0
    h, t = h[mask], targets[mask]  # [N, D], [N]
    if t.numel() == 0:
        return h.sum() * 0.0
    emb = model.output_embeddings()
    h = model.output_queries(h)
    if cfg.loss == "ce":
        # item 0 is padding, never a class: score items 1..n only (no -inf column to write and
        # copy back in the backward pass, no division when the temperature is 1)
        logits = (h @ emb[1:].t()).float()
        if cfg.temperature != 1.0:
            logits = logits / cfg.temperature
        return F.cross_entropy(logits, t - 1, reduction=reduction)
    if cfg.loss == "bce":
        neg = torch.randint(1, emb.shape[0], t.shape, device=t.device)
        neg = torch.where(neg == t, neg % (emb.shape[0] - 1) + 1, neg)
        pos_l = (h * emb[t]).sum(-1).float()
        neg_l = (h * emb[neg]).sum(-1).float()
        per = F.softplus(-pos_l) + F.softplus(neg_l)
        return per.mean() if reduction == "mean" else per.sum()
    if cfg.loss == "sampled":
        return _sampled_softmax(h, t, emb, cfg, log_q, reduction)
    raise ValueError(f"unknown loss {cfg.loss!r}; choose ce, sampled or bce")


def _sampled_softmax(h, t, emb, cfg: TrainConfig, log_q, reduction="mean"):
    cands = []
    if cfg.in_batch_negatives:
        cands.append(t)
    if cfg.n_negatives > 0:
        cands.append(torch.randint(1, emb.shape[0], (cfg.n_negatives,), device=t.device))
    if not cands:
        raise ValueError("sampled softmax needs in_batch_negatives or n_negatives > 0")
    neg = torch.unique(torch.cat(cands))  # [M]
    pos_logit = (h * emb[t]).sum(-1, keepdim=True).float()  # [N, 1]
    neg_logit = (h @ emb[neg].t()).float()  # [N, M]
    if cfg.logq and log_q is not None:
        # correct for items' sampling probability (popular items appear more often in-batch)
        neg_logit = neg_logit - log_q[neg][None]
        pos_logit = pos_logit - log_q[t][:, None]
    neg_logit = neg_logit.masked_fill(neg[None] == t[:, None], float("-inf"))  # accidental hits
    logits = torch.cat([pos_logit, neg_logit], 1) / cfg.temperature
    return F.cross_entropy(logits, torch.zeros_like(t), reduction=reduction)
