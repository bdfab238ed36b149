"""Common base of every sequential recommender and the model registry.

A model maps a left-padded item-id sequence [B, L] (0 = padding) to hidden states [B, L, D];
position t's state predicts the item at t+1 by a dot product with the (shared) item embedding
table. Training losses and evaluation only use :meth:`encode` and :meth:`item_embeddings`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from elasticrec.config import ModelConfig
from elasticrec.models.layers.common import LearnedPositions

_REGISTRY: dict[str, Callable[..., "SequentialRecommender"]] = {}


def register_model(name: str):
    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = cls
        cls.model_name = name
        return cls

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def build_model(cfg: ModelConfig, n_items: int) -> "SequentialRecommender":
    if cfg.name not in _REGISTRY:
        raise ValueError(f"unknown model {cfg.name!r}; choose one of {', '.join(list_models())}")
    return _REGISTRY[cfg.name](cfg, n_items)


class SequentialRecommender(nn.Module):
    model_name = "base"
    uses_timestamps = False  # True: trainer/evaluator pass per-item timestamps to encode()

    def __init__(self, cfg: ModelConfig, n_items: int):
        super().__init__()
        self.cfg = cfg
        self.n_items = n_items
        self.max_len = cfg.max_len
        self.item_emb = nn.Embedding(n_items + 1, cfg.d_model, padding_idx=0)

    # ------------------------------------------------------------------ interface
    def encode(self, items: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, items: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """Same as :meth:`encode` (so DistributedDataParallel can wrap any model)."""
        return self.encode(items, timestamps)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_emb.weight

    def _scoring_vectors(self, t: torch.Tensor) -> torch.Tensor:
        """Rows of ``t`` as they enter a score: unit length when ``model.score`` is cosine."""
        return F.normalize(t, dim=-1, eps=1e-6) if self.cfg.score == "cosine" else t

    def output_embeddings(self) -> torch.Tensor:
        """Item table that hidden states are scored against: the (tied) input table, unit-length
        rows when ``model.score`` is cosine."""
        return self._scoring_vectors(self.item_embeddings())

    def output_queries(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states as scoring queries: unit length when ``model.score`` is cosine."""
        return self._scoring_vectors(h)

    def score_all(self, h: torch.Tensor) -> torch.Tensor:
        """Scores of every item (column 0 = padding) for hidden states h [..., D]."""
        return self.output_queries(h) @ self.output_embeddings().t()

    @property
    def max_input_len(self) -> int | None:
        """Longest input this model reads correctly: ``max_len`` with learned positions counted
        from the end (there are max_len of them), None (any length) otherwise."""
        return self.max_len if isinstance(getattr(self, "pos", None), LearnedPositions) else None

    def last_hidden(self, items: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden state of the last position (the next-item query) for left-padded input."""
        return self.encode(items, timestamps)[:, -1]

    # ------------------------------------------------------------------ input embedding
    def _build_input(self, pos_encodings: tuple[str, ...] = ("learned", "none")) -> None:
        """Positional encoding (``self.pos``) and embedding dropout, shared by every model;
        ``pos_encodings`` are the ``model.pos_encoding`` values the model supports."""
        cfg = self.cfg
        if cfg.pos_encoding not in pos_encodings:
            raise ValueError(f"{self.model_name} supports pos_encoding {', '.join(pos_encodings)}, "
                             f"not {cfg.pos_encoding!r}")
        self.pos = self._make_positions()
        self.emb_drop = nn.Dropout(cfg.dropout if cfg.emb_dropout is None else cfg.emb_dropout)

    def _make_positions(self) -> nn.Module | None:
        """Learned absolute positions counted from the end of the window, or none."""
        cfg = self.cfg
        return LearnedPositions(cfg.max_len, cfg.d_model) if cfg.pos_encoding == "learned" else None

    def _add_positions(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.pos(x)

    def embed(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled item embeddings + positions + dropout, zero at padding; and the valid mask."""
        valid = items > 0
        x = self.item_emb(items) * math.sqrt(self.cfg.d_model)
        if self.pos is not None:
            x = self._add_positions(x, valid)
        return self.emb_drop(x) * valid[..., None], valid

    # ------------------------------------------------------------------ helpers
    def init_weights(self) -> None:
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() >= 2 and "norm" not in name:
                nn.init.trunc_normal_(p, std=std, a=-2 * std, b=2 * std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups: no decay on biases, norms and embeddings' padding."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.dim() < 2 or "norm" in name else decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay, "lr": lr}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, "lr": lr})
        return groups

    def extra_metrics(self, reset: bool = True) -> dict:
        """Model-specific diagnostics logged each epoch (e.g. memory slot usage)."""
        return {}
