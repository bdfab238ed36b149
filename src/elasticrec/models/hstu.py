"""HSTU (Zhai et al. 2024, Meta's generative recommender encoder), as a baseline in our harness.

Embedding * sqrt(d) + learned positions, dropout, then N HSTU layers
``x = x + HSTUAttention(LayerNorm(x))`` (fused UVQK with SiLU, pointwise SiLU attention with a
relative position/time bias, gated by U; no softmax and no feed-forward network, as in HSTU), then
a final LayerNorm (as our other models; HSTU L2-normalises instead, for its sampled softmax) and
dot-product scores against the shared item table, trained with the same losses as SASRec.

Timestamps: ``encode(items, timestamps)`` takes int seconds [B, L] aligned with ``items``; the
trainer and evaluator pass them when the dataset has them (``uses_timestamps``). Without
timestamps (dataset without a time column, or ``model.hstu.use_time_bias=false``) the time bias is
simply left out and only the relative-position bias remains.
"""

from __future__ import annotations

import torch
from torch import nn

from elasticrec.config import ModelConfig
from elasticrec.models.base import SequentialRecommender, register_model
from elasticrec.models.layers.hstu_attention import (HSTUAttention, distance_buckets,
                                                     relative_time_buckets)


class HSTUBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.hstu
        self.norm = nn.LayerNorm(cfg.d_model)
        self.attn = HSTUAttention(
            cfg.d_model, cfg.n_heads, h.attention_dim, h.linear_dim, cfg.dropout, h.attn_dropout,
            h.num_buckets, h.time_buckets if h.use_time_bias else 0, h.time_log_scale,
            cfg.max_len, h.attn_norm)

    def forward(self, x, valid, pos_idx, time_idx):
        return x + self.attn(self.norm(x), valid, pos_idx, time_idx)


@register_model("hstu")
class HSTU(SequentialRecommender):
    uses_timestamps = True

    def __init__(self, cfg: ModelConfig, n_items: int):
        super().__init__(cfg, n_items)
        self.uses_timestamps = cfg.hstu.use_time_bias
        self._build_input()
        self.blocks = nn.ModuleList(HSTUBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.init_weights()

    @property
    def max_input_len(self) -> int:
        """max_len: the relative-position buckets and the attention's 1/max_len scale are sized for it."""
        return self.max_len

    def encode(self, items: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        if timestamps is not None and timestamps.shape != items.shape:
            raise ValueError(f"timestamps shape {tuple(timestamps.shape)} != items shape {tuple(items.shape)}")
        x, valid = self.embed(items)
        h = self.cfg.hstu
        pos_idx = distance_buckets(items.shape[1], h.num_buckets, self.max_len, items.device)
        time_idx = None
        if timestamps is not None and self.uses_timestamps:
            time_idx = relative_time_buckets(timestamps.to(items.device), h.time_buckets, h.time_log_scale)
        for blk in self.blocks:
            x = blk(x, valid, pos_idx, time_idx) * valid[..., None]
        return self.norm(x)
