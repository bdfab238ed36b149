"""HSTU pointwise attention (Zhai et al. 2024, "Actions Speak Louder than Words"), written here.

One HSTU layer, on input X [B, L, D] (the residual is added by the block):

    U, V, Q, K = split(SiLU(LayerNorm(X) W_uvqk + b))          one fused projection
    A          = SiLU(Q K^T + rab) / n                          per head, no softmax
                 masked to keys s <= t that are real items
    out        = W_o(dropout(LayerNorm(A V) * U))

``rab`` is a learned relative attention bias per head: a relative-*position* term (buckets of the
distance t - s: exact below ``num_buckets // 2``, log-spaced above, up to ``max_len``) plus an
optional relative-*time* term (buckets floor(ln(|time_t - time_s|) / time_log_scale), gaps under
one second in bucket 0). The time gap is taken between the query's own interaction and the key's,
so position t never sees anything of interaction t+1 (HSTU itself uses the next action's time,
known at request time in production; under leave-one-out that is the target's timestamp, which
we do not want to feed). ``n`` is ``max_len`` (HSTU divides by the padded length, a constant) or,
with ``norm="causal"``, the number of keys the query attends (a mean instead of a sum).

:func:`hstu_attention` is the batched path (one [B, H, L, L] matrix, fine up to a few thousand
positions); :func:`reference_hstu_attention` loops over users and positions with scalar bucket
arithmetic and is only used by the tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from elasticrec.models.layers.common import toeplitz_lower


# ----------------------------------------------------------------------------- buckets
def position_bucket(distance: int, num_buckets: int, max_distance: int) -> int:
    """Scalar bucket of a causal distance t - s >= 0 (the reference for the batched version)."""
    exact = max(1, num_buckets // 2)
    if distance < exact or max_distance <= exact:
        return min(distance, num_buckets - 1)
    b = exact + int(math.log(distance / exact) / math.log(max_distance / exact) * (num_buckets - exact))
    return min(b, num_buckets - 1)


def time_bucket(gap: int, num_buckets: int, log_scale: float) -> int:
    """Scalar bucket of a time gap in seconds: floor(ln(max(|gap|, 1)) / log_scale), clamped."""
    return min(int(math.log(max(abs(gap), 1)) / log_scale), num_buckets - 1)


def distance_buckets(L: int, num_buckets: int, max_distance: int, device=None) -> torch.Tensor:
    """Long [L]: the bucket of each causal distance d = t - s in 0 .. L-1 (what the layer uses:
    the bias depends on t - s only, so an [L, L] bucket matrix, 8 GiB of int64 at L = 32,768, is
    never built)."""
    dist = torch.arange(L, device=device)
    exact = max(1, num_buckets // 2)
    if max_distance <= exact:
        return dist.clamp(max=num_buckets - 1)
    far = dist.double().clamp(min=exact) / exact
    log_b = exact + (far.log() / math.log(max_distance / exact) * (num_buckets - exact)).long()
    return torch.where(dist < exact, dist, log_b).clamp(max=num_buckets - 1)


def relative_position_buckets(L: int, num_buckets: int, max_distance: int, device=None) -> torch.Tensor:
    """Long [L, L]: bucket of (t - s) for query t, key s (0 above the diagonal, masked anyway);
    the plain definition the tests check the layer's per-distance buckets against."""
    pos = torch.arange(L, device=device)
    return distance_buckets(L, num_buckets, max_distance, device)[(pos[:, None] - pos[None, :]).clamp(min=0)]


def relative_time_buckets(timestamps: torch.Tensor, num_buckets: int, log_scale: float) -> torch.Tensor:
    """Long [B, L, L]: bucket of |time_t - time_s| in seconds (timestamps: int [B, L])."""
    gap = (timestamps[:, :, None] - timestamps[:, None, :]).abs().clamp(min=1)
    return (gap.double().log() / log_scale).long().clamp(0, num_buckets - 1)


class _BucketLookup(torch.autograd.Function):
    """``table[:, idx].transpose(0, 1)`` whose backward is a weighted histogram per head."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.n = table.shape[1]
        return table[:, idx].transpose(0, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        flat = idx.reshape(-1)
        w = grad if grad.dtype in (torch.float32, torch.float64) else grad.float()
        g = torch.stack([torch.bincount(flat, weights=w[:, h].reshape(-1), minlength=ctx.n)
                         for h in range(grad.shape[1])])
        return g.to(grad.dtype), None


def bucket_lookup(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """[B, H, L, L] bias ``table[h, idx[b, t, s]]`` for a table [H, n] and buckets [B, L, L].

    Plain indexing differentiates into ``index_put_(accumulate=True)``, which on CUDA adds the
    B * L^2 gradients of one bucket serially; with it HSTU's training step was 25-1,500x slower
    than SASRec's on an H200 (2026-11-28, L = 256-8192) while its inference was as fast. The
    histogram (``bincount`` with weights) gives the same sums in parallel. In deterministic mode
    CUDA has no deterministic ``bincount``, so the plain indexing is used there."""
    if idx.is_cuda and torch.are_deterministic_algorithms_enabled():
        return table[:, idx].transpose(0, 1)
    return _BucketLookup.apply(table, idx)


# ----------------------------------------------------------------------------- attention
def _mask(valid: torch.Tensor | None, L: int, device) -> torch.Tensor:
    """Bool [B or 1, 1, L, L]: key s <= query t and s is a real item."""
    causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()[None, None]
    return causal if valid is None else causal & valid[:, None, None, :]


def hstu_attention(q, k, v, valid=None, bias=None, norm: str | float = 1.0,
                   dropout_p: float = 0.0, training: bool = False) -> torch.Tensor:
    """SiLU(q k^T + bias) / n, masked, times v. q, k: [B, H, L, dqk]; v: [B, H, L, dv];
    bias broadcastable to [B, H, L, L]; ``norm``: a number n, or "causal" (keys attended)."""
    L = q.shape[-2]
    mask = _mask(valid, L, q.device)
    s = q @ k.transpose(-1, -2)
    if bias is not None:
        s = s + bias.to(s.dtype)
    n = mask.sum(-1, keepdim=True).clamp(min=1).to(s.dtype) if norm == "causal" else float(norm)
    a = (F.silu(s) / n).masked_fill(~mask, 0.0)
    if dropout_p > 0 and training:
        a = F.dropout(a, dropout_p)
    return a @ v


def reference_hstu_attention(q, k, v, valid, pos_table, max_distance: int, norm: str | float,
                             time_table=None, timestamps=None, time_log_scale: float = 0.301):
    """Per-user, per-position loops with scalar buckets; same inputs as the layer (tables [H, n])."""
    B, H, L, _ = q.shape
    out = torch.zeros(B, H, L, v.shape[-1], dtype=v.dtype)
    for b in range(B):
        for t in range(L):
            keys = [s for s in range(t + 1) if valid is None or bool(valid[b, s])]
            if not keys:
                continue
            n = len(keys) if norm == "causal" else float(norm)
            for s in keys:
                rab = pos_table[:, position_bucket(t - s, pos_table.shape[1], max_distance)]
                if time_table is not None and timestamps is not None:
                    gap = int(timestamps[b, t]) - int(timestamps[b, s])
                    rab = rab + time_table[:, time_bucket(gap, time_table.shape[1], time_log_scale)]
                w = F.silu((q[b, :, t] * k[b, :, s]).sum(-1) + rab) / n  # [H]
                out[b, :, t] = out[b, :, t] + w[:, None] * v[b, :, s]
    return out


class HSTUAttention(nn.Module):
    """Fused UVQK projection, pointwise attention with relative bias, gated output (no residual)."""

    def __init__(self, d_model: int, n_heads: int = 1, attention_dim: int | None = None,
                 linear_dim: int | None = None, dropout: float = 0.0, attn_dropout: float = 0.0,
                 num_buckets: int = 128, time_buckets: int = 0, time_log_scale: float = 0.301,
                 max_len: int = 200, norm: str = "max_len"):
        super().__init__()
        if d_model % n_heads and (attention_dim is None or linear_dim is None):
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}; "
                             "set model.hstu.attention_dim and linear_dim explicitly")
        if norm not in ("max_len", "causal"):
            raise ValueError(f"HSTU attn_norm must be max_len or causal, got {norm!r}")
        self.h = n_heads
        self.dqk = attention_dim or d_model // n_heads
        self.dv = linear_dim or d_model // n_heads
        self.uvqk = nn.Linear(d_model, n_heads * (2 * self.dv + 2 * self.dqk))
        self.pos_bias = nn.Parameter(torch.zeros(n_heads, num_buckets))
        self.time_bias = nn.Parameter(torch.zeros(n_heads, time_buckets)) if time_buckets else None
        self.norm_attn = nn.LayerNorm(n_heads * self.dv)
        self.out = nn.Linear(n_heads * self.dv, d_model)
        self.drop = nn.Dropout(dropout)
        self.attn_dropout = attn_dropout
        self.n = "causal" if norm == "causal" else float(max_len)

    def bias(self, pos_idx: torch.Tensor, time_idx: torch.Tensor | None) -> torch.Tensor:
        """rab [1 or B, H, L, L] from the bucket of each distance (``distance_buckets``, [L]) and
        optional time buckets [B, L, L]; entries above the diagonal (masked anyway) are 0."""
        rab = toeplitz_lower(self.pos_bias[:, pos_idx])[None]  # the bucket depends on t - s only
        if self.time_bias is not None:
            if time_idx is not None:
                rab = rab + bucket_lookup(self.time_bias, time_idx)
            elif self.training:  # no timestamps: keep the table in the graph (zero gradient) so
                rab = rab + 0.0 * self.time_bias.sum()  # DistributedDataParallel sees it used
        return rab

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None, pos_idx: torch.Tensor,
                time_idx: torch.Tensor | None = None) -> torch.Tensor:
        B, L, _ = x.shape
        h, dqk, dv = self.h, self.dqk, self.dv
        u, v, q, k = F.silu(self.uvqk(x)).split([h * dv, h * dv, h * dqk, h * dqk], dim=-1)
        q, k = (t.view(B, L, h, dqk).transpose(1, 2) for t in (q, k))
        v = v.view(B, L, h, dv).transpose(1, 2)
        y = hstu_attention(q, k, v, valid, self.bias(pos_idx, time_idx), self.n,
                           self.attn_dropout, self.training)
        y = y.transpose(1, 2).reshape(B, L, h * dv)
        return self.out(self.drop(self.norm_attn(y) * u))
