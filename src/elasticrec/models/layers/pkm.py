"""Product-key memory (Lample et al., 2019, "Large Memory Layers with Product Keys").

A memory of ``n_keys ** 2`` value slots addressed by the Cartesian product of two sub-key
codebooks of ``n_keys`` keys each. For every head the query (``key_dim`` channels) is split in
two halves; half ``a`` is scored against codebook ``a``. The score of slot ``(i1, i2)`` is
``s1[i1] + s2[i2]``, so the exact top-m slots are among the ``m x m`` sums of the per-half
top-m candidates: scoring costs ``O(n_keys * key_dim + m^2)`` instead of ``O(n_keys^2)``.
The m winners are softmax-weighted and their value vectors summed (over heads too) through one
``nn.EmbeddingBag(mode="sum", per_sample_weights=...)`` call.

In ELASTIC this is the Interest Memory Retrieval (IMR) bank: each packed dispatcher reads it and
the retrieved interest is added residually (``P <- P + memory(P)``, done by the caller).

Notes
-----
* ``query_norm="batchnorm"`` (the paper's choice) normalises each query channel over all rows of
  the batch (all leading dims flattened). It couples rows in training mode; use
  ``"layernorm"`` (per head, over ``key_dim``) when rows must stay independent in training.
* ``dropout`` is applied to the retrieved output vector (value dropout).
* Usage tracking: set ``module.track_usage = True``; every forward pass then counts the slot
  hits (one per selected slot, per head, per row) in the non-persistent ``usage_counts``
  buffer; :meth:`usage_stats` summarises and optionally resets it.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """At least fp32 (keeps float64 as is)."""
    return t if t.dtype == torch.float64 else t.float()


class ProductKeyMemory(nn.Module):
    def __init__(self, d_in: int, d_out: int | None = None, n_keys: int = 256, heads: int = 4,
                 topk: int = 32, key_dim: int = 64, query_norm: str = "batchnorm",
                 dropout: float = 0.0):
        super().__init__()
        d_out = d_in if d_out is None else d_out
        if key_dim % 2:
            raise ValueError(f"key_dim={key_dim} must be even (it is split into two halves)")
        if not 1 <= topk <= n_keys:
            raise ValueError(f"topk={topk} must be in [1, n_keys={n_keys}]")
        if query_norm not in ("batchnorm", "layernorm", "none"):
            raise ValueError(f"query_norm must be 'batchnorm', 'layernorm' or 'none', got {query_norm!r}")
        self.d_in, self.d_out = d_in, d_out
        self.n_keys, self.heads, self.topk, self.key_dim = n_keys, heads, topk, key_dim
        self.half = key_dim // 2
        self.n_slots = n_keys * n_keys
        self.query_norm_kind = query_norm

        self.query_proj = nn.Linear(d_in, heads * key_dim)
        if query_norm == "batchnorm":
            self.query_norm = nn.BatchNorm1d(heads * key_dim)
        elif query_norm == "layernorm":
            self.query_norm = nn.LayerNorm(key_dim)
        else:
            self.query_norm = nn.Identity()
        # sub-key codebooks: [heads, 2 halves, n_keys, key_dim / 2]
        self.keys = nn.Parameter(torch.empty(heads, 2, n_keys, self.half))
        self.values = nn.EmbeddingBag(self.n_slots, d_out, mode="sum")
        self.dropout = nn.Dropout(dropout)

        self.track_usage = False
        self.register_buffer("usage_counts", torch.zeros(self.n_slots), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.half)
        nn.init.uniform_(self.keys, -bound, bound)
        nn.init.normal_(self.values.weight, mean=0.0, std=self.d_out ** -0.5)

    def extra_repr(self) -> str:
        return (f"d_in={self.d_in}, d_out={self.d_out}, n_keys={self.n_keys} "
                f"({self.n_slots} slots), heads={self.heads}, topk={self.topk}, "
                f"key_dim={self.key_dim}, query_norm={self.query_norm_kind}")

    # ------------------------------------------------------------------ parameters
    def value_parameters(self) -> list[nn.Parameter]:
        """The value table (give it its own learning rate / optimizer group)."""
        return [self.values.weight]

    def non_value_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.value_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    # ------------------------------------------------------------------ retrieval
    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, d_in] -> normalised queries [N, heads, key_dim]."""
        q = self.query_proj(x)
        if self.query_norm_kind == "batchnorm":
            q = self.query_norm(q)
        q = q.view(x.shape[0], self.heads, self.key_dim)
        if self.query_norm_kind == "layernorm":
            q = self.query_norm(q)
        return q

    def half_scores(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of each query half against its codebook: two [N, heads, n_keys] tensors."""
        keys = self.keys.to(q.dtype)
        s1 = torch.einsum("nhd,hkd->nhk", q[..., : self.half], keys[:, 0])
        s2 = torch.einsum("nhd,hkd->nhk", q[..., self.half:], keys[:, 1])
        return s1, s2

    def select(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fast product-key top-m: returns (scores [N, heads, m], slot indices [N, heads, m])."""
        m, n = self.topk, self.n_keys
        s1, s2 = self.half_scores(q)
        t1, i1 = s1.topk(m, dim=-1)                              # [N, H, m]
        t2, i2 = s2.topk(m, dim=-1)
        cand = (t1[..., :, None] + t2[..., None, :]).flatten(-2)  # [N, H, m*m]
        scores, best = cand.topk(m, dim=-1)                      # [N, H, m]
        idx = i1.gather(-1, best // m) * n + i2.gather(-1, best % m)
        return scores, idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.d_in)
        q = self.queries(x2)
        scores, idx = self.select(q)
        w = torch.softmax(_upcast(scores), dim=-1)
        if self.track_usage:
            self._count(idx)
        N = x2.shape[0]
        table = self.values.weight
        out = self.values(idx.reshape(N, -1), per_sample_weights=w.reshape(N, -1).to(table.dtype))
        out = self.dropout(out)
        return out.to(x.dtype).reshape(*lead, self.d_out)

    # ------------------------------------------------------------------ usage
    @torch.no_grad()
    def _count(self, idx: torch.Tensor) -> None:
        flat = idx.reshape(-1)
        self.usage_counts.index_add_(0, flat, torch.ones_like(flat, dtype=self.usage_counts.dtype))

    @torch.no_grad()
    def usage_stats(self, reset: bool = True) -> dict:
        """Slot usage since the last reset: fraction of slots hit at least once, entropy (nats)
        of the hit distribution and that entropy divided by log(n_slots) (1 = uniform)."""
        c = self.usage_counts.double()
        total = float(c.sum())
        if total > 0:
            p = c[c > 0] / total
            entropy = float(-(p * p.log()).sum())
            frac = float((c > 0).double().mean())
        else:
            entropy, frac = 0.0, 0.0
        stats = {"frac_used": frac, "entropy": entropy,
                 "normalized_entropy": entropy / math.log(self.n_slots) if self.n_slots > 1 else 0.0,
                 "hits": total}
        if reset:
            self.usage_counts.zero_()
        return stats


@torch.no_grad()
def pkm_topk_bruteforce(module: ProductKeyMemory, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every one of the n_keys^2 slots (s1[i1] + s2[i2]) and take the top-m.

    Returns (indices [N, heads, m], softmax weights [N, heads, m]) with N = prod(leading dims).
    For tests only (O(n_keys^2) per query).
    """
    q = module.queries(x.reshape(-1, module.d_in))
    s1, s2 = module.half_scores(q)
    full = (s1[..., :, None] + s2[..., None, :]).flatten(-2)  # slot i1 * n_keys + i2
    scores, idx = full.topk(module.topk, dim=-1)
    return idx, torch.softmax(_upcast(scores), dim=-1)


def pkm_topk_fast(module: ProductKeyMemory, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fast path's (indices, softmax weights), same layout as :func:`pkm_topk_bruteforce`."""
    q = module.queries(x.reshape(-1, module.d_in))
    scores, idx = module.select(q)
    return idx, torch.softmax(_upcast(scores), dim=-1)
