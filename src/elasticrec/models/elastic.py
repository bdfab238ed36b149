"""ELASTIC: linear dispatcher attention + interest memory retrieval (see shared ELASTIC.md).

Embedding + learned positions + N pre-LN blocks (chunk-causal dispatcher attention, FFN) +
final LayerNorm; scores by dot product with the shared item embedding table. Blocks listed in
``elastic.memory_layers`` add a product-key interest memory, read by their packed dispatchers
(``memory_site="dispatchers"``, ELASTIC.md), by every position after the FFN (``"tokens"``), or
used to choose each chunk's dispatcher queries from the previous chunk (``"queries"``).
Cost is linear in L: O(L*k*d + L*C*d) per layer, no L x L tensor.

Streaming (serving): with ``elastic.chunk_align="start"`` and a streaming-compatible position
encoding (``none``, ``learned-start``, ``chunk``; not ``learned``, which counts from the end), a
user's whole state is constant-size (:class:`ElasticState`) and each new event costs
O(k*d + C*d) per layer, independent of the history length::

    state = model.init_state(batch_size=1)
    state = model.prefill(state, history)        # [B, T] left-padded; one chunked pass
    state = model.update(state, next_items)      # [B], one event per row (0 = no event)
    scores, ids = model.recommend_from(state, k=10, exclude=seen_mask)

``model.state_hidden(state)`` equals ``model.encode(full_history)[:, -1]`` (eval mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import nn

from elasticrec.config import CHOICES, ModelConfig
from elasticrec.models.base import SequentialRecommender, register_model
from elasticrec.models.layers.common import (ChunkPositions, FeedForward, LearnedPositions,
                                             StartPositions, first_valid_index, residual_at)
from elasticrec.models.layers.dispatcher import DispatcherAttention, StreamState
from elasticrec.models.layers.pkm import ProductKeyMemory


class ElasticBlock(nn.Module):
    """Pre-LN block: dispatcher attention, FFN and, with ``memory_site="tokens"``, a per-position
    interest-memory read (``"dispatchers"`` puts the memory inside the attention, on the packed
    dispatchers; ``"queries"`` lets it choose the dispatchers' aggregation queries)."""

    def __init__(self, cfg: ModelConfig, memory: nn.Module | None):
        super().__init__()
        d, e = cfg.d_model, cfg.elastic
        site = e.memory_site if memory is not None else None
        on_tokens = site == "tokens"
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = DispatcherAttention(d, cfg.n_heads, e.n_dispatchers, e.chunk_size, cfg.dropout,
                                        use_local=e.use_local,
                                        memory=memory if site == "dispatchers" else None,
                                        chunk_align=e.chunk_align,
                                        dispatcher_bias=e.dispatcher_bias,
                                        query_memory=memory if site == "queries" else None,
                                        local_position_bias=e.local_position_bias,
                                        output_gate=e.output_gate, output_norm=e.output_norm,
                                        local_lookback=e.local_lookback,
                                        distribute=e.distribute)
        self.ffn = FeedForward(d, cfg.ffn_dim or d, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)
        self.memory = memory if on_tokens else None
        self.norm3 = nn.LayerNorm(d) if on_tokens else None

    def forward(self, x, valid, grid=None):
        """``grid``: the attention's :meth:`~DispatcherAttention.grid` of ``valid``, shared by
        the blocks of one forward (None: the attention builds it)."""
        x = x + self.drop(self.attn(self.norm1(x), valid, grid))
        return self.tail(x, valid)

    def tail(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """FFN residual, then the token memory (read at valid positions only; None = all)."""
        x = x + self.ffn(self.norm2(x))
        if self.memory is None:
            return x
        return residual_at(x, valid, lambda h: self.drop(self.memory(self.norm3(h))))


# position encodings whose value for an item never changes when later items arrive
STREAMING_POS_ENCODINGS = ("none", "learned-start", "chunk")


@dataclass(eq=False)
class ElasticState:
    """Constant-size streaming state of B users (see :meth:`Elastic.init_state`).

    ``count`` [B]: events seen; ``layers``: one :class:`StreamState` per block; ``hidden`` [B, D]:
    the final hidden state after the last event (the next-item query).
    """

    count: torch.Tensor
    layers: list[StreamState]
    hidden: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.count.shape[0]

    def _map(self, fn) -> "ElasticState":
        def tree(t):
            if t is None:
                return None
            if isinstance(t, tuple):
                return type(t)(*(tree(u) for u in t))
            return fn(t)

        return ElasticState(fn(self.count), [tree(ls) for ls in self.layers], fn(self.hidden))

    def tensors(self) -> list[torch.Tensor]:
        out = []

        def walk(t):
            if isinstance(t, tuple):
                for u in t:
                    walk(u)
            elif isinstance(t, list):
                for u in t:
                    walk(u)
            elif t is not None:
                out.append(t)

        walk([getattr(self, f.name) for f in fields(self)])
        return out

    def select(self, rows) -> "ElasticState":
        """The state of a subset of rows (index tensor, list or bool mask), as a new state."""
        if isinstance(rows, torch.Tensor) and rows.dtype == torch.bool:
            rows = rows.nonzero().squeeze(1)
        return self._map(lambda t: t[rows])

    def to(self, device) -> "ElasticState":
        return self._map(lambda t: t.to(device))

    @staticmethod
    def cat(states: list["ElasticState"]) -> "ElasticState":
        """Stack the rows of several states (e.g. users served together) into one batch."""
        if not states:
            raise ValueError("ElasticState.cat needs at least one state")
        flat = [s.tensors() for s in states]
        it = iter([torch.cat(ts, dim=0) for ts in zip(*flat)])
        return states[0]._map(lambda _t: next(it))

    def scatter(self, rows: torch.Tensor, sub: "ElasticState") -> "ElasticState":
        """A copy of this state with ``rows`` replaced by the rows of ``sub`` (in order)."""
        it = iter(sub.tensors())

        def put(t):
            t = t.clone()
            t[rows] = next(it)
            return t

        return self._map(put)


@register_model("elastic")
class Elastic(SequentialRecommender):
    def __init__(self, cfg: ModelConfig, n_items: int):
        super().__init__(cfg, n_items)
        d, e = cfg.d_model, cfg.elastic
        for name in ("chunk_align", "memory_site"):   # also for configs built in code
            allowed = CHOICES[f"model.elastic.{name}"]
            if getattr(e, name) not in allowed:
                raise ValueError(f"elastic.{name} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(e, name)!r}")
        self._build_input(("learned", "learned-start", "chunk", "none"))
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
        """Interest memories by block index (in the block's attention, or the block itself)."""
        out = {}
        for i, b in enumerate(self.blocks):
            found = [m for m in (b.memory, b.attn.memory, b.attn.query_memory) if m is not None]
            if found:
                out[str(i)] = found[0]
        return out

    def encode(self, items: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        return self.run_blocks(*self.embed(items))

    def run_blocks(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The blocks and the final norm on embedded inputs x [B, L, D] with padding mask valid
        [B, L] (what :meth:`encode` runs after :meth:`embed`)."""
        grid = self.blocks[0].attn.grid(valid)   # the padding masks of every block, built once
        for blk in self.blocks:
            x = blk(x, valid, grid) * valid[..., None]
        return self.norm(x)

    def _make_positions(self) -> nn.Module | None:
        cfg, e = self.cfg, self.cfg.elastic
        if cfg.pos_encoding == "learned-start":
            return StartPositions(cfg.max_len, cfg.d_model)
        if cfg.pos_encoding == "chunk":
            return ChunkPositions(e.chunk_size, cfg.d_model, align=e.chunk_align)
        return super()._make_positions()  # learned (counted from the end) or none

    def _add_positions(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if isinstance(self.pos, LearnedPositions):
            return self.pos(x)
        return self.pos(x, valid)

    # ------------------------------------------------------------------ streaming
    @property
    def supports_streaming(self) -> bool:
        """True when per-event updates are exact: chunk_align start + a start-invariant
        position encoding (none, learned-start, chunk)."""
        return (self.cfg.elastic.chunk_align == "start"
                and self.cfg.pos_encoding in STREAMING_POS_ENCODINGS)

    def _check_streaming(self) -> None:
        if not self.supports_streaming:
            raise ValueError(
                "this ELASTIC model cannot stream: it has elastic.chunk_align="
                f"{self.cfg.elastic.chunk_align!r} and pos_encoding={self.cfg.pos_encoding!r}; "
                "streaming needs model.elastic.chunk_align=start and model.pos_encoding one of "
                f"{', '.join(STREAMING_POS_ENCODINGS)} (set them before training)")
        if self.training:
            raise RuntimeError("streaming is eval-only (no dropout): call model.eval() first")

    def _param_dtype(self) -> torch.dtype:
        return self.item_emb.weight.dtype

    @torch.inference_mode()
    def init_state(self, batch_size: int = 1, device=None) -> ElasticState:
        """Empty streaming state of ``batch_size`` users (on ``device``, default: the model's)."""
        self._check_streaming()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = self.item_emb.weight.device if device is None else torch.device(device)
        dt = self._param_dtype()
        layers = [b.attn.stream_init(batch_size, device, dt) for b in self.blocks]
        # the hidden state of an empty history is what encode() gives at a padding position
        hidden = self.norm(torch.zeros(batch_size, self.cfg.d_model, dtype=dt, device=device))
        return ElasticState(torch.zeros(batch_size, dtype=torch.long, device=device), layers, hidden)

    def _check_items(self, items: torch.Tensor, dims: int, what: str) -> None:
        if not isinstance(items, torch.Tensor) or items.dim() != dims or items.dtype.is_floating_point:
            raise ValueError(f"{what}: expected an integer tensor with {dims} dims, got "
                             f"{getattr(items, 'dtype', type(items))} "
                             f"{tuple(getattr(items, 'shape', ()))}")
        if items.numel() and (int(items.min()) < 0 or int(items.max()) > self.n_items):
            raise ValueError(f"{what}: item ids must be in [0, {self.n_items}] (0 = no item), got "
                             f"range [{int(items.min())}, {int(items.max())}]")

    @torch.inference_mode()
    def update(self, state: ElasticState, items: torch.Tensor,
               mask: torch.Tensor | None = None) -> ElasticState:
        """Append one event per row: items [B] (0 = no event for that row); ``mask`` [B] bool
        (optional) restricts the update to some rows. Returns a new state (the input one is left
        unchanged). O(k*d + C*d) per layer and row, whatever the history length."""
        self._check_streaming()
        self._check_items(items, 1, "update(items)")
        B = state.batch_size
        if items.shape[0] != B:
            raise ValueError(f"update(items): {items.shape[0]} items for a state of {B} rows")
        items = items.to(state.count.device)
        rows = items > 0
        if mask is not None:
            if mask.shape != (B,):
                raise ValueError(f"update(mask): expected shape ({B},), got {tuple(mask.shape)}")
            rows = rows & mask.to(device=rows.device, dtype=torch.bool)
        if not bool(rows.all()):
            idx = rows.nonzero().squeeze(1)
            if idx.numel() == 0:
                return state
            return state.scatter(idx, self._step(state.select(idx), items[idx]))
        return self._step(state, items)

    def _step(self, state: ElasticState, items: torch.Tensor) -> ElasticState:
        count = state.count
        x = self.item_emb(items) * math.sqrt(self.cfg.d_model)
        if self.pos is not None:
            x = x + self.pos.at(count)
        layers = []
        for blk, ls in zip(self.blocks, state.layers):
            y, ls = blk.attn.stream_step(ls, blk.norm1(x), count)
            x = blk.tail(x + y)
            layers.append(ls)
        return ElasticState(count + 1, layers, self.norm(x))

    @torch.inference_mode()
    def prefill(self, state: ElasticState, items: torch.Tensor) -> ElasticState:
        """Append whole histories items [B, T] (left-padded: each row's items contiguous at its
        end). Rows still empty are packed in ONE chunked forward pass and only the constant-size
        state is kept; rows that already have events are fed event by event. Same result as
        calling :meth:`update` for every column."""
        self._check_streaming()
        self._check_items(items, 2, "prefill(items)")
        B, T = items.shape
        if B != state.batch_size:
            raise ValueError(f"prefill(items): {B} rows for a state of {state.batch_size} rows")
        if T == 0:
            return state
        items = items.to(state.count.device)
        valid = items > 0
        first = first_valid_index(valid)
        left = torch.arange(T, device=items.device)[None, :] >= first[:, None]
        if not torch.equal(valid, left):
            bad = int((valid != left).any(dim=1).nonzero()[0])
            raise ValueError(f"prefill(items): row {bad} is not left-padded (a 0 = padding after "
                             "its first item); put each history's items at the end of the row")
        fresh = state.count == 0
        if not bool(fresh.all()):
            old = (~fresh).nonzero().squeeze(1)
            sub = state.select(old)
            for t in range(T):
                sub = self.update(sub, items[old, t])
            state = state.scatter(old, sub)
            if not bool(fresh.any()):
                return state
            new = fresh.nonzero().squeeze(1)
            return state.scatter(new, self.prefill(state.select(new), items[new]))
        x, _ = self.embed(items)  # eval mode: no dropout
        layers = []
        for blk in self.blocks:
            y, ls = blk.attn.stream_prefill(blk.norm1(x), valid)
            x = blk.tail(x + y, valid) * valid[..., None]
            layers.append(ls)
        return ElasticState(valid.sum(dim=1), layers, self.norm(x[:, -1]))

    def state_hidden(self, state: ElasticState) -> torch.Tensor:
        """Hidden state [B, D] after each row's last event (== encode(history)[:, -1])."""
        return state.hidden

    @torch.inference_mode()
    def recommend_from(self, state: ElasticState, k: int, exclude=None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k items for the next event: (scores [B, k], item ids [B, k]), best first.

        Item 0 (padding) is never returned. ``exclude``: None, a bool mask [B, n_items + 1] (True
        = never recommend), or a list of B collections of item ids."""
        B = state.batch_size
        if not 1 <= k <= self.n_items:
            raise ValueError(f"recommend_from: k must be in [1, n_items={self.n_items}], got {k}")
        scores = self.score_all(state.hidden).float()                         # [B, n_items + 1]
        banned = torch.zeros_like(scores, dtype=torch.bool)
        banned[:, 0] = True
        if exclude is not None:
            if isinstance(exclude, torch.Tensor):
                if exclude.shape != scores.shape or exclude.dtype != torch.bool:
                    raise ValueError(f"recommend_from(exclude): expected a bool mask of shape "
                                     f"{tuple(scores.shape)}, got {exclude.dtype} "
                                     f"{tuple(exclude.shape)}")
                banned |= exclude.to(banned.device)
            else:
                if len(exclude) != B:
                    raise ValueError(f"recommend_from(exclude): {len(exclude)} id sets for {B} rows")
                for b, ids in enumerate(exclude):
                    ids = torch.as_tensor(list(ids), dtype=torch.long)
                    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > self.n_items):
                        raise ValueError(f"recommend_from(exclude): row {b} has ids outside "
                                         f"[0, {self.n_items}]")
                    banned[b, ids.to(banned.device)] = True
        scores = scores.masked_fill(banned, float("-inf"))[:, 1:]   # drop the padding column
        top, ids = scores.topk(k, dim=1)
        return top, ids + 1   # (if fewer than k items are allowed, the rest come with -inf)

    @staticmethod
    def state_nbytes(state: ElasticState) -> int:
        """Bytes held by the state (all rows; divide by ``state.batch_size`` for one user)."""
        return sum(t.numel() * t.element_size() for t in state.tensors())

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
