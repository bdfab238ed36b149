"""Causal multi-head self-attention: fused (SDPA) path and an explicit-matrix reference.

``CausalSelfAttention`` runs through ``torch.nn.functional.scaled_dot_product_attention``
(FlashAttention / memory-efficient kernels on GPU). ``explicit=True`` materialises the L x L
score matrix the way RecBole and the original SASRec code do; it is kept as a baseline for the
efficiency benchmark and as the reference the tests compare against. ``output_gate`` /
``output_norm`` apply HSTU's output treatment (:func:`~elasticrec.models.layers.common.gated_output`)
before the output projection, as ELASTIC's options of the same names do. ``null_kv=n`` [ours]
adds ``n`` learned key/value pairs (per head, the same for every user and position) that every
query attends to beside its history, in the same softmax: an attention sink (the persistent
memory key/values of Sukhbaatar et al., 2019; x-transformers' ``attn_num_mem_kv``). ELASTIC's
empty-history dispatchers are such pairs for a position with no earlier chunk, so this option
tells a gain of that sink apart from a gain of ELASTIC's attention. They are run as ``n`` extra
positions in front of the sequence (learned keys/values, zero queries whose outputs are dropped),
so the call stays square and causal (``is_causal=True``, no L x L mask) and every query sees all
``n`` of them.

Sequences are left-padded: ``valid`` [B, L] is True at real items (``None``: no padding, the
plain causal kernel). Padding keys are masked; a padding query attends only to itself so no row
is empty (its output is discarded anyway). The layer never asks whether ``valid`` is all True:
that question waits for the GPU (a host sync), and once per layer it made SASRec's epochs on a
shared H200 1.4x slower than ELASTIC's (2026-12-04); ``SASRec.encode`` asks once per batch.
The fused path masks padding keys without any L x L tensor: every key gets one more feature
(0 for a real item, a large negative number for padding) and every query a matching 1, so the
padding keys' logits underflow to zero weight inside the causal kernel (``is_causal=True``, the
FlashAttention-eligible call). A [B, 1, L, L] boolean mask would take 4 GiB at L=4096 and a
batch of 256.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from elasticrec.models.layers.common import GATE_BIAS, apply_rotary, gated_output, rotary_tables


def causal_padding_mask(valid: torch.Tensor) -> torch.Tensor:
    """Boolean [B, 1, L, L] mask: True where query t may attend key s (s <= t, s valid)."""
    L = valid.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=valid.device).tril()
    mask = causal[None] & valid[:, None, :]
    mask = mask | torch.eye(L, dtype=torch.bool, device=valid.device)[None]
    return mask[:, None]


_PAD_LOGIT = -1e9  # added to a padding key's logit (fp16: half its most negative finite value)


def key_padding_features(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [B, H, L, d] -> [B, H, L, d'] with d' the next multiple of 8 above d (the fused
    kernels want equal, 8-aligned head sizes): the added query column is 1, the added key column
    0 at valid positions and ``_PAD_LOGIT`` at padding, the rest zeros. ``q' . k' = q . k`` for
    a real key and ``q . k + _PAD_LOGIT`` for padding. Call SDPA with ``scale=1/sqrt(d)`` and
    keep the first d output columns."""
    B, H, L, d = q.shape
    extra = 8 - d % 8  # at least one column
    qx = q.new_zeros(B, H, L, extra)
    qx[..., 0] = 1.0
    kx = k.new_zeros(B, H, L, extra)
    kx[..., 0] = (~valid).to(k.dtype)[:, None, :] * max(_PAD_LOGIT, torch.finfo(k.dtype).min / 2)
    return torch.cat([q, qx], -1), torch.cat([k, kx], -1), F.pad(v, (0, extra))


def reference_attention(q, k, v, valid=None, dropout_p: float = 0.0, training: bool = False):
    """Plain softmax(QK^T/sqrt(d) + mask) V with an explicit [B, H, L, L] matrix."""
    L = q.shape[-2]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if valid is None:
        mask = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()[None, None]
    else:
        mask = causal_padding_mask(valid)
    scores = scores.masked_fill(~mask, float("-inf"))
    attn = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p > 0 and training:
        attn = F.dropout(attn, dropout_p)
    return attn @ v


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int = 1, dropout: float = 0.0,
                 explicit: bool = False, rotary: bool = False, output_gate: bool = False,
                 output_norm: bool = False, null_kv: int = 0):
        super().__init__()
        if null_kv < 0:
            raise ValueError(f"null_kv must be >= 0, got {null_kv}")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.h, self.dh = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.gate = nn.Linear(d_model, d_model) if output_gate else None  # HSTU's U (W_u)
        self.output_norm = output_norm
        self.dropout = dropout
        self.explicit = explicit
        self.rotary = rotary
        self.null_kv = null_kv
        if null_kv:  # initialised with the model's other matrices (SequentialRecommender.init_weights)
            self.null_k = nn.Parameter(torch.randn(n_heads, null_kv, self.dh) * 0.02)
            self.null_v = nn.Parameter(torch.randn(n_heads, null_kv, self.dh) * 0.02)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, L, D] -> the history's q, k, v [B, H, L, d_h] (rotary applied to q and k)."""
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)
        if self.rotary:
            cos, sin = rotary_tables(L, self.dh, x.device)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k, v

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.project(x)
        p = self.dropout if self.training else 0.0
        n = self.null_kv
        if n:  # n learned pairs in front; their zero queries' outputs are dropped below
            q = torch.cat([q.new_zeros(B, self.h, n, self.dh), q], 2)
            k = torch.cat([self.null_k.to(k.dtype).expand(B, -1, -1, -1), k], 2)
            v = torch.cat([self.null_v.to(v.dtype).expand(B, -1, -1, -1), v], 2)
            if valid is not None:
                valid = torch.cat([valid.new_ones(B, n), valid], 1)
        if self.explicit:
            y = reference_attention(q, k, v, valid, p, self.training)
        elif valid is None:  # the caller found no padding (SASRec.encode checks once per batch)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:  # padding keys masked through one more feature, not an [B, 1, L, L] mask
            qp, kp, vp = key_padding_features(q, k, v, valid)
            y = F.scaled_dot_product_attention(qp, kp, vp, dropout_p=p, is_causal=True,
                                               scale=1.0 / math.sqrt(self.dh))[..., : self.dh]
        y = y[:, :, n:]
        return self.out(gated_output(y.transpose(1, 2).reshape(B, L, D), x, self.gate, self.output_norm))

    def reset_gate(self) -> None:
        """Gate bias at GATE_BIAS (the gate starts near the identity); call after a model-wide init."""
        if self.gate is not None:
            nn.init.constant_(self.gate.bias, GATE_BIAS)
