"""Next-item losses over all valid positions (target 0 = padding, ignored).

- ``ce``: full softmax cross-entropy over the whole catalogue. By default (``ce_impl="chunked"``)
  it never materialises the [N, n_items] logits: :class:`ChunkedLinearCE` scores a block of rows
  at a time and computes its gradients in the same pass; ``ce_impl="plain"`` is the
  ``F.cross_entropy`` reference it is tested against.
- ``sampled``: sampled softmax; negatives = other positions' targets in the batch (in-batch)
  plus ``n_negatives`` uniform items, either shared by all positions (``negatives_per="batch"``)
  or drawn for each position (``"position"``, generative-recommenders' "local" sampling);
  accidental hits are masked; optional logQ correction for the popularity-biased in-batch
  negatives; temperature.
- ``bce``: SASRec's binary cross-entropy with one uniform negative per position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

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
        if cfg.ce_impl == "chunked":
            total = chunked_linear_ce(h, emb[1:], t - 1, 1.0 / cfg.temperature, cfg.ce_chunk_rows)
            return total / t.numel() if reduction == "mean" else total
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


# per-position negatives without in-batch ones are scored block-wise against the whole item table
# while it holds at most this many items per negative (3 [N, V] matrix products, no [N, K, D]
# gather); beyond it gathering the drawn rows is cheaper. Measured on CPU at K=128
# (docs/ce_loss.md): block-wise 3.6x faster on ML-1M (3,416 items), gathering 1.2x faster on
# Beauty (12,101) and 5-7x on 54k-100k items.
BLOCKWISE_ITEMS_PER_NEGATIVE = 64


def _sampled_softmax(h, t, emb, cfg: TrainConfig, log_q, reduction="mean"):
    per_position = cfg.negatives_per == "position" and cfg.n_negatives > 0
    cands = []
    if cfg.in_batch_negatives:
        cands.append(t)
    if cfg.n_negatives > 0 and not per_position:
        cands.append(torch.randint(1, emb.shape[0], (cfg.n_negatives,), device=t.device))
    if not cands and not per_position:
        raise ValueError("sampled softmax needs in_batch_negatives or n_negatives > 0")
    if per_position:  # n_negatives uniform items for each position
        neg = torch.randint(1, emb.shape[0], (t.numel(), cfg.n_negatives), device=t.device)
        if not cands and emb.shape[0] - 1 <= BLOCKWISE_ITEMS_PER_NEGATIVE * cfg.n_negatives:
            # only these draws, small table: score blocks of rows against the whole table and keep
            # the drawn columns (about the cost of the full softmax, a tenth of the gather's memory)
            total = chunked_linear_ce(h, emb[1:], t - 1, 1.0 / cfg.temperature, cfg.ce_chunk_rows, neg - 1)
            return total / t.numel() if reduction == "mean" else total
    # logQ: correct for items' sampling probability (popular items appear more often in-batch)
    correct = cfg.logq and log_q is not None and cfg.in_batch_negatives
    pos_logit = (h * emb[t]).sum(-1, keepdim=True).float()  # [N, 1]
    if correct:
        pos_logit = pos_logit - log_q[t][:, None]
    blocks = [pos_logit]
    if cands:  # negatives shared by every position: one [N, M] matrix product
        neg_shared = torch.unique(torch.cat(cands))  # [M]
        neg_logit = (h @ emb[neg_shared].t()).float()
        if correct:
            neg_logit = neg_logit - log_q[neg_shared][None]
        blocks.append(neg_logit.masked_fill(neg_shared[None] == t[:, None], float("-inf")))  # accidental hits
    if per_position:  # large table or with in-batch negatives: gather each position's drawn rows
        neg_logit = torch.bmm(F.embedding(neg, emb), h.unsqueeze(-1)).squeeze(-1).float()
        blocks.append(neg_logit.masked_fill(neg == t[:, None], float("-inf")))
    logits = torch.cat(blocks, 1) / cfg.temperature
    return F.cross_entropy(logits, torch.zeros_like(t), reduction=reduction)


class ChunkedLinearCE(torch.autograd.Function):
    """Summed cross-entropy of ``scale * h @ w.T`` against class ids ``t``, a block of rows at a time.

    The forward pass computes each block's logits (fp32 softmax statistics), its loss and, when
    a gradient is needed, its gradients: d logits = scale * (softmax - onehot), then
    d h = d logits @ w and d w += d logits.T @ h. Peak extra memory is one block of logits
    instead of the whole [N, V] matrix and its softmax and gradient copies; on CPU it is also
    1.6-3.4x faster than ``F.cross_entropy`` on the full logits (docs/ce_loss.md). The backward pass only scales
    the stored gradients by the incoming one.
    """

    @staticmethod
    def forward(ctx, h, w, t, scale: float, rows: int, negatives=None):
        grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        gh = torch.empty(h.shape, dtype=torch.float32, device=h.device) if grads else None
        gw = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if grads else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        with torch.no_grad():
            for s in range(0, h.shape[0], rows):
                hc, tc = h[s:s + rows], t[s:s + rows]
                logits = (hc @ w.t()).float()
                if scale != 1.0:
                    logits.mul_(scale)
                if negatives is None:
                    lse = torch.logsumexp(logits, -1)
                    total += (lse - logits.gather(1, tc[:, None]).squeeze(1)).sum()
                    if not grads:
                        continue
                    p = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                    p[torch.arange(len(tc), device=tc.device), tc] -= 1.0
                else:  # sampled softmax over column 0 = the target and the row's own draws
                    cols = torch.cat([tc[:, None], negatives[s:s + rows]], 1)
                    sel = logits.gather(1, cols)
                    sel[:, 1:].masked_fill_(cols[:, 1:] == tc[:, None], float("-inf"))  # accidental hits
                    lse = torch.logsumexp(sel, -1)
                    total += (lse - sel[:, 0]).sum()
                    if not grads:
                        continue
                    q = sel.sub_(lse[:, None]).exp_()
                    q[:, 0] -= 1.0
                    # d logits: scattered back (a class drawn twice gets both terms), zero elsewhere
                    p = logits.zero_().scatter_add_(1, cols, q)
                if scale != 1.0:
                    p.mul_(scale)
                gh[s:s + rows] = p.to(w.dtype) @ w  # .to is a no-op when the dtypes match
                gw += (p.t().to(hc.dtype) @ hc).float()
        ctx.dtypes = (h.dtype, w.dtype)
        ctx.save_for_backward(gh, gw)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        gh, gw = ctx.saved_tensors
        dh, dw = ctx.dtypes
        return ((gh * g).to(dh) if ctx.needs_input_grad[0] else None,
                (gw * g).to(dw) if ctx.needs_input_grad[1] else None, None, None, None, None)


def ce_block_rows(n_classes: int, device: torch.device, rows: int = 0) -> int:
    """Rows per block of :class:`ChunkedLinearCE`: ``rows`` if > 0, else about 4M logits per
    block on CPU (the fastest setting measured on 2 cores) and 64M on an accelerator."""
    if rows > 0:
        return rows
    budget = 2**22 if device.type == "cpu" else 2**26
    return max(64, budget // max(1, n_classes))


def chunked_linear_ce(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, scale: float = 1.0,
                      rows: int = 0, negatives: torch.Tensor | None = None) -> torch.Tensor:
    """``F.cross_entropy(scale * h @ w.T, t, reduction="sum")`` without the full logits matrix.

    ``negatives`` ([N, K] class ids): a sampled softmax instead, each row over its target and its
    own K drawn classes (a draw equal to the target dropped, a class drawn twice counted twice)."""
    return ChunkedLinearCE.apply(h, w, t, float(scale), ce_block_rows(w.shape[0], h.device, rows), negatives)
