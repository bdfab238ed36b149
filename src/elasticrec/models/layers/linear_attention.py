"""Causal kernelized linear attention (Katharopoulos et al. 2020; used LinRec-style for SR).

softmax(q k^T) is replaced by phi(q) phi(k)^T with the feature map phi(x) = elu(x) + 1 (positive,
so the normaliser never vanishes); LinRec's L2-normalised maps are defined for the non-causal
case and we do not use them. Output at position t:

    y_t = phi(q_t) S_t / (phi(q_t) . z_t + eps),   S_t = sum_{s<=t} phi(k_s) v_s^T,  z_t = sum phi(k_s)

over real (non-padding) keys s. :func:`causal_linear_attention` computes it in chunks of C
positions: running states S, z are exclusive cumulative sums of per-chunk sums (O(L d^2)), the
chunk itself is a small masked C x C product (O(L C d)); nothing of size L x L or L x d x d is
materialised. Accumulation is in fp32. :func:`reference_linear_attention` is the explicit
quadratic form, used by the tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0


def reference_linear_attention(q, k, v, valid=None, eps: float = 1e-6):
    """Masked (phi(q) phi(k)^T) v / row sums, with an explicit [B, H, L, L] matrix.
    q, k: feature-mapped [B, H, L, dk]; v: [B, H, L, dv]; valid: bool [B, L] or None."""
    L = q.shape[-2]
    mask = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()[None, None]
    if valid is not None:
        mask = mask & valid[:, None, None, :]
    with torch.autocast(q.device.type, enabled=False):
        a = (q.float() @ k.float().transpose(-1, -2)).masked_fill(~mask, 0.0)
        return ((a @ v.float()) / (a.sum(-1, keepdim=True) + eps)).to(v.dtype)


def causal_linear_attention(q, k, v, valid=None, chunk_size: int = 64, eps: float = 1e-6):
    """Chunked causal linear attention; same inputs and result as the reference."""
    with torch.autocast(q.device.type, enabled=False):  # running sums stay fp32 under bf16 AMP
        return _chunked(q.float(), k.float(), v.float(), valid, chunk_size, eps).to(v.dtype)


def _chunked(q, k, v, valid, chunk_size: int, eps: float):
    B, H, L, dk = q.shape
    if valid is not None:
        k = k * valid[:, None, :, None]  # padding keys contribute nothing
    C = max(1, min(chunk_size, L))
    pad = (-L) % C
    if pad:  # left-pad to whole chunks with zero keys
        q, k, v = (F.pad(t, (0, 0, pad, 0)) for t in (q, k, v))
    N = (L + pad) // C
    qc, kc, vc = (t.reshape(B, H, N, C, t.shape[-1]) for t in (q, k, v))
    # states entering each chunk: exclusive prefix sums over chunks
    kv = kc.transpose(-1, -2) @ vc  # [B, H, N, dk, dv]
    ks = kc.sum(-2)  # [B, H, N, dk]
    kv = F.pad(kv.cumsum(2), (0, 0, 0, 0, 1, 0))[:, :, :N]
    ks = F.pad(ks.cumsum(2), (0, 0, 1, 0))[:, :, :N]
    # within a chunk: causal C x C
    a = (qc @ kc.transpose(-1, -2)) * torch.ones(C, C, device=q.device).tril()
    num = qc @ kv + a @ vc
    den = (qc * ks[..., None, :]).sum(-1) + a.sum(-1)
    return (num / (den[..., None] + eps)).reshape(B, H, N * C, -1)[:, :, pad:]


class CausalLinearAttention(nn.Module):
    """Multi-head causal linear attention (elu+1 feature map); ``explicit`` uses the reference."""

    def __init__(self, d_model: int, n_heads: int = 1, chunk_size: int = 64, explicit: bool = False):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.h, self.dh = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.chunk_size = chunk_size
        self.explicit = explicit

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)
        q, k = elu_feature_map(q), elu_feature_map(k)
        if self.explicit:
            y = reference_linear_attention(q, k, v, valid)
        else:
            y = causal_linear_attention(q, k, v, valid, self.chunk_size)
        return self.out(y.transpose(1, 2).reshape(B, L, D))
