"""Chunk-causal Linear Dispatcher Attention (LDA), the attention layer of ELASTIC.

See ``/work/shared/ELASTIC.md`` for the definition. Summary, per head (head dim ``d_h``):

**Aggregate** (dispatchers read the history). ``k`` learned dispatcher queries ``Q_P`` (one set
per layer, used directly as the aggregation queries: a further ``Q_P Wq1`` would be redundant).
Dispatcher ``j``'s state over a set ``S`` of positions is
``P_j = sum_{s in S} softmax_s(q_j . k1_s / sqrt(d_h)) v1_s`` with ``k1, v1 = X Wk1, X Wv1``.

* *Chunk-causal*: positions are grouped in chunks of ``C``; chunk ``c`` reads the dispatchers
  packed from all valid positions of chunks ``< c`` (exclusive by chunk). Padding is never read.
* *Chunk alignment*: sequences are LEFT-padded (the last item is at position ``L-1``), and chunk
  boundaries are counted from the END: the sequence is padded on the left to a multiple of ``C``
  internally, so position ``t`` is in chunk ``(t + (-L) % C) // C``. Extra left padding therefore
  never moves a boundary relative to the real items, and a sequence's outputs do not depend on
  how much padding it carries.
  With ``chunk_align="start"`` the grid instead starts at each row's FIRST valid item: position
  ``t`` of row ``b`` is in chunk ``(t - first_b) // C``. Implemented by shifting every row's items
  to the front (one gather), padding the end to a multiple of ``C``, running the same chunked
  computation and shifting back. A new event then never moves an existing boundary, which is what
  constant-cost streaming needs (see *Streaming* below). Padding never affects outputs either way.
* *Empty history*: every dispatcher also owns a learned pseudo-entry ``(logit b_j, value e_j)``
  (``empty_logit`` [H, k], ``empty_value`` [H, k, d_h]) that is ALWAYS part of the softmax, as
  if it were one more key/value pair. So the state is never empty, chunk 0 (or any chunk with no
  valid earlier items) gets exactly ``e_j``, and as history grows its weight fades smoothly.
* *One pass*: per chunk we compute the partial log-sum-exp state ``(max m, numerator,
  denominator)`` of every dispatcher (:func:`chunk_partials`), then an exclusive prefix-combine
  over chunks (:func:`exclusive_chunk_states`: the empty entry is prepended and an inclusive
  scan runs as one lower-triangular weight matrix per block of up to 64 chunks, blocks joined by
  the associative :func:`combine_states`, so a constant number of ops up to 4,096 chunks), then
  :func:`finalize_state` divides. All of it in fp32 whatever the input
  dtype (bf16 / fp16 / fp32; float64 stays float64), cast back at the end. The running max is a
  detached stabiliser, so the result is an exact softmax at any input scale.

The packed ``P`` [B, L/C, k, D] (heads merged) goes through an output projection and, if a memory
module is given, ``P <- P + memory(P)`` (any module mapping [..., D] -> [..., D]).

**Distribute** (each position reads the dispatchers). Position ``t`` attends with ONE joint softmax
over the ``k`` dispatchers of its chunk (keys ``P Wk2``, values ``P Wv2``) and, if ``use_local``,
the valid positions ``s <= t`` of its own chunk (keys ``X Wk2'``, values ``X Wv2'``; separate
projections by default, ``shared_local_kv=True`` reuses ``Wk2, Wv2``). The query projection
``Wq2`` is shared by both parts. Output projection ``Wo``. Padding query positions output zeros.

*Dispatcher bias* (``dispatcher_bias``, [ours]): ``"none"`` uses the plain logits. ``"count"``
adds ``log((N + 1) / k)`` to every dispatcher logit of a position whose earlier chunks hold ``N``
valid items (the ``+ 1`` is the empty-history entry), so the k dispatchers together weigh in the
joint softmax about as much as the ``N + 1`` entries they summarise would in full attention. A
short history (everything in the open chunk, ``N = 0``) then gives its 16 "empty history"
dispatchers the weight of one item instead of sixteen. ``"items"`` adds ``log(N / k)``: the
empty-history entry weighs nothing, so a position with no earlier chunk (``N = 0``) attends to its
own chunk only, as exact causal attention would (needs ``use_local``; the bias is then ``-1e4``,
which is an exact zero weight in fp32). Both are parameter-free and streaming-exact.

*Local lookback* (``local_lookback``, [ours]): position ``t`` also attends, in the same joint
softmax, to every valid position of the chunk before its own (exact keys/values, as its own
chunk's). Without it a position at the start of a chunk sees a single item exactly and the rest of
its history only through the dispatchers; with it every position sees at least its ``C`` most
recent items exactly (``C`` to ``2C - 1``: a sliding window at chunk granularity). The previous
chunk is then read twice, exactly and through the dispatchers (its items are still packed), which
keeps the aggregation and its streaming state unchanged. Cost ``O(L 2C d)`` for the local part;
streaming keeps the last closed chunk's local keys/values (``C`` more slots).

*Local position bias* (``local_position_bias``, [ours], after HSTU's relative attention bias):
a learned bias per head and distance ``t - s`` (0 .. C-1; 0 .. 2C-1 with the lookback) added to the logit of local key ``s``
for query ``t``; zero-initialised, so training starts from the plain layer. It gives the open
chunk a direct recency signal that does not go through the absolute position embeddings.

*Output gate* (``output_gate``, [ours], after HSTU's ``U``): the merged-head attention output is
multiplied element-wise by ``SiLU(x W_u + b_u)`` of the query position's own input before ``Wo``.
``b_u`` starts at 1.2785 (``SiLU = 1``), so with a small ``W_u`` the gate starts near the identity.
*Output norm* (``output_norm``, [ours], after HSTU's ``Norm(A V)``): the merged-head attention
output is layer-normalised (no affine, eps 1e-6) before the gate and ``Wo``.

*Memory-chosen queries* (``query_memory``, [ours]; ELASTIC.md's alternative IMR placement, "the
memory chooses each user's k dispatcher queries"): the items of chunk ``c`` are aggregated with
queries ``Q_c = Q_P + M(Q_P + s_{c-1})`` [k, D] instead of the fixed ``Q_P``, where ``s_{c-1}`` is
the mean layer input over the valid positions of chunk ``c - 1`` (zero for a first chunk or one
after padding only) and ``M`` the memory: each dispatcher asks the memory which interest to look
for, given the user's latest chunk. Chunk ``c``'s items reach only later chunks and ``Q_c`` depends
on chunk ``c - 1`` only, so causality holds; the scan is unchanged (each chunk's partial state uses
its own queries), so it stays exact and linear, and streaming keeps the open chunk's queries and
the running sum of its inputs (``O(k d + d)`` more per layer).

Cost ``O(L k d + L C d)`` time and ``O(L/C k d + L C)`` extra memory: no L x L tensor anywhere
(the scan's rescaling factors ``exp(m - M)`` are constants because the running max is detached,
so backward keeps only the scan's weights for it, ``O(L/C k 64)`` scalars, not ``d``-wide states).
The memory module reads only the dispatchers of chunks that hold at least one valid position
(those of padding-only chunks are never attended to). This saves most of its cost on short,
left-padded histories, keeps padding out of the slot-usage statistics, and keeps BatchNorm
queries' batch statistics independent of how much padding a batch has (they still couple the
rows of a batch in training mode; use LayerNorm queries where that matters).
Dropout (training only) applies to the aggregation weights (the numerators, which equals dropping
normalised attention probabilities) and to the distribution attention probabilities.

**Streaming** (``chunk_align="start"``, eval only). Because the aggregate is a running
log-sum-exp state, one user's layer state is constant-size (:class:`StreamState`): the state of
the completed chunks (``closed``, incl. the empty entry), the partial state of the open chunk's
items (``open``), the keys/values of the open chunk's dispatchers (``disp_kv``: packed from
``closed`` incl. output projection, memory and ``Wk2, Wv2``, recomputed only when a chunk closes)
and the local keys/values of the open chunk's positions (``local_kv``, ``C`` slots; with the
lookback also those of the last closed chunk, ``prev_kv``).
:meth:`DispatcherAttention.stream_step` consumes one event per row in ``O(k d + C d)``;
:meth:`DispatcherAttention.stream_prefill` runs the chunked forward over a whole history once and
keeps only that state. Both equal the full forward on the whole history.

:func:`dispatcher_attention_reference` is the slow per-position definition used by the tests.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from elasticrec.models.layers.common import (GATE_BIAS, NORM_EPS, first_valid_index, gated_output, residual_at,
                                            toeplitz_lower)

# "minus infinity" for the running max of a state that holds no entry; finite so that combining
# two empty states never computes inf - inf.
_EMPTY_MAX = -1e30


class LSEState(NamedTuple):
    """A running softmax-aggregation state per dispatcher (fp32, or float64 for float64 inputs).

    ``m`` [..., k]: stabilising max (detached); ``num`` [..., k, d_h]: sum of
    ``exp(score - m) * value``; ``den`` [..., k]: sum of ``exp(score - m)``.
    The represented aggregate is ``num / den``; every state with ``den > 0`` is a valid softmax.
    """

    m: torch.Tensor
    num: torch.Tensor
    den: torch.Tensor


def chunk_partials(scores: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                   dropout_p: float = 0.0, training: bool = False) -> LSEState:
    """Partial state of each chunk.

    scores [..., k, C] and values [..., C, d_h] in the accumulation dtype, mask bool broadcastable to
    scores (True = position takes part). A chunk without any valid position gets
    ``m = _EMPTY_MAX, num = 0, den = 0``. Dropout (if any) hits the numerator weights only.
    """
    s = scores.masked_fill(~mask, float("-inf"))
    m = s.amax(dim=-1).detach().clamp(min=_EMPTY_MAX)   # -inf (no valid position) -> _EMPTY_MAX
    w = torch.exp(s - m[..., None])
    den = w.sum(dim=-1)
    if dropout_p > 0.0 and training:
        w = F.dropout(w, dropout_p, training=True)
    num = w @ values
    return LSEState(m, num, den)


def empty_state(logit: torch.Tensor, value: torch.Tensor) -> LSEState:
    """State holding only the learned empty-history entry: logit [..., k], value [..., k, d_h]."""
    m = logit.detach()
    den = torch.exp(logit - m)  # == 1, but carries the gradient w.r.t. the logit
    return LSEState(m, value * den[..., None], den)


def combine_states(a: LSEState, b: LSEState) -> LSEState:
    """Merge two states (associative and commutative): the union of their entries."""
    m = torch.maximum(a.m, b.m)
    ea, eb = torch.exp(a.m - m), torch.exp(b.m - m)
    return LSEState(m, a.num * ea[..., None] + b.num * eb[..., None], a.den * ea + b.den * eb)


def finalize_state(s: LSEState) -> torch.Tensor:
    """The aggregate ``num / den`` [..., k, d_h] (den >= 1 whenever the empty entry is included)."""
    return s.num / s.den[..., None]


def _slice(s: LSEState, dim: int, start: int, stop: int) -> LSEState:
    return LSEState(*(t.narrow(dim, start, stop - start) for t in s))


def _cat(a: LSEState, b: LSEState, dim: int) -> LSEState:
    return LSEState(*(torch.cat((x, y), dim=dim) for x, y in zip(a, b)))


SCAN_BLOCK = 64   # chunks scanned at once by one weight matrix (see inclusive_scan)


def _block_scan(s: LSEState, dim: int) -> LSEState:
    """Inclusive prefix-combine along ``dim`` in one shot, for a few dozen states: with the prefix
    max ``M_c = max_{j <= c} m_j`` (detached, as every ``m``), state ``c`` is
    ``sum_{j <= c} exp(m_j - M_c) * (num_j, den_j)``: a lower-triangular ``[n, n]`` weight matrix
    (entries in ``[0, 1]``, so nothing overflows) times the stacked numerators and denominators.
    A constant number of ops whatever ``n``; ``O(n^2)`` weights per dispatcher."""
    m = s.m.movedim(dim, -1)                                                # [..., n]
    n = m.shape[-1]
    M = m.cummax(dim=-1).values
    later = torch.ones(n, n, dtype=torch.bool, device=m.device).triu(1)     # [c, j]: j > c
    w = torch.exp((m[..., None, :] - M[..., :, None]).masked_fill(later, float("-inf")))
    num = w @ s.num.movedim(dim, -2)                                        # [..., n, d_h]
    den = (w @ s.den.movedim(dim, -1)[..., None]).squeeze(-1)
    return LSEState(M.movedim(-1, dim), num.movedim(-2, dim), den.movedim(-1, dim))


def _empty_states(like: LSEState, dim: int, size: int) -> LSEState:
    """``size`` states holding no entry, shaped as ``like`` except ``size`` along ``dim``."""
    def shaped(t: torch.Tensor, fill: float) -> torch.Tensor:
        shape = list(t.shape)
        shape[dim] = size
        return t.new_full(shape, fill)
    return LSEState(shaped(like.m, _EMPTY_MAX), shaped(like.num, 0.0), shaped(like.den, 0.0))


def inclusive_scan(s: LSEState, dim: int, block: int = SCAN_BLOCK) -> LSEState:
    """Inclusive prefix-combine along ``dim`` (a non-negative dim of ``m``, valid for all three
    fields since ``num`` only adds a trailing dim). Up to ``block`` states: one
    :func:`_block_scan`. More: the states are cut into blocks of ``block``, each block is scanned
    at once, the blocks' totals are scanned the same way (recursively) and each block's exclusive
    prefix is combined into it. So the op count is constant up to ``block ** 2`` states (a
    kernel launch per op on a GPU: a log-depth scan of small ops was most of ELASTIC's launches)
    and memory stays ``O(n * block)``, linear in ``n``."""
    n = s.m.shape[dim]
    if n <= block:
        return _block_scan(s, dim)
    nb = -(-n // block)
    if nb * block > n:                       # pad the last block with empty states
        s = _cat(s, _empty_states(s, dim, nb * block - n), dim)
    blocks = LSEState(*(t.unflatten(dim, (nb, block)) for t in s))           # [..., nb, block, ...]
    inner = _block_scan(blocks, dim + 1)
    totals = LSEState(*(t.select(dim + 1, block - 1) for t in inner))       # [..., nb, ...]
    upto = inclusive_scan(totals, dim, block)
    before = _cat(_empty_states(upto, dim, 1), _slice(upto, dim, 0, nb - 1), dim)
    out = combine_states(LSEState(*(t.unsqueeze(dim + 1) for t in before)), inner)
    return _slice(LSEState(*(t.flatten(dim, dim + 1) for t in out)), dim, 0, n)


def exclusive_chunk_states(partials: LSEState, init: LSEState, dim: int) -> LSEState:
    """State seen by chunk c = init (the empty-history entry) + partials of chunks < c.

    ``init`` must have size 1 along ``dim`` and broadcast-compatible other dims."""
    init = LSEState(*(i.expand_as(p.narrow(dim, 0, 1)) for i, p in zip(init, partials)))
    n = partials.m.shape[dim]
    seq = _cat(init, _slice(partials, dim, 0, n - 1), dim)
    return inclusive_scan(seq, dim)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32 / bf16 / fp16 inputs; float64 stays float64 (used by the tests)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_index(L: int, C: int, device=None) -> torch.Tensor:
    """Chunk of each position of a length-L window, boundaries aligned to the END (position L-1)."""
    return (torch.arange(L, device=device) + (-L) % C) // C


CHUNK_ALIGNS = ("end", "start")
DISPATCHER_BIASES = ("none", "count", "items")
_SKIP_LOGIT = -1e4   # "items" bias with no earlier item: exp() of it is 0 in fp32, yet finite


class StreamState(NamedTuple):
    """One layer's constant-size streaming state for B rows (see the module docstring).

    ``closed``/``open``: LSE states [B, H, k] / [B, H, k, d_h] (accumulation dtype) of the
    completed chunks (incl. the empty-history entry) and of the open chunk's items;
    ``disp_kv`` [B, k, 2D]: keys | values of the open chunk's dispatchers; ``local_kv``
    [B, C, 2D] (None without local attention): local keys | values of the open chunk's slots
    (slot ``count % C`` is written by event number ``count``; slots not yet written are zero);
    ``queries`` / ``xsum``: only with a ``query_memory`` (None otherwise).
    """

    closed: LSEState
    open: LSEState
    disp_kv: torch.Tensor
    local_kv: torch.Tensor | None
    queries: torch.Tensor | None = None  # [B, H, k, d_h] (acc.): the open chunk's query_memory
    xsum: torch.Tensor | None = None     # [B, D] (acc.): sum of the open chunk's inputs (ditto)
    # [B, C, 2D]: local keys | values of the last closed chunk (``local_lookback`` only; zero
    # while no chunk has closed)
    prev_kv: torch.Tensor | None = None


def _previous_chunk(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Shift t by one along its chunk axis ``dim``: out[c] = t[c - 1], zeros (False) at c = 0."""
    first = torch.zeros_like(t.narrow(dim, 0, 1))
    return torch.cat((first, t.narrow(dim, 0, t.shape[dim] - 1)), dim=dim)


def _shift_to_front(t: torch.Tensor, first: torch.Tensor, length: int, fill) -> torch.Tensor:
    """Row b of t [B, L, ...] moved left by first[b]: out[b, i] = t[b, i + first[b]] (``fill``
    past the end), output length ``length`` (>= L)."""
    B, L = t.shape[:2]
    idx = torch.arange(length, device=t.device)[None, :] + first[:, None]          # [B, length]
    inside = idx < L
    idx = idx.clamp(max=L - 1).view(B, length, *([1] * (t.dim() - 2))).expand(B, length, *t.shape[2:])
    out = t.gather(1, idx)
    return out.masked_fill(~inside.view(B, length, *([1] * (t.dim() - 2))), fill)


def _shift_back(t: torch.Tensor, first: torch.Tensor, L: int) -> torch.Tensor:
    """Inverse of :func:`_shift_to_front` for t [B, >= L, D]: out[b, i] = t[b, i - first[b]]
    (zeros before first[b])."""
    B, _, D = t.shape
    idx = torch.arange(L, device=t.device)[None, :] - first[:, None]
    before = idx < 0
    out = t.gather(1, idx.clamp(min=0)[..., None].expand(B, L, D))
    return out.masked_fill(before[..., None], 0.0)


DISTRIBUTES = ("explicit", "sdpa")


class ChunkGrid(NamedTuple):
    """What a layer's chunked computation derives from the padding mask alone
    (:meth:`DispatcherAttention.grid`): the same for every layer of a model, so built once per
    forward. n chunks of C positions on a padded grid of n*C."""
    key: tuple                   # the settings it was built for (DispatcherAttention.grid_key)
    valid: torch.Tensor          # [B, L] the caller's mask
    gvalid: torch.Tensor         # [B, n*C] the mask on the grid
    n_pad: int                   # end-aligned: positions of padding added in front
    first: torch.Tensor | None   # start-aligned: each row's first valid position (None: end)
    counts: torch.Tensor         # [B, n] valid items per chunk
    vmask: torch.Tensor          # [B, 1, n, 1, C] valid source positions
    dbias: torch.Tensor | None   # [B, 1, n, 1, 1] dispatcher logit bias (float32), or None
    local: torch.Tensor | None   # [B, 1, n, C, C] causal & valid local keys (use_local)
    prev: torch.Tensor | None    # [B, 1, n, 1, C] valid keys of the previous chunk (lookback)


def distribution_weights(q, keys, dbias, local, scale, acc):
    """The distribution softmax's weights [B, H, n, C, k (+ C (+ C))]: the k dispatchers first,
    then each local block. q [B, H, n, C, dh]; keys: the chunk's dispatchers [B, H, n, k, dh], then
    (with local attention) its own positions and (lookback) the previous chunk's, [B, H, n, C, dh]
    each; ``dbias`` (or None) added to the dispatcher logits; ``local``: (logit bias or None,
    allowed bool mask) per local block. Logits in ``acc``."""
    s = (q @ keys[0].transpose(-1, -2)).to(acc) * scale                    # [B, H, n, C, k]
    if dbias is not None:
        s = s + dbias
    logits = [s]
    for kk, (bias, ok) in zip(keys[1:], local):
        sl = (q @ kk.transpose(-1, -2)).to(acc) * scale                    # [B, H, n, C, C]
        if bias is not None:
            sl = sl + bias
        logits.append(sl.masked_fill(~ok, float("-inf")))
    return torch.softmax(torch.cat(logits, dim=-1) if len(logits) > 1 else s, dim=-1)


def _attend_explicit(q, keys, vals, dbias, local, p_drop, scale, acc):
    """The distribution softmax written out (:func:`distribution_weights`), then the weighted sum
    of ``vals`` (laid out as ``keys``)."""
    a = distribution_weights(q, keys, dbias, local, scale, acc)
    if p_drop > 0.0:
        a = F.dropout(a, p_drop, training=True)
    parts = a.to(vals[0].dtype).split([v.shape[-2] for v in vals], dim=-1)
    y = parts[0] @ vals[0]
    for p, v in zip(parts[1:], vals[1:]):
        y = y + p @ v
    return y


def _attend_sdpa(q, keys, vals, dbias, local, p_drop, scale, acc):
    """The same through one ``F.scaled_dot_product_attention`` call over the concatenated keys
    (every chunk a batch entry, the logit terms as an additive mask): one fused kernel on a GPU
    instead of a dozen ops. The mask is cast to ``q``'s dtype (bf16 under autocast: the dispatcher
    and position biases are then rounded to bf16, unlike the explicit path's fp32 logits)."""
    B, H, n, C, dh = q.shape
    Hm = H if any(b is not None for b, _ in local) else 1
    k = keys[0].shape[-2]
    zero = torch.zeros((), dtype=acc, device=q.device)
    parts = [(zero if dbias is None else dbias).expand(B, Hm, n, C, k)]
    for (bias, ok), kk in zip(local, keys[1:]):
        m = torch.where(ok, zero if bias is None else bias, float("-inf"))
        parts.append(m.expand(B, Hm, n, C, kk.shape[-2]))
    mask = torch.cat(parts, dim=-1).to(q.dtype)                             # [B, Hm, n, C, S]

    def per_chunk(t: torch.Tensor) -> torch.Tensor:                         # [B*n, H|1, *, *]
        return t.transpose(1, 2).reshape(B * n, t.shape[1], *t.shape[3:])

    kk, vv = (torch.cat(t, dim=-2) if len(t) > 1 else t[0] for t in (keys, vals))
    y = F.scaled_dot_product_attention(per_chunk(q), per_chunk(kk), per_chunk(vv),
                                       attn_mask=per_chunk(mask), dropout_p=p_drop, scale=scale)
    return y.view(B, n, H, C, dh).transpose(1, 2)


class DispatcherAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int = 1, n_dispatchers: int = 16,
                 chunk_size: int = 64, dropout: float = 0.0, use_local: bool = True,
                 memory: nn.Module | None = None, shared_local_kv: bool = False,
                 chunk_align: str = "end", dispatcher_bias: str = "none",
                 query_memory: nn.Module | None = None, local_position_bias: bool = False,
                 output_gate: bool = False, output_norm: bool = False,
                 local_lookback: bool = False, distribute: str = "explicit"):
        super().__init__()
        if distribute not in DISTRIBUTES:
            raise ValueError(f"distribute must be one of {DISTRIBUTES}, got {distribute!r}")
        if chunk_align not in CHUNK_ALIGNS:
            raise ValueError(f"chunk_align must be one of {CHUNK_ALIGNS}, got {chunk_align!r}")
        if dispatcher_bias not in DISPATCHER_BIASES:
            raise ValueError(f"dispatcher_bias must be one of {DISPATCHER_BIASES}, "
                             f"got {dispatcher_bias!r}")
        if dispatcher_bias == "items" and not use_local:
            raise ValueError("dispatcher_bias='items' needs use_local=True (with no earlier item, "
                             "a position attends to its own chunk only)")
        if local_lookback and not use_local:
            raise ValueError("local_lookback needs use_local=True (it extends the local chunk)")
        if local_position_bias and not use_local:
            raise ValueError("local_position_bias needs use_local=True (it biases the local keys)")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if chunk_size < 1 or n_dispatchers < 1:
            raise ValueError("chunk_size and n_dispatchers must be >= 1")
        self.d_model, self.h, self.dh = d_model, n_heads, d_model // n_heads
        self.k, self.C = n_dispatchers, chunk_size
        self.dropout = dropout
        self.use_local = use_local
        self.shared_local_kv = shared_local_kv
        self.chunk_align = chunk_align
        self.dispatcher_bias = dispatcher_bias
        self.lookback = local_lookback
        self.distribute = distribute
        # aggregate
        self.dispatchers = nn.Parameter(torch.empty(n_dispatchers, d_model))   # Q_P
        self.agg_kv = nn.Linear(d_model, 2 * d_model)                          # Wk1, Wv1
        self.empty_logit = nn.Parameter(torch.zeros(n_heads, n_dispatchers))
        self.empty_value = nn.Parameter(torch.empty(n_heads, n_dispatchers, self.dh))
        self.pack_out = nn.Linear(d_model, d_model)
        self.memory = memory
        self.query_memory = query_memory     # chooses each chunk's aggregation queries
        # distribute
        self.q = nn.Linear(d_model, d_model)                                   # Wq2
        self.disp_kv = nn.Linear(d_model, 2 * d_model)                         # Wk2, Wv2
        self.local_kv = (nn.Linear(d_model, 2 * d_model)                        # Wk2', Wv2'
                         if use_local and not shared_local_kv else None)
        self.out = nn.Linear(d_model, d_model)                                 # Wo
        # [H, C] ([H, 2C] with the lookback): bias of local key s for query t by distance t - s
        span = 2 * chunk_size if local_lookback else chunk_size
        self.local_bias = (nn.Parameter(torch.zeros(n_heads, span))
                           if local_position_bias else None)
        self.gate = nn.Linear(d_model, d_model) if output_gate else None       # W_u
        self.output_norm = output_norm
        self.reset_dispatchers()

    def reset_dispatchers(self) -> None:
        """(Re-)initialise the layer's own tensors: dispatcher queries ~ N(0, 1) (distinct,
        O(1) logits against unit-scale keys), empty-history logits 0 and values ~ N(0, 0.02).
        Call it after a model-wide small-std init, which would make all dispatchers alike."""
        nn.init.normal_(self.dispatchers, std=1.0)
        nn.init.zeros_(self.empty_logit)
        nn.init.normal_(self.empty_value, std=0.02)
        if self.local_bias is not None:
            nn.init.zeros_(self.local_bias)
        if self.gate is not None:   # SiLU(1.2785) = 1.000: the gate starts near the identity
            nn.init.constant_(self.gate.bias, GATE_BIAS)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.h}, n_dispatchers={self.k}, "
                f"chunk_size={self.C}, chunk_align={self.chunk_align}, use_local={self.use_local}, "
                f"local_lookback={self.lookback}, "
                f"dispatcher_bias={self.dispatcher_bias}, "
                f"local_position_bias={self.local_bias is not None}, "
                f"output_gate={self.gate is not None}, output_norm={self.output_norm}, "
                f"distribute={self.distribute}, dropout={self.dropout}")

    # ---------------------------------------------------------------- pieces (also for streaming)
    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """[..., n, D] -> [..., H, n, d_h] with the head dim moved before the token dim."""
        t = t.unflatten(-1, (self.h, self.dh))
        return t.transpose(-2, -3)

    def dispatcher_queries(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Q_P as [H, k, d_h] in the accumulation dtype."""
        return self.dispatchers.to(dtype).view(self.k, self.h, self.dh).transpose(0, 1)

    def chunk_queries(self, summary: torch.Tensor, rows: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """Aggregation queries ``Q_P + M(Q_P + s)`` [..., k, D] chosen by the query memory ``M``
        from chunk summaries ``s`` [..., D] (the previous chunk's mean input). ``rows`` (bool,
        ``summary.shape[:-1]``) limits the memory lookups; the other rows get ``Q_P``."""
        qp = self.dispatchers.to(summary.dtype)
        u = qp + summary[..., None, :]
        if rows is None:
            return qp + self.query_memory(u)
        idx = rows.nonzero(as_tuple=True)
        return qp.expand_as(u).index_put(idx, qp + self.query_memory(u[idx]))

    def initial_state(self, dtype: torch.dtype = torch.float32) -> LSEState:
        """The empty-history state, [H, k] / [H, k, d_h], in the accumulation dtype."""
        return empty_state(self.empty_logit.to(dtype), self.empty_value.to(dtype))

    def local_kv_proj(self, x: torch.Tensor) -> torch.Tensor:
        return (self.disp_kv if self.local_kv is None else self.local_kv)(x)

    def dispatcher_logit_bias(self, n_prev: torch.Tensor) -> torch.Tensor:
        """Bias added to the dispatcher logits of positions whose earlier chunks hold ``n_prev``
        valid items (any shape; float result of the same shape). Only for ``count`` / ``items``."""
        n = n_prev.to(torch.float32)
        if self.dispatcher_bias == "count":
            return torch.log((n + 1.0) / self.k)
        return torch.where(n > 0, torch.log(n / self.k), torch.full_like(n, _SKIP_LOGIT))

    def output(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Merged-head attention output y [..., D] -> layer output, gated by the query
        positions' inputs x [..., D] when ``output_gate`` is on (layer-normalised first with
        ``output_norm``)."""
        return self.out(gated_output(y, x, self.gate, self.output_norm))

    def finish_pack(self, P: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Merged-head aggregates [..., k, D] -> dispatchers after output projection and memory.

        ``rows`` (bool, ``P.shape[:-2]``) limits the memory lookup to those chunks; the others
        keep ``pack_out(P)`` (their dispatchers must be unused, e.g. chunks of padding only)."""
        P = self.pack_out(P)
        return P if self.memory is None else residual_at(P, rows, self.memory)

    # ---------------------------------------------------------------- forward
    def grid_key(self) -> tuple:
        """The settings a :class:`ChunkGrid` depends on (layers with equal keys can share one)."""
        return (self.C, self.k, self.chunk_align, self.dispatcher_bias, self.use_local,
                self.lookback)

    def grid(self, valid: torch.Tensor, length: int | None = None) -> ChunkGrid:
        """The chunk grid of a padding mask valid [B, L] (bool): every mask and bias a layer
        derives from ``valid`` alone. A model builds it once per forward and passes it to each
        layer (:meth:`forward`'s ``grid``) instead of each layer building the same masks again.
        ``length`` (start-aligned only) sets the padded grid length (default: L rounded up to C)."""
        valid = valid.to(torch.bool)
        B, L = valid.shape
        C, n_pad = self.C, (-L) % self.C
        first = None
        if self.chunk_align == "end":
            gvalid = F.pad(valid, (n_pad, 0), value=False)
        else:
            first = first_valid_index(valid)
            gvalid = _shift_to_front(valid, first, length or L + n_pad, False)
        n = gvalid.shape[1] // C
        counts = gvalid.view(B, n, C).sum(dim=-1)                           # items per chunk
        vmask = gvalid.view(B, 1, n, 1, C)                   # [B, 1, n, 1, C] over source positions
        dbias = local = prev = None
        if self.dispatcher_bias != "none":                                  # items before chunk
            dbias = self.dispatcher_logit_bias(counts.cumsum(dim=1) - counts)[:, None, :, None, None]
        if self.use_local:
            local = torch.ones(C, C, dtype=torch.bool, device=valid.device).tril() & vmask
            if self.lookback:   # every valid position of the previous chunk
                prev = _previous_chunk(vmask, dim=2)
        return ChunkGrid(self.grid_key(), valid, gvalid, n_pad, first, counts, vmask, dbias,
                         local, prev)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None,
                grid: ChunkGrid | None = None) -> torch.Tensor:
        """x [B, L, D], valid [B, L] bool (None = all valid) -> [B, L, D], zeros at padding.
        ``grid``: :meth:`grid` of ``valid``, when the caller has it already (``valid`` is then
        not read)."""
        B, L, D = x.shape
        if grid is None:
            if valid is None:
                valid = torch.ones(B, L, dtype=torch.bool, device=x.device)
            grid = self.grid(valid)
        elif grid.key != self.grid_key():
            raise ValueError(f"this grid was built for the settings {grid.key}, not this "
                             f"layer's {self.grid_key()}")
        if grid.first is None:
            y = self._chunked(F.pad(x, (0, 0, grid.n_pad, 0)), grid)[0][:, grid.n_pad:]
        else:
            xs = _shift_to_front(x, grid.first, grid.gvalid.shape[1], 0.0)
            y = _shift_back(self._chunked(xs, grid)[0], grid.first, L)
        return y.masked_fill(~grid.valid[..., None], 0.0)

    def _chunked(self, x: torch.Tensor, grid: ChunkGrid, keep: bool = False):
        """The chunked computation on a grid starting at position 0: x [B, n*C, D] and its
        :class:`ChunkGrid`. Returns (y [B, n*C, D] (garbage at invalid positions), extras):
        ``extras`` is None unless ``keep``, else a dict with the per-chunk partial states ``part``
        and exclusive states ``states`` ([B, H, n, k(, d_h)]), the dispatchers' keys|values
        ``kvp`` [B, n, k, 2D] and the local keys|values ``kvl`` [B, n, C, 2D] (None without
        local)."""
        B, Lp, D = x.shape
        C, dh, k = self.C, self.dh, self.k
        n = Lp // C
        valid, counts, vmask = grid.gvalid, grid.counts, grid.vmask
        scale = 1.0 / math.sqrt(dh)
        p_drop = self.dropout if self.training else 0.0
        acc = accumulation_dtype(x.dtype)

        # ---- aggregate: packed dispatchers per chunk, exclusive by chunk (fp32 accumulation)
        # (split, not two slices: one backward op instead of a zero-filled gradient per slice)
        k1, v1 = (self._heads(t) for t in self.agg_kv(x).view(B, n, C, 2 * D).split(D, dim=-1))
        if self.query_memory is not None:   # chunk c's queries from chunk c-1's mean input
            sums = (x.to(acc) * valid[..., None]).view(B, n, C, D).sum(dim=2)    # [B, n, D]
            mean = (sums / counts.clamp(min=1)[..., None]).to(x.dtype)
            prev = _previous_chunk(mean, dim=1)
            qc = self._heads(self.chunk_queries(prev, None if keep else counts > 0))
            qc = qc.transpose(1, 2)                                           # [B, H, n, k, dh]
        with torch.autocast(device_type=x.device.type, enabled=False):
            k1, v1 = k1.transpose(1, 2).to(acc), v1.transpose(1, 2).to(acc)  # [B, H, n, C, dh]
            if self.query_memory is None:
                scores = torch.einsum("bhncd,hkd->bhnkc", k1, self.dispatcher_queries(acc))
            else:
                scores = torch.einsum("bhncd,bhnkd->bhnkc", k1, qc.to(acc))
            scores = scores * scale
            part = chunk_partials(scores, v1, vmask, p_drop, self.training)  # [B, H, n, k(, dh)]
            init = LSEState(*(t.unsqueeze(1)[None] for t in self.initial_state(acc)))
            states = exclusive_chunk_states(part, init, dim=2)
            P = finalize_state(states)                                        # [B, H, n, k, dh]
        P = P.permute(0, 2, 3, 1, 4).reshape(B, n, k, D).to(x.dtype)
        # the memory reads only chunks holding a valid position: the dispatchers of padding-only
        # chunks are never attended to (their outputs are masked), so skipping them is exact.
        # ``keep`` (streaming prefill) needs them all: the next open chunk may hold no item yet.
        P = self.finish_pack(P, None if keep else counts > 0)                # [B, n, k, D]

        # ---- distribute: joint softmax over the chunk's dispatchers and causal local positions
        q2 = self._heads(self.q(x).view(B, n, C, D)).transpose(1, 2)          # [B, H, n, C, dh]
        kvp = self.disp_kv(P)
        kp, vp = (self._heads(t).transpose(1, 2) for t in kvp.split(D, dim=-1))  # [B, H, n, k, dh]
        dbias = None if grid.dbias is None else grid.dbias.to(acc)          # [B, 1, n, 1, 1]
        keys, vals, local = [kp], [vp], []   # local: (logit bias or None, allowed) per extra block
        if self.use_local:
            kvl = self.local_kv_proj(x).view(B, n, C, 2 * D)
            kl, vl = (self._heads(t).transpose(1, 2) for t in kvl.split(D, dim=-1))  # [B, H, n, C, dh]
            lb = None
            if self.local_bias is not None:     # by distance t - s; [H, 1, C, 2C] with the lookback
                lb = toeplitz_lower(self.local_bias.to(acc))[:, -C:][:, None]
            keys.append(kl)
            vals.append(vl)
            local.append((None if lb is None else lb[..., -C:], grid.local))
            if self.lookback:   # every valid position of the previous chunk
                keys.append(_previous_chunk(kl, dim=2))
                vals.append(_previous_chunk(vl, dim=2))
                local.append((None if lb is None else lb[..., :C], grid.prev))
        attend = _attend_sdpa if self.distribute == "sdpa" else _attend_explicit
        y = attend(q2, keys, vals, dbias, local, p_drop, scale, acc)         # [B, H, n, C, dh]
        y = y.permute(0, 2, 3, 1, 4).reshape(B, n * C, D)                    # heads merged
        y = self.output(y, x)
        if not keep:
            return y, None
        return y, {"part": part, "states": states, "kvp": kvp,
                   "kvl": kvl if self.use_local else None,
                   "queries": None if self.query_memory is None else qc.to(acc),
                   "sums": None if self.query_memory is None else sums}


    # ---------------------------------------------------------------- streaming (eval only)
    def _check_streaming(self) -> None:
        if self.chunk_align != "start":
            raise ValueError("streaming needs chunk_align='start' (the end-aligned grid moves "
                             "with every new event)")
        if self.training:
            raise RuntimeError("streaming is eval-only (no dropout): call .eval() first")

    def _pack_kv(self, s: LSEState, dtype: torch.dtype) -> torch.Tensor:
        """LSE state [..., H, k(, d_h)] -> dispatcher keys|values [..., k, 2D]."""
        P = finalize_state(s)                                               # [..., H, k, dh]
        P = P.transpose(-2, -3).flatten(-2).to(dtype)                       # [..., k, D]
        return self.disp_kv(self.finish_pack(P))

    def stream_init(self, batch_size: int, device=None, dtype: torch.dtype | None = None
                    ) -> StreamState:
        """The state of B rows without history (default device / dtype: the layer's)."""
        self._check_streaming()
        device = self.dispatchers.device if device is None else device
        dtype = self.dispatchers.dtype if dtype is None else dtype
        B, H, k, dh, D = batch_size, self.h, self.k, self.dh, self.d_model
        acc = accumulation_dtype(dtype)
        init = self.initial_state(acc)
        closed = LSEState(*(t.to(device)[None].expand(B, *t.shape).clone() for t in init))
        empty = LSEState(torch.full((B, H, k), _EMPTY_MAX, dtype=acc, device=device),
                         torch.zeros(B, H, k, dh, dtype=acc, device=device),
                         torch.zeros(B, H, k, dtype=acc, device=device))
        kv = self._pack_kv(LSEState(*(t.to(device) for t in init)), dtype)
        local = (torch.zeros(B, self.C, 2 * D, dtype=dtype, device=device)
                 if self.use_local else None)
        queries = xsum = None
        if self.query_memory is not None:   # first chunk: no previous chunk, summary zero
            q0 = self._heads(self.chunk_queries(torch.zeros(D, dtype=dtype, device=device)))
            queries = q0.to(acc)[None].expand(B, H, k, dh).clone()
            xsum = torch.zeros(B, D, dtype=acc, device=device)
        prev = (torch.zeros(B, self.C, 2 * D, dtype=dtype, device=device)
                if self.lookback else None)
        return StreamState(closed, empty, kv[None].expand(B, k, 2 * D).clone(), local,
                           queries, xsum, prev)

    def stream_step(self, state: StreamState, x: torch.Tensor, count: torch.Tensor
                    ) -> tuple[torch.Tensor, StreamState]:
        """One event per row: x [B, D] (the layer input at the new position), count [B] = events
        each row has seen before it. Returns (output [B, D], new state); the input state is not
        modified. Cost O(k d + C d), plus one pack (incl. memory) for rows whose chunk closes."""
        B, D = x.shape
        C, H, dh, k = self.C, self.h, self.dh, self.k
        acc = accumulation_dtype(x.dtype)
        scale = 1.0 / math.sqrt(dh)
        rows = torch.arange(B, device=x.device)
        slot = count % C                                                    # [B]
        # aggregate: add the event to the open chunk's partial state
        kv1 = self.agg_kv(x)
        k1 = kv1[:, :D].view(B, H, dh).to(acc)
        v1 = kv1[:, D:].view(B, H, 1, dh).to(acc)
        if state.queries is None:
            score = torch.einsum("bhd,hkd->bhk", k1, self.dispatcher_queries(acc)) * scale
        else:
            score = torch.einsum("bhd,bhkd->bhk", k1, state.queries) * scale
        entry = LSEState(score, v1.expand(B, H, k, dh), torch.ones_like(score))
        opened = combine_states(state.open, entry)
        # distribute: joint softmax over the open chunk's dispatchers and its slots 0..slot
        q2 = self.q(x).view(B, H, 1, dh)
        kvp = state.disp_kv
        kp = kvp[..., :D].view(B, k, H, dh).transpose(1, 2)                 # [B, H, k, dh]
        vp = kvp[..., D:].view(B, k, H, dh).transpose(1, 2)
        s = (q2 @ kp.transpose(-1, -2)).to(acc) * scale                     # [B, H, 1, k]
        if self.dispatcher_bias != "none":                                  # closed chunks' items
            s = s + self.dispatcher_logit_bias(count - slot).to(acc)[:, None, None, None]
        local = state.local_kv
        if self.use_local:
            local = local.clone()
            local[rows, slot] = self.local_kv_proj(x).to(local.dtype)
            kl = local[..., :D].view(B, C, H, dh).transpose(1, 2)           # [B, H, C, dh]
            vl = local[..., D:].view(B, C, H, dh).transpose(1, 2)
            sl = (q2 @ kl.transpose(-1, -2)).to(acc) * scale                # [B, H, 1, C]
            slots = torch.arange(C, device=x.device)
            if self.local_bias is not None:                 # slot j is at distance slot - j
                dist = (slot[:, None] - slots[None, :]).clamp(min=0)
                sl = sl + self.local_bias.to(acc)[:, dist].transpose(0, 1)[:, :, None]
            unseen = slots[None, :] > slot[:, None]
            s = torch.cat((s, sl.masked_fill(unseen[:, None, None, :], float("-inf"))), dim=-1)
            if self.lookback:   # the last closed chunk, whole (none before the first closes)
                kb = state.prev_kv[..., :D].view(B, C, H, dh).transpose(1, 2)
                vb = state.prev_kv[..., D:].view(B, C, H, dh).transpose(1, 2)
                sb = (q2 @ kb.transpose(-1, -2)).to(acc) * scale            # [B, H, 1, C]
                if self.local_bias is not None:         # prev slot j is at distance slot + C - j
                    dist = slot[:, None] + C - slots[None, :]
                    sb = sb + self.local_bias.to(acc)[:, dist].transpose(0, 1)[:, :, None]
                none = (count - slot < C)[:, None, None, None]
                s = torch.cat((s, sb.masked_fill(none, float("-inf"))), dim=-1)
        a = torch.softmax(s, dim=-1).to(vp.dtype)
        y = a[..., :k] @ vp
        if self.use_local:
            y = y + a[..., k:k + C].to(vl.dtype) @ vl
        if self.lookback:
            y = y + a[..., k + C:].to(vb.dtype) @ vb
        y = self.output(y.reshape(B, D), x)
        # close the chunk of rows whose event filled it: fold, repack (memory lookup) only those
        closed, disp_kv, prev = state.closed, kvp, state.prev_kv
        queries, xsum = state.queries, None if state.xsum is None else state.xsum + x.to(acc)
        close = slot == C - 1
        if bool(close.any()):
            folded = combine_states(closed, opened)
            c3, c4 = close[:, None, None], close[:, None, None, None]
            closed = LSEState(torch.where(c3, folded.m, closed.m),
                              torch.where(c4, folded.num, closed.num),
                              torch.where(c3, folded.den, closed.den))
            opened = LSEState(opened.m.masked_fill(c3, _EMPTY_MAX),
                              opened.num.masked_fill(c4, 0.0), opened.den.masked_fill(c3, 0.0))
            idx = close.nonzero().squeeze(1)
            disp_kv = kvp.clone()
            disp_kv[idx] = self._pack_kv(LSEState(*(t[idx] for t in closed)), kvp.dtype)
            if prev is not None:
                prev = torch.where(close[:, None, None], local, prev)
            if local is not None:
                local = local.masked_fill(close[:, None, None], 0.0)
            if queries is not None:   # the next chunk's queries, from this chunk's mean input
                queries = queries.clone()
                queries[idx] = self._heads(self.chunk_queries((xsum[idx] / C).to(x.dtype))).to(acc)
                xsum = xsum.masked_fill(close[:, None], 0.0)
        return y, StreamState(closed, opened, disp_kv, local, queries, xsum, prev)

    def stream_prefill(self, x: torch.Tensor, valid: torch.Tensor
                       ) -> tuple[torch.Tensor, StreamState]:
        """Run the (start-aligned) chunked forward over whole histories x [B, L, D] (valid [B, L]:
        each row's items contiguous at its end, i.e. left padding) and keep only the streaming
        state after the last item. Returns (output [B, L, D] as :meth:`forward`, state)."""
        self._check_streaming()
        B, L, D = x.shape
        C = self.C
        valid = valid.to(torch.bool)
        grid = self.grid(valid, (L // C + 1) * C)   # always room for the open chunk, even empty
        first = grid.first
        count = L - first                                                   # items per row
        xs = _shift_to_front(x, first, grid.gvalid.shape[1], 0.0)
        ys, ex = self._chunked(xs, grid, keep=True)
        y = _shift_back(ys, first, L).masked_fill(~valid[..., None], 0.0)
        rows, c = torch.arange(B, device=x.device), count // C              # open chunk index
        closed = LSEState(*(t[rows, :, c] for t in ex["states"]))
        opened = LSEState(*(t[rows, :, c] for t in ex["part"]))
        local = None
        if self.use_local:   # slots of the open chunk not yet written are zero, as in streaming
            unused = torch.arange(C, device=x.device)[None, :] >= (count % C)[:, None]
            local = ex["kvl"][rows, c].masked_fill(unused[..., None], 0.0)
        queries = xsum = prev = None
        if self.query_memory is not None:
            queries, xsum = ex["queries"][rows, :, c], ex["sums"][rows, c]
        if self.lookback:    # the last closed chunk's local keys/values (zero before the first)
            prev = ex["kvl"][rows, (c - 1).clamp(min=0)].masked_fill((c == 0)[:, None, None], 0.0)
        return y, StreamState(closed, opened, ex["kvp"][rows, c].clone(), local, queries, xsum,
                              prev)


def dispatcher_attention_reference(module: DispatcherAttention, x: torch.Tensor,
                                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """Slow, per-position definition of :class:`DispatcherAttention` (same weights; no dropout).

    For each row b and valid position t: aggregate every dispatcher with a plain softmax over the
    empty-history entry plus the valid positions of chunks strictly before t's chunk (chunks
    aligned to the end of the window, or with ``chunk_align="start"`` to the row's first valid
    item; with a ``query_memory``, each position scored with the queries its chunk gets from the
    previous chunk's mean input), apply the output projection and memory, then attend in one
    softmax to those k dispatchers plus the valid positions of t's own chunk up to t (and, with
    ``local_lookback``, every valid position of the chunk before it) (with
    ``dispatcher_bias="count"``, ``log((|S| + 1) / k)`` is added to the k dispatcher logits, ``|S|``
    the number of aggregated positions; with ``"items"``, ``log(|S| / k)``, i.e. no dispatchers
    while ``S`` is empty; with ``local_position_bias``, ``local_bias[h, t - s]`` is added to the
    logit of local position ``s``; with ``output_norm``, the merged heads are layer-normalised;
    with ``output_gate``, they are then multiplied by ``SiLU(gate(x_t))`` before the output
    projection).
    """
    m = module
    B, L, D = x.shape
    H, dh, k = m.h, m.dh, m.k
    if valid is None:
        valid = torch.ones(B, L, dtype=torch.bool, device=x.device)
    valid = valid.to(torch.bool)
    if m.chunk_align == "end":
        chunks = [_chunk_index(L, m.C).tolist()] * B
    else:
        first = first_valid_index(valid).tolist()
        chunks = [[(t - first[b]) // m.C for t in range(L)] for b in range(B)]
    scale = 1.0 / math.sqrt(dh)
    kv1 = m.agg_kv(x)
    k1, v1 = kv1[..., :D].view(B, L, H, dh), kv1[..., D:].view(B, L, H, dh)
    q2 = m.q(x).view(B, L, H, dh)
    if m.use_local:
        kvl = m.local_kv_proj(x)
        kl, vl = kvl[..., :D].view(B, L, H, dh), kvl[..., D:].view(B, L, H, dh)
    qp = m.dispatchers.view(k, H, dh)
    rows = []
    for b in range(B):
        chunk = chunks[b]
        qc = {}   # query_memory: chunk -> its queries [k, H, dh], from the previous chunk's mean
        if m.query_memory is not None:
            for c in set(chunk):
                prev = [s for s in range(L) if bool(valid[b, s]) and chunk[s] == c - 1]
                mean = x[b, prev].mean(dim=0) if prev else x.new_zeros(D)
                qc[c] = m.chunk_queries(mean).view(k, H, dh)
        outs = []
        for t in range(L):
            if not bool(valid[b, t]):
                outs.append(torch.zeros(D, dtype=x.dtype, device=x.device))
                continue
            S = [s for s in range(L) if bool(valid[b, s]) and chunk[s] < chunk[t]]
            heads = []
            for h in range(H):
                if m.query_memory is None:
                    lg = qp[:, h] @ k1[b, S, h].T                                   # [k, |S|]
                else:   # each position is scored with the queries of its own chunk
                    lg = torch.stack([qc[chunk[s]][:, h] @ k1[b, s, h] for s in S], dim=1) \
                        if S else x.new_zeros(k, 0)
                logits = torch.cat([m.empty_logit[h][:, None], lg * scale], dim=1)  # [k, 1+|S|]
                w = torch.softmax(logits, dim=1)
                heads.append(w[:, :1] * m.empty_value[h] + w[:, 1:] @ v1[b, S, h])  # [k, dh]
            P = m.finish_pack(torch.stack(heads, dim=1).reshape(k, D))             # [k, D]
            kvp = m.disp_kv(P)
            kp, vp = kvp[:, :D].view(k, H, dh), kvp[:, D:].view(k, H, dh)
            first_local = chunk[t] - 1 if m.lookback else chunk[t]
            loc = [s for s in range(t + 1)
                   if m.use_local and bool(valid[b, s]) and first_local <= chunk[s] <= chunk[t]]
            bias = torch.zeros(k + len(loc), dtype=x.dtype, device=x.device)
            if m.dispatcher_bias == "count":
                bias[:k] = math.log((len(S) + 1) / k)
            elif m.dispatcher_bias == "items":   # no earlier item: the dispatchers are skipped
                bias[:k] = math.log(len(S) / k) if S else -math.inf
            heads = []
            for h in range(H):
                keys, vals = kp[:, h], vp[:, h]
                if loc:
                    keys = torch.cat([keys, kl[b, loc, h]], dim=0)
                    vals = torch.cat([vals, vl[b, loc, h]], dim=0)
                lb = bias
                if m.local_bias is not None and loc:
                    lb = bias + torch.cat([bias.new_zeros(k), m.local_bias[h, [t - s for s in loc]]])
                w = torch.softmax((keys @ q2[b, t, h]) * scale + lb, dim=0)
                heads.append(w @ vals)
            y = torch.cat(heads)
            if m.output_norm:
                y = (y - y.mean()) / torch.sqrt(y.var(unbiased=False) + NORM_EPS)
            if m.gate is not None:
                y = y * F.silu(m.gate(x[b, t]))
            outs.append(m.out(y))
        rows.append(torch.stack(outs))
    return torch.stack(rows)
