"""LinRec-style baseline: SASRec with causal kernelized linear attention instead of softmax.

Embedding * sqrt(d) + learned positions, N pre-LN blocks (causal linear attention with the
elu+1 feature map, FFN), final LayerNorm; dot-product scores against the shared item table.
Cost per layer is O(L d^2 + L C d) (C = ``model.linrec.chunk_size``), no L x L tensor; see
``models.layers.linear_attention``.
"""

from __future__ import annotations

import torch
from torch import nn

from elasticrec.config import ModelConfig
from elasticrec.models.base import SequentialRecommender, register_model
from elasticrec.models.layers.common import FeedForward
from elasticrec.models.layers.linear_attention import CausalLinearAttention


class LinRecBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, explicit: bool = False):
        super().__init__()
        d = cfg.d_model
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = CausalLinearAttention(d, cfg.n_heads, cfg.linrec.chunk_size, explicit)
        self.ffn = FeedForward(d, cfg.ffn_dim or d, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, valid):
        x = x + self.drop(self.attn(self.norm1(x), valid))
        return x + self.ffn(self.norm2(x))


@register_model("linrec")
class LinRec(SequentialRecommender):
    def __init__(self, cfg: ModelConfig, n_items: int):
        super().__init__(cfg, n_items)
        if cfg.linrec.chunk_size < 1:
            raise ValueError(f"model.linrec.chunk_size must be >= 1, got {cfg.linrec.chunk_size}")
        self._build_input()
        self.blocks = nn.ModuleList(LinRecBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.init_weights()

    def encode(self, items: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        x, valid = self.embed(items)
        for blk in self.blocks:
            x = blk(x, valid) * valid[..., None]
        return self.norm(x)
