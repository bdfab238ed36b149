"""SASRec (Kang & McAuley, 2018): causal Transformer over the item sequence.

Attention runs through PyTorch's fused ``scaled_dot_product_attention``; ``explicit_attention``
switches to the L x L matrix form used by RecBole / the original code (efficiency baseline).
``model.sasrec.output_gate`` / ``output_norm`` [ours] add HSTU's output gate and norm, the same
options ELASTIC has, so a gain from them can be told apart from a gain of ELASTIC's attention.
``model.sasrec.null_kv`` [ours] gives every layer that many learned key/value pairs every position
attends to (an attention sink), as ELASTIC's empty-history dispatchers are for a short history.
"""

from __future__ import annotations

import torch
from torch import nn

from elasticrec.config import ModelConfig
from elasticrec.models.base import SequentialRecommender, register_model
from elasticrec.models.layers.attention import CausalSelfAttention
from elasticrec.models.layers.common import FeedForward


class TransformerBlock(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, dropout: float, explicit: bool, rotary: bool,
                 output_gate: bool = False, output_norm: bool = False, null_kv: int = 0):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads, dropout, explicit=explicit, rotary=rotary,
                                        output_gate=output_gate, output_norm=output_norm,
                                        null_kv=null_kv)
        self.ffn = FeedForward(d, ffn, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, valid):
        x = x + self.drop(self.attn(self.norm1(x), valid))
        return x + self.ffn(self.norm2(x))


@register_model("sasrec")
class SASRec(SequentialRecommender):
    explicit_attention = False

    def __init__(self, cfg: ModelConfig, n_items: int):
        super().__init__(cfg, n_items)
        d = cfg.d_model
        self._build_input(("learned", "none", "rotary"))
        ffn = cfg.ffn_dim or d
        self.blocks = nn.ModuleList(
            TransformerBlock(d, cfg.n_heads, ffn, cfg.dropout, self.explicit_attention,
                             cfg.pos_encoding == "rotary", cfg.sasrec.output_gate, cfg.sasrec.output_norm,
                             cfg.sasrec.null_kv)
            for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(d)
        self.init_weights()
        for blk in self.blocks:
            blk.attn.reset_gate()

    def encode(self, items: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        x, valid = self.embed(items)
        attn_valid = None if bool(valid.all()) else valid
        for blk in self.blocks:
            x = blk(x, attn_valid) * valid[..., None]
        return self.norm(x)


@register_model("sasrec-explicit")
class SASRecExplicit(SASRec):
    """SASRec with the explicit L x L attention matrix (RecBole / original-code style)."""

    explicit_attention = True
