"""ELASTIC streaming: start-aligned chunk grid (fast path == reference, padding invariance, no
leakage), streaming-compatible positions, and the constant-size per-event state (streamed hidden
state == full forward after every event, prefill == event by event, constant size, errors)."""

import copy

import pytest
import torch
from torch import nn

from elasticrec.config import ElasticConfig, ModelConfig
from elasticrec.models import build_model
from elasticrec.models.elastic import ElasticState
from elasticrec.models.layers.common import ChunkPositions, StartPositions, first_valid_index
from elasticrec.models.layers.dispatcher import DispatcherAttention, dispatcher_attention_reference
from elasticrec.models.layers.pkm import ProductKeyMemory
from model_checks import (HSTU_FULL, HSTU_LIKE, LOOKBACK, assert_layer_causal,
                          assert_layer_padding_and_batch_invariant, left_valid, randomize)

D = 8


@pytest.fixture(autouse=True)
def _one_thread():
    """Streaming runs thousands of tiny ops: intra-op threads only add synchronisation cost."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _mem(kind):
    return {None: None, "linear": lambda: nn.Linear(D, D),
            "pkm": lambda: ProductKeyMemory(D, n_keys=8, heads=2, topk=3, key_dim=4,
                                            query_norm="layernorm")}[kind]


def _layer(C, k, H, use_local=True, memory=None, shared=False, seed=0, dtype=torch.float64,
           bias="none", query_memory=None, **kw):
    torch.manual_seed(seed)
    mem, qmem = _mem(memory), _mem(query_memory)
    m = DispatcherAttention(D, n_heads=H, n_dispatchers=k, chunk_size=C, use_local=use_local,
                            memory=mem and mem(), shared_local_kv=shared, chunk_align="start",
                            dispatcher_bias=bias, query_memory=qmem and qmem(), **kw)
    return randomize(m, seed).to(dtype).eval()


# ------------------------------------------------------------------ layer: start alignment

CASES = [
    # L, C, k, H, use_local, memory, shared_local_kv
    (10, 4, 3, 2, True, None, False),
    (12, 4, 2, 1, True, "linear", False),
    (7, 16, 3, 2, True, None, False),
    (9, 1, 3, 2, True, "pkm", False),
    (11, 3, 4, 2, False, "pkm", False),
    (13, 5, 2, 2, True, "linear", True),
]


@pytest.mark.parametrize("L,C,k,H,use_local,memory,shared,bias,qmem,kw",
                         [c + ("none", None, {}) for c in CASES]
                         + [(10, 3, 4, 2, True, "pkm", False, "count", None, {}),
                            (10, 3, 4, 2, True, None, False, "items", None, {}),
                            (11, 3, 3, 2, True, None, False, "none", "pkm", {}),
                            (10, 4, 3, 2, True, "pkm", False, "items", None, HSTU_LIKE),
                            (9, 1, 2, 1, True, None, True, "none", None, HSTU_LIKE),
                            (10, 4, 3, 2, True, None, False, "items", None, HSTU_FULL),
                            (11, 3, 3, 2, True, "pkm", False, "items", None, LOOKBACK),
                            (9, 4, 2, 1, True, None, False, "none", "pkm",
                             {"local_lookback": True})])
def test_start_aligned_matches_reference_forward_and_grads(L, C, k, H, use_local, memory, shared,
                                                           bias, qmem, kw):
    m = _layer(C, k, H, use_local, memory, shared, bias=bias, query_memory=qmem, **kw)
    g = torch.Generator().manual_seed(1)
    lengths = [L, L - 2, L - C - 1 if L - C - 1 > 0 else 1, 1, 0]
    valid = left_valid(L, lengths)
    x = torch.randn(len(lengths), L, D, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(len(lengths), L, D, generator=g, dtype=torch.float64)
    params = list(m.parameters())
    y = m(x, valid)
    gy = torch.autograd.grad((y * w).sum(), [x] + params, allow_unused=True)
    r = dispatcher_attention_reference(m, x, valid)
    gr = torch.autograd.grad((r * w).sum(), [x] + params, allow_unused=True)
    torch.testing.assert_close(y, r, rtol=1e-5, atol=1e-7)
    assert torch.all(y[~valid] == 0)
    for name, a, b in zip(["x"] + [n for n, _ in m.named_parameters()], gy, gr):
        if a is None or b is None:
            assert (a is None or torch.all(a == 0)) and (b is None or torch.all(b == 0)), name
            continue
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=lambda s: f"{name}: {s}")


def test_start_alignment_differs_from_end_and_is_grid_from_first_item():
    """Same weights: start == end exactly when the row length is a multiple of C (same grid)."""
    m = _layer(4, 3, 2, memory="linear")
    e = copy.deepcopy(m)
    e.chunk_align = "end"
    x = torch.randn(1, 12, D, dtype=torch.float64)
    torch.testing.assert_close(m(x), e(x))                      # 12 items: grids coincide
    valid = left_valid(12, [10])                                # 10 items: grids differ
    assert not torch.allclose(m(x, valid), e(x, valid))


@pytest.mark.parametrize("use_local", [True, False])
def test_start_alignment_padding_and_batch_invariance(use_local):
    m = _layer(8, 4, 2, use_local=use_local, memory="pkm", dtype=torch.float32)
    g = torch.Generator().manual_seed(4)
    assert_layer_padding_and_batch_invariant(m, D, g, extras=(0, 3, 8, 37))


@pytest.mark.parametrize("C", [1, 3, 4])
def test_start_alignment_no_future_leakage(C):
    m = _layer(C, 3, 2, memory="pkm")
    assert_layer_causal(m, D, torch.Generator().manual_seed(3))


def test_bad_chunk_align_rejected():
    with pytest.raises(ValueError, match="chunk_align"):
        DispatcherAttention(D, chunk_align="middle")


@pytest.mark.parametrize("C,use_local,memory,shared,bias,qmem,kw",
                         [(4, True, "linear", True, "none", None, {}),
                          (3, False, "pkm", False, "none", None, {}),
                          (1, True, None, False, "none", None, {}),
                          (4, True, "pkm", False, "count", None, {}),
                          (3, True, "linear", True, "items", None, {}),
                          (4, True, None, False, "none", "pkm", {}),
                          (1, False, None, False, "none", "linear", {}),
                          (4, True, "pkm", False, "items", None, HSTU_LIKE),
                          (3, False, None, False, "none", None, {"output_gate": True}),
                          (4, True, "pkm", False, "items", None, HSTU_FULL),
                          (4, True, "pkm", False, "items", None, {**LOOKBACK, "output_gate": True}),
                          (1, True, None, True, "none", "linear", {"local_lookback": True}),
                          (3, True, None, False, "count", None, {"local_lookback": True})])
def test_layer_stream_step_and_prefill_equal_forward(C, use_local, memory, shared, bias, qmem, kw):
    """DispatcherAttention pieces: stream_step per event == forward on the whole history, at
    every position; stream_prefill's state == the streamed one; end alignment cannot stream."""
    m = _layer(C, 3, 2, use_local, memory, shared, bias=bias, query_memory=qmem, **kw)
    g = torch.Generator().manual_seed(6)
    L, lengths = 23, [23, 18, 0]
    valid = left_valid(L, lengths)
    x = torch.randn(3, L, D, generator=g, dtype=torch.float64)
    y = m(x, valid)
    st = m.stream_init(3, dtype=torch.float64)
    first = L - torch.tensor(lengths)
    for t in range(L):
        rows = (valid[:, t]).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        sub = type(st)(*(type(f)(*(u[rows] for u in f)) if isinstance(f, tuple) else
                         (None if f is None else f[rows]) for f in st))
        out, sub = m.stream_step(sub, x[rows, t], t - first[rows])
        torch.testing.assert_close(out, y[rows, t], rtol=0, atol=1e-12)
        for f, u in zip(st, sub):  # write the updated rows back
            for a, b in (zip(f, u) if isinstance(f, tuple) else [(f, u)]):
                if a is not None:
                    a[rows] = b
    yp, pre = m.stream_prefill(x, valid)
    torch.testing.assert_close(yp, y, rtol=0, atol=1e-12)
    for f, u in zip(pre, st):
        for a, b in (zip(f, u) if isinstance(f, tuple) else [(f, u)]):
            if a is not None:
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    m.chunk_align = "end"
    with pytest.raises(ValueError, match="chunk_align='start'"):
        m.stream_init(1)


# ------------------------------------------------------------------ positional encodings


def test_position_encodings_count_from_first_item():
    valid = left_valid(7, [5, 0, 7])
    assert first_valid_index(valid).tolist() == [2, 7, 0]
    sp = StartPositions(4, D)
    x = torch.zeros(3, 7, D)
    out = sp(x, valid)
    for t, p in [(2, 0), (3, 1), (5, 3), (6, 3)]:          # clamped at max_len - 1 = 3
        torch.testing.assert_close(out[0, t], sp.emb.weight[p])
    torch.testing.assert_close(out[2, 6], sp.emb.weight[3])
    torch.testing.assert_close(sp.at(torch.tensor([0, 2, 100])), sp.emb.weight[[0, 2, 3]])
    cp = ChunkPositions(3, D, align="start")
    out = cp(x, valid)
    for t, p in [(2, 0), (4, 2), (5, 0), (6, 1)]:
        torch.testing.assert_close(out[0, t], cp.emb.weight[p])
    ce = ChunkPositions(3, D, align="end")
    assert torch.equal(ce(x, valid)[0, 6], ce.emb.weight[2])  # the last position closes a chunk


# ------------------------------------------------------------------ model: streaming

N_ITEMS = 50


def _model(pos="learned-start", memory=True, use_local=True, C=4, k=3, max_len=16, align="start",
           dtype=torch.float64, n_layers=2, seed=0, **ekw):
    """``memory``: False, True (read by the dispatchers), "tokens" (read by every position) or
    "queries" (chooses the dispatcher queries)."""
    site = memory if memory in ("tokens", "queries") else "dispatchers"
    e = ElasticConfig(n_dispatchers=k, chunk_size=C, memory=bool(memory), memory_n_keys=8,
                      memory_heads=2, memory_topk=3, memory_key_dim=8, chunk_align=align,
                      use_local=use_local, memory_site=site, **ekw)
    cfg = ModelConfig(name="elastic", max_len=max_len, d_model=16, n_layers=n_layers, n_heads=2,
                      dropout=0.0, elastic=e, pos_encoding=pos)
    torch.manual_seed(seed)
    m = build_model(cfg, n_items=N_ITEMS)
    for blk in m.blocks:  # non-trivial empty-history entries
        with torch.no_grad():
            blk.attn.empty_logit.normal_()
            blk.attn.empty_value.normal_()
    return m.to(dtype).eval()


def _histories(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    items = torch.randint(1, N_ITEMS + 1, (len(lengths), T), generator=g)
    return items.masked_fill(~left_valid(T, lengths), 0)


def _stream_and_compare(m, items, atol=1e-10):
    """Feed items [B, T] column by column (0 = no event) and compare the streamed hidden state
    with the full forward's hidden state at each row's latest event after every step."""
    B, T = items.shape
    full = m.encode(items)                                   # causal: position t == after event t
    st = m.init_state(B)
    h0 = st.hidden.clone()
    for t in range(T):
        st = m.update(st, items[:, t])
        has = items[:, : t + 1].gt(0).any(1)
        want = torch.where(has[:, None], full[:, t], h0)
        torch.testing.assert_close(m.state_hidden(st), want, rtol=0, atol=atol,
                                   msg=lambda s: f"after column {t}: {s}")
    assert st.count.tolist() == items.gt(0).sum(1).tolist()
    return st


STREAM_CASES = [
    # pos, memory, use_local, C
    ("learned-start", True, True, 4),
    ("learned-start", False, False, 4),
    ("none", True, False, 5),
    ("none", False, True, 3),
    ("learned-start", "tokens", True, 4),
    ("learned-start", "queries", True, 4),
    ("chunk", True, True, 4),
    ("chunk", False, False, 1),
]


@pytest.mark.parametrize("pos,memory,use_local,C", STREAM_CASES)
def test_streamed_hidden_equals_full_forward_after_every_event(pos, memory, use_local, C):
    m = _model(pos, memory, use_local, C=C, max_len=64)  # positions clamp past 63: also covered
    items = _histories([150, 149, 61, 1])
    _stream_and_compare(m, items)


def test_streaming_with_local_lookback():
    """The lookback keeps the last closed chunk's local keys/values in the state: streaming and
    prefill still equal the full forward."""
    m = _model("chunk", True, True, C=4, max_len=64, local_lookback=True,
               local_position_bias=True, dispatcher_bias="items")
    items = _histories([37, 21, 4, 1], seed=3)
    st = _stream_and_compare(m, items)
    _assert_states_close(m.prefill(m.init_state(4), items), st)


def test_float32_streaming_close_to_full_forward():
    m = _model("learned-start", True, True, C=8, dtype=torch.float32)
    _stream_and_compare(m, _histories([120, 77]), atol=2e-4)


@pytest.mark.parametrize("memory,use_local", [(True, True),
                                               pytest.param(False, False, marks=pytest.mark.slow)])
def test_streaming_long_history(memory, use_local):
    """Several thousand events, across ~300 chunk boundaries (IMR on runs in the default suite)."""
    m = _model("chunk", memory, use_local, C=16, k=4, max_len=32)
    _stream_and_compare(m, _histories([3000, 2111], seed=7))


def _assert_states_close(a: ElasticState, b: ElasticState, atol=1e-10):
    assert torch.equal(a.count, b.count)
    for x, y in zip(a.tensors(), b.tensors(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=atol)


@pytest.mark.parametrize("pos,memory,use_local,C", STREAM_CASES[:5])
def test_prefill_equals_event_by_event(pos, memory, use_local, C):
    m = _model(pos, memory, use_local, C=C)
    items = _histories([41, 40, C, 0, 17], seed=2)
    st = m.init_state(5)
    for t in range(items.shape[1]):
        st = m.update(st, items[:, t])
    pre = m.prefill(m.init_state(5), items)
    _assert_states_close(pre, st)
    # then streaming goes on identically
    nxt = torch.randint(1, N_ITEMS + 1, (5,))
    _assert_states_close(m.update(pre, nxt), m.update(st, nxt))
    # prefill in two parts (the second on a non-empty state, the empty row joins later) == whole
    half = m.prefill(m.init_state(5), items[:, :23])
    rest = items[:, 23:]
    two = m.prefill(half, rest)
    _assert_states_close(two, st)


def test_update_mask_and_zero_items_leave_rows_unchanged():
    m = _model()
    st = m.prefill(m.init_state(3), _histories([9, 4, 6]))
    new = m.update(st, torch.tensor([5, 0, 7]), mask=torch.tensor([True, True, False]))
    one = m.update(st.select([0]), torch.tensor([5]))
    _assert_states_close(new.select([0]), one, atol=0)
    _assert_states_close(new.select([1, 2]), st.select([1, 2]), atol=0)
    assert st.count.tolist() == [9, 4, 6]  # the input state is not modified


def test_state_size_constant_in_history_length():
    m = _model(C=4)
    sizes = []
    for T in (1, 10, 100, 400):
        st = m.prefill(m.init_state(2), _histories([T, T]))
        sizes.append(m.state_nbytes(st))
        st = m.update(st, torch.tensor([1, 2]))
        assert m.state_nbytes(st) == sizes[-1]
    assert len(set(sizes)) == 1 and sizes[0] == m.state_nbytes(m.init_state(2))
    assert m.state_nbytes(m.init_state(4)) == 2 * sizes[0]


def test_states_concatenate_and_split():
    m = _model()
    a = m.prefill(m.init_state(1), _histories([7]))
    b = m.prefill(m.init_state(2), _histories([3, 12], seed=5))
    both = ElasticState.cat([a, b])
    nxt = torch.tensor([4, 5, 6])
    up = m.update(both, nxt)
    _assert_states_close(up.select([0]), m.update(a, nxt[:1]), atol=1e-12)
    _assert_states_close(up.select([1, 2]), m.update(b, nxt[1:]), atol=1e-12)


def test_recommend_from():
    m = _model()
    items = _histories([9, 5])
    st = m.prefill(m.init_state(2), items)
    scores, ids = m.recommend_from(st, k=N_ITEMS)
    assert ids.shape == (2, N_ITEMS) and not (ids == 0).any()
    assert ids[0].sort().values.tolist() == list(range(1, N_ITEMS + 1))
    full = m.score_all(m.encode(items)[:, -1])
    torch.testing.assert_close(scores[:, :5], full[:, 1:].topk(5).values.float())
    seen = [set(items[b][items[b] > 0].tolist()) for b in range(2)]
    _, ids = m.recommend_from(st, k=10, exclude=seen)
    assert all(not (set(ids[b].tolist()) & seen[b]) for b in range(2))
    mask = torch.zeros(2, N_ITEMS + 1, dtype=torch.bool)
    mask[:, 1:40] = True
    _, ids = m.recommend_from(st, k=5, exclude=mask)
    assert (ids >= 40).all()
    with pytest.raises(ValueError, match="k must be"):
        m.recommend_from(st, k=0)
    with pytest.raises(ValueError, match="bool mask"):
        m.recommend_from(st, k=3, exclude=torch.zeros(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("align,pos,what", [("end", "none", "chunk_align"),
                                            ("start", "learned", "pos_encoding"),
                                            ("end", "learned", "chunk_align=start")])
def test_unsupported_configs_raise_clear_errors(align, pos, what):
    m = _model(pos=pos, align=align)
    assert not m.supports_streaming
    with pytest.raises(ValueError, match=what):
        m.init_state()


def test_streaming_errors():
    m = _model()
    assert m.supports_streaming
    st = m.init_state(2)
    with pytest.raises(ValueError, match="item ids"):
        m.update(st, torch.tensor([1, N_ITEMS + 1]))
    with pytest.raises(ValueError, match="2 rows"):
        m.update(st, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="integer"):
        m.update(st, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="not left-padded"):
        m.prefill(st, torch.tensor([[1, 0, 2], [0, 0, 3]]))
    m.train()
    with pytest.raises(RuntimeError, match="eval"):
        m.init_state()


def test_model_start_alignment_padding_invariance_and_long_windows():
    """encode() with chunk_align=start: outputs independent of left padding; learned-start
    positions clamp, so windows longer than max_len work."""
    m = _model("learned-start", max_len=8)
    seq = _histories([20])
    base = m.encode(seq)
    padded = torch.cat([torch.zeros(1, 7, dtype=torch.long), seq], 1)
    torch.testing.assert_close(m.encode(padded)[:, 7:], base, rtol=1e-10, atol=1e-10)
