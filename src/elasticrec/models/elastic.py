"""ELASTIC: linear dispatcher attention + interest memory retrieval (see shared ELASTIC.md).

Embedding + learned positions + N pre-LN blocks (chunk-causal dispatcher attention, FFN) +
final LayerNorm; scores by dot product with the shared item embedding table. Blocks listed in
``elastic.memory_layers`` add a product-key interest memory to their packed dispatchers.
Cost is linear in L: O(L*k*d + L*C*d) per layer, no L x L tensor.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from elasticrec.config import ModelConfig
from elasticrec.models.base import SequentialRecommender, register_model
from elasticrec.models.layers.common import FeedForward, LearnedPositions
from elasticrec.models.layers.dispatcher import DispatcherAttention
from elasticrec.models.layers.pkm import ProductKeyMemory


class ElasticBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, memory: nn.Module | None):
        super().__init__()
        d, e = cfg.d_model, cfg.elastic
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = DispatcherAttention(d, cfg.n_heads, e.n_dispatchers, e.chunk_size, cfg.dropout,
                                        use_local=e.use_local, memory=memory)
        self.ffn = FeedForward(d, cfg.ffn_dim or d, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, valid):
        x = x + self.drop(self.attn(self.norm1(x), valid))
        return x + self.ffn(self.norm2(x))


@register_model("elastic")
class Elastic(SequentialRecommender):
    def __init__(self, cfg: ModelConfig, n_items: int):
        super().__init__(cfg, n_items)
        d, e = cfg.d_model, cfg.elastic
        if cfg.pos_encoding == "rotary":
            raise ValueError("elastic supports pos_encoding learned or none (rotary is SASRec-only)")
        self.pos = LearnedPositions(cfg.max_len, d) if cfg.pos_encoding == "learned" else None
        self.emb_drop = nn.Dropout(cfg.dropout if cfg.emb_dropout is None else cfg.emb_dropout)
        mem_layers = {i % cfg.n_layers for i in e.memory_layers} if e.memory else set()
        self.blocks = nn.ModuleList(
            ElasticBlock(cfg, self._make_memory(cfg) if i in mem_layers else None)
            for i in range(cfg.n_layers))
        self.norm = nn.LayerNorm(d)
        self.init_weights()  # generic init, then the layers' own for what it must not touch
        for blk in self.blocks:
            blk.attn.reset_dispatchers()
        for m in self.memories.values():
            m.reset_parameters()
            m.track_usage = True  # slot usage is reported per epoch in metrics.jsonl

    @staticmethod
    def _make_memory(cfg: ModelConfig) -> ProductKeyMemory:
        e = cfg.elastic
        return ProductKeyMemory(cfg.d_model, cfg.d_model, n_keys=e.memory_n_keys, heads=e.memory_heads,
                                topk=e.memory_topk, key_dim=e.memory_key_dim,
                                query_norm=e.memory_query_norm)

    @property
    def memories(self) -> dict[str, ProductKeyMemory]:
        """Interest memories by block index (each lives inside its block's attention)."""
        return {str(i): b.attn.memory for i, b in enumerate(self.blocks) if b.attn.memory is not None}

    def encode(self, items: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        valid = items > 0
        x = self.item_emb(items) * math.sqrt(self.cfg.d_model)
        if self.pos is not None:
            x = self.pos(x)
        x = self.emb_drop(x) * valid[..., None]
        for blk in self.blocks:
            x = blk(x, valid) * valid[..., None]
        return self.norm(x)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        vlr = self.cfg.elastic.memory_value_lr
        values = {id(p) for m in self.memories.values() for p in m.value_parameters()}
        groups = super().param_groups(lr, weight_decay)
        if vlr is None or not values:
            return groups
        for g in groups:
            g["params"] = [p for p in g["params"] if id(p) not in values]
        vals = [p for m in self.memories.values() for p in m.value_parameters()]
        return [g for g in groups if g["params"]] + [{"params": vals, "lr": vlr, "weight_decay": 0.0}]

    def set_usage_tracking(self, on: bool) -> None:
        for m in self.memories.values():
            m.track_usage = on

    def extra_metrics(self, reset: bool = True) -> dict:
        out = {}
        for name, m in self.memories.items():
            for k, v in m.usage_stats(reset=reset).items():
                out[f"memory{name}/{k}"] = v
        return out
