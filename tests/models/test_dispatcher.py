"""Chunk-causal Linear Dispatcher Attention: fast path == per-position reference, causality,
padding / batch invariance, mixed precision and numerical stability."""

import copy

import pytest
import torch
from torch import nn

from elasticrec.models.layers.dispatcher import (
    DispatcherAttention,
    LSEState,
    chunk_partials,
    combine_states,
    dispatcher_attention_reference,
    empty_state,
    exclusive_chunk_states,
    finalize_state,
    inclusive_scan,
)
from elasticrec.models.layers.pkm import ProductKeyMemory
from model_checks import assert_layer_causal, assert_layer_padding_and_batch_invariant, left_valid, randomize

D = 8


def _memory(kind: str | None):
    if kind is None:
        return None
    if kind == "linear":
        return nn.Linear(D, D)
    return ProductKeyMemory(D, n_keys=8, heads=2, topk=3, key_dim=4, query_norm="layernorm")


def _make(L, C, k, H, use_local=True, memory=None, shared=False, seed=0, dtype=torch.float64,
          bias="none", query_memory=None, **kw):
    torch.manual_seed(seed)
    m = DispatcherAttention(D, n_heads=H, n_dispatchers=k, chunk_size=C, use_local=use_local,
                            memory=_memory(memory), shared_local_kv=shared, dispatcher_bias=bias,
                            query_memory=_memory(query_memory), **kw)
    return randomize(m, seed).to(dtype).eval()


CASES = [
    # L, C, k, H, use_local, memory, shared_local_kv
    (10, 4, 3, 2, True, None, False),     # L not a multiple of C
    (12, 4, 2, 1, True, "linear", False),  # exact multiple
    (7, 16, 3, 2, True, None, False),     # L < C: a single chunk
    (9, 1, 3, 2, True, "pkm", False),     # C = 1
    (11, 3, 4, 2, False, "pkm", False),   # no local attention
    (13, 5, 2, 2, True, "linear", True),  # local attention shares the dispatcher k/v projection
]
BIAS_CASES = [  # log((N + 1) / k) ("count") or log(N / k) ("items") on the dispatcher logits
    (10, 4, 3, 2, True, "pkm", False, "count"),
    (9, 2, 5, 1, False, None, False, "count"),
    (10, 3, 3, 2, True, "linear", False, "items"),
    (8, 16, 2, 2, True, None, True, "items"),   # one chunk: no position has an earlier item
]


QUERY_CASES = [  # the memory chooses each chunk's aggregation queries (memory_site="queries")
    (10, 4, 3, 2, True, None, False, "none", "pkm"),
    (11, 3, 2, 1, False, None, False, "none", "linear"),
    (13, 2, 3, 2, True, "linear", True, "items", "pkm"),   # with a dispatcher memory as well
]


@pytest.mark.parametrize("L,C,k,H,use_local,memory,shared,bias,qmem",
                         [c + ("none", None) for c in CASES] + [c + (None,) for c in BIAS_CASES]
                         + QUERY_CASES)
def test_matches_reference_forward_and_grads(L, C, k, H, use_local, memory, shared, bias, qmem):
    _check_against_reference(_make(L, C, k, H, use_local, memory, shared, bias=bias,
                                   query_memory=qmem), L)


OPTION_CASES = [  # local position bias / output gate, alone, together and with the other options
    # L, C, k, H, memory, bias, qmem, local_position_bias, output_gate
    (10, 4, 3, 2, None, "none", None, True, False),
    (9, 1, 3, 2, "pkm", "none", None, True, True),     # C = 1: only distance 0
    (7, 16, 3, 2, None, "items", None, True, True),    # one chunk
    (12, 4, 2, 1, "linear", "none", None, False, True),
    (13, 3, 3, 2, None, "count", "pkm", True, True),
]


@pytest.mark.parametrize("L,C,k,H,memory,bias,qmem,lpb,gate", OPTION_CASES)
def test_position_bias_and_gate_match_reference(L, C, k, H, memory, bias, qmem, lpb, gate):
    _check_against_reference(_make(L, C, k, H, True, memory, bias=bias, query_memory=qmem,
                                   local_position_bias=lpb, output_gate=gate), L)


@pytest.mark.parametrize("L,C,k,H,memory,bias,gate", [(10, 4, 3, 2, None, "none", False),
                                                   (13, 3, 3, 1, "pkm", "items", True),
                                                   (7, 16, 2, 2, None, "count", True)])
def test_output_norm_matches_reference(L, C, k, H, memory, bias, gate):
    _check_against_reference(_make(L, C, k, H, True, memory, bias=bias, output_norm=True,
                                   output_gate=gate, local_position_bias=gate), L)


LOOKBACK_CASES = [  # local_lookback: the previous chunk's positions join the local keys
    # L, C, k, H, memory, bias, qmem, local_position_bias
    (10, 4, 3, 2, None, "none", None, False),
    (11, 3, 2, 1, "pkm", "items", None, True),     # distance bias over 2C
    (9, 1, 3, 2, None, "count", None, True),       # C = 1: the previous position only
    (7, 16, 3, 2, None, "items", None, True),      # one chunk: nothing to look back at
    (13, 4, 3, 2, "linear", "none", "pkm", True),
]


@pytest.mark.parametrize("L,C,k,H,memory,bias,qmem,lpb", LOOKBACK_CASES)
def test_local_lookback_matches_reference(L, C, k, H, memory, bias, qmem, lpb):
    _check_against_reference(_make(L, C, k, H, True, memory, bias=bias, query_memory=qmem,
                                   local_position_bias=lpb, local_lookback=True,
                                   output_gate=lpb), L)


SDPA_CASES = [  # distribute="sdpa": one fused attention call, every option that enters its mask
    # L, C, k, H, use_local, memory, bias, extra options
    (10, 4, 3, 2, True, None, "none", {}),
    (11, 3, 4, 2, False, "pkm", "count", {}),                      # dispatchers only
    (9, 1, 3, 2, True, "linear", "items", {"local_position_bias": True}),
    (13, 4, 3, 2, True, None, "count", {"local_lookback": True, "local_position_bias": True,
                                        "output_gate": True}),
    (7, 16, 2, 1, True, "pkm", "items", {"local_lookback": True}),  # one chunk
    (10, 4, 3, 2, True, None, "count", {"chunk_align": "start", "local_lookback": True}),
]


@pytest.mark.parametrize("L,C,k,H,use_local,memory,bias,kw", SDPA_CASES)
def test_sdpa_distribute_matches_reference(L, C, k, H, use_local, memory, bias, kw):
    """The fused path is the same model: equal to the per-position reference (values and
    gradients, incl. the position-bias parameters that reach it through the mask) and to the
    explicit path on the same weights."""
    m = _make(L, C, k, H, use_local, memory, bias=bias, distribute="sdpa", **kw)
    _check_against_reference(m, L)
    explicit = copy.deepcopy(m)
    explicit.distribute = "explicit"
    x = torch.randn(3, L, D, dtype=torch.float64)
    valid = left_valid(L, [L, max(1, L // 2), 1])
    torch.testing.assert_close(m(x, valid), explicit(x, valid))


def test_sdpa_distribute_in_bf16_and_training():
    """bf16 (mask cast to bf16) stays close to the fp32 reference; dropout runs in training."""
    m32 = _make(20, 4, 3, 2, dtype=torch.float32, bias="items", local_lookback=True,
                local_position_bias=True, distribute="sdpa")
    x = torch.randn(2, 20, D)
    valid = left_valid(20, [20, 9])
    y = copy.deepcopy(m32).to(torch.bfloat16)(x.to(torch.bfloat16), valid)
    assert _rel_err(y, dispatcher_attention_reference(m32, x.to(torch.bfloat16).float(), valid)) < 3e-2
    m32.dropout = 0.5
    m32.train()
    a, b = m32(x, valid), m32(x, valid)
    assert torch.isfinite(a).all() and not torch.equal(a, b)
    with pytest.raises(ValueError, match="distribute"):
        DispatcherAttention(D, distribute="flash")


def test_local_lookback_reads_the_previous_chunk_exactly():
    """A position at the start of a chunk sees the whole previous chunk with the lookback: with
    dispatchers blind to item content (aggregation keys/values constant), its output moves when
    an item of the previous chunk does only with the lookback. It needs the local chunk."""
    L, C = 8, 4
    m = _make(L, C, 2, 1, local_lookback=True)
    with torch.no_grad():
        m.agg_kv.weight.zero_()
    plain = copy.deepcopy(m)
    plain.lookback = False
    x = torch.randn(1, L, D, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    x2 = x.clone()
    x2[0, 1] += 1.0                       # an item of chunk 0; position 4 opens chunk 1
    assert not torch.allclose(m(x)[0, 4], m(x2)[0, 4])
    torch.testing.assert_close(plain(x)[0, 4], plain(x2)[0, 4], rtol=0, atol=1e-12)
    torch.testing.assert_close(m(x)[0, :C], plain(x)[0, :C])   # chunk 0 has nothing before it
    with pytest.raises(ValueError, match="local_lookback needs use_local"):
        DispatcherAttention(D, use_local=False, local_lookback=True)


def test_output_norm_normalises_the_merged_heads():
    """With output_norm and Wo = identity (zero bias), each valid position's layer output has
    mean 0 and variance 1 over the model dimension; padding stays exactly zero."""
    m = _make(12, 4, 3, 2, output_norm=True)
    with torch.no_grad():
        m.out.weight.copy_(torch.eye(D, dtype=m.out.weight.dtype)); m.out.bias.zero_()
    valid = left_valid(12, [12, 5])
    y = m(torch.randn(2, 12, D, dtype=torch.float64), valid)
    torch.testing.assert_close(y[valid].mean(-1), torch.zeros(17, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(y[valid].var(-1, unbiased=False), torch.ones(17, dtype=torch.float64),
                               atol=1e-4, rtol=0)
    assert torch.all(y[~valid] == 0)


def _check_against_reference(m, L):
    """Chunked forward and gradients (input and every parameter) == the per-position reference."""
    g = torch.Generator().manual_seed(1)
    lengths = [L, L - 2, 1, 0][:4]
    valid = left_valid(L, lengths)
    x = torch.randn(len(lengths), L, D, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(len(lengths), L, D, generator=g, dtype=torch.float64)

    y = m(x, valid)
    params = [p for p in m.parameters()]
    gy = torch.autograd.grad((y * w).sum(), [x] + params, allow_unused=True)

    r = dispatcher_attention_reference(m, x, valid)
    gr = torch.autograd.grad((r * w).sum(), [x] + params, allow_unused=True)

    assert y.shape == (len(lengths), L, D)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, r, rtol=1e-5, atol=1e-7)
    assert torch.all(y[~valid] == 0)
    names = ["x"] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, gy, gr):
        if a is None or b is None:
            assert a is None or torch.all(a == 0), name
            assert b is None or torch.all(b == 0), name
            continue
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=lambda s: f"{name}: {s}")


def test_query_memory_moves_the_queries_from_the_previous_chunk():
    """Q_c = Q_P + M(Q_P + s_{c-1}): a memory that outputs zero gives the fixed-query layer; a
    non-zero one changes only positions whose earlier chunks hold items, and the queries of the
    first chunk with items come from a zero summary whatever the padding before it."""
    plain = _make(12, 4, 3, 2)
    qm = _make(12, 4, 3, 2, query_memory="linear")
    qm.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 12, D, dtype=torch.float64)
    valid = left_valid(12, [12, 7])
    with torch.no_grad():
        qm.query_memory.weight.zero_(); qm.query_memory.bias.zero_()
    torch.testing.assert_close(qm(x, valid), plain(x, valid))
    with torch.no_grad():
        qm.query_memory.weight.normal_()
    y, y0 = qm(x, valid), plain(x, valid)
    torch.testing.assert_close(y[:, :4], y0[:, :4])             # chunk 0 sees no items packed
    torch.testing.assert_close(y[1, :8], y0[1, :8])             # row 1: its items start at 5
    assert not torch.allclose(y[0, 4:], y0[0, 4:])              # chunks 1, 2 read packed items
    assert not torch.allclose(y[1, 8:], y0[1, 8:])
    s = torch.zeros(D, dtype=torch.float64)
    torch.testing.assert_close(qm.chunk_queries(s), qm.dispatchers + qm.query_memory(qm.dispatchers))


def test_local_position_bias_is_by_distance_and_gate_starts_near_identity():
    """A large bias at distance 0 makes every position attend to itself only: y_t = Wo v_t. A
    fresh gate (bias 1.2785, weight 0) multiplies by SiLU(1.2785) = 1.000; zero bias = plain."""
    plain = _make(12, 4, 3, 2)
    m = _make(12, 4, 3, 2, local_position_bias=True, output_gate=True)
    m.load_state_dict(plain.state_dict(), strict=False)
    m.reset_dispatchers()  # zero position bias, gate bias 1.2785 ...
    with torch.no_grad():
        m.empty_logit.copy_(plain.empty_logit); m.empty_value.copy_(plain.empty_value)
        m.dispatchers.copy_(plain.dispatchers); m.gate.weight.zero_()  # ... and weight 0
    x = torch.randn(2, 12, D, dtype=torch.float64)
    valid = left_valid(12, [12, 7])
    torch.testing.assert_close(m(x, valid), plain(x, valid), rtol=1e-4, atol=1e-4)
    lone = _make(12, 4, 3, 2, local_position_bias=True)
    with torch.no_grad():
        lone.local_bias.zero_(); lone.local_bias[:, 0] = 200.0
    self_only = lone.out(lone.local_kv_proj(x)[..., D:]).masked_fill(~valid[..., None], 0.0)
    torch.testing.assert_close(lone(x, valid), self_only)
    with pytest.raises(ValueError, match="local_position_bias needs use_local"):
        DispatcherAttention(D, use_local=False, local_position_bias=True)


def test_valid_none_means_all_valid():
    m = _make(10, 4, 3, 2, memory="linear")
    x = torch.randn(2, 10, D, dtype=torch.float64)
    torch.testing.assert_close(m(x), m(x, torch.ones(2, 10, dtype=torch.bool)))
    torch.testing.assert_close(m(x), dispatcher_attention_reference(m, x, None))


@pytest.mark.parametrize("align,bias,lookback", [("end", "items", False), ("start", "count", True),
                                                  ("end", "none", True)])
def test_a_shared_grid_gives_the_same_outputs_and_gradients(align, bias, lookback):
    """A model builds the padding masks once per forward (``grid``) and hands them to every
    layer: the same values and gradients as each layer building its own."""
    m = _make(11, 4, 3, 2, memory="linear", bias=bias, chunk_align=align, local_lookback=lookback,
              local_position_bias=True)
    valid = left_valid(11, [11, 6, 1])
    x = torch.randn(3, 11, D, dtype=torch.float64, requires_grad=True)
    own = m(x, valid)
    (g_own,) = torch.autograd.grad(own.square().sum(), x)
    shared = m(x, None, m.grid(valid))
    (g_shared,) = torch.autograd.grad(shared.square().sum(), x)
    torch.testing.assert_close(shared, own, rtol=0, atol=0)
    torch.testing.assert_close(g_shared, g_own, rtol=0, atol=0)
    other = _make(11, 5, 3, 2, bias=bias, chunk_align=align, local_lookback=lookback)
    with pytest.raises(ValueError, match="grid was built for the settings"):
        other(x, valid, m.grid(valid))


def test_empty_history_is_the_learned_entry():
    """Positions in the first chunk see exactly the empty-history values as dispatchers."""
    m = _make(8, 4, 3, 2, memory=None)
    x = torch.randn(1, 8, D, dtype=torch.float64)
    valid = left_valid(8, [5])  # real items at 3..7; chunks {0..3}, {4..7}: chunk 0 has one item
    y = m(x, valid)
    # rebuild position 3 (first real item, chunk 0) by hand: dispatchers = empty_value
    H, dh, k = m.h, m.dh, m.k
    P = m.finish_pack(m.empty_value.transpose(0, 1).reshape(k, D))
    kvp = m.disp_kv(P)
    kp, vp = kvp[:, :D].view(k, H, dh), kvp[:, D:].view(k, H, dh)
    q = m.q(x[0, 3]).view(H, dh)
    kvl = m.local_kv(x[0, 3]).view(2, H, dh)
    out = []
    for h in range(H):
        keys = torch.cat([kp[:, h], kvl[0, h][None]])
        vals = torch.cat([vp[:, h], kvl[1, h][None]])
        out.append(torch.softmax(keys @ q[h] / dh ** 0.5, 0) @ vals)
    torch.testing.assert_close(y[0, 3], m.out(torch.cat(out)))


@pytest.mark.parametrize("bias,empty", [("count", 1), ("items", 0)])
def test_count_bias_weighs_the_dispatchers_as_the_history_they_summarise(bias, empty):
    """With ``dispatcher_bias="count"`` and identical dispatcher keys and local keys, a position
    with N earlier items and j items of its own chunk gives the dispatchers total weight
    (N + 1) / (N + 1 + j): they count as the N + 1 entries they aggregate ("items": N / (N + j),
    the empty-history entry counts for nothing)."""
    k, C, L = 4, 3, 8
    m = DispatcherAttention(D, n_heads=1, n_dispatchers=k, chunk_size=C,
                            dispatcher_bias=bias).double().eval()
    with torch.no_grad():   # zero query projection: every logit is 0 before the bias
        m.q.weight.zero_(); m.q.bias.zero_()
        m.disp_kv.weight.zero_(); m.local_kv.weight.zero_()
        m.disp_kv.bias.zero_(); m.local_kv.bias.zero_()
        m.disp_kv.bias[D:] = 1.0    # dispatchers' values 1, local values 0
        m.out.weight.copy_(torch.eye(D)); m.out.bias.zero_()
    valid = left_valid(L, [7])      # items at 1..7; end-aligned chunks {0,1}, {2,3,4}, {5,6,7}
    y = m(torch.randn(1, L, D, dtype=torch.float64), valid)[0, :, 0]
    # position: 0 is padding; 1: N=0, j=1; 2..4: N=1, j=1..3; 5..7: N=4, j=1..3
    nj = [(0, 1), (1, 1), (1, 2), (1, 3), (4, 1), (4, 2), (4, 3)]
    expect = [0.0] + [(n + empty) / (n + empty + j) for n, j in nj]
    torch.testing.assert_close(y, torch.tensor(expect, dtype=torch.float64))
    plain = copy.deepcopy(m)
    plain.dispatcher_bias = "none"  # plain logits: the k dispatchers outweigh a short history
    y_plain = plain(torch.randn(1, L, D, dtype=torch.float64), valid)[0, 1, 0].item()
    assert y_plain == pytest.approx(k / (k + 1))
    with pytest.raises(ValueError, match="dispatcher_bias"):
        DispatcherAttention(D, dispatcher_bias="learned")
    with pytest.raises(ValueError, match="use_local"):
        DispatcherAttention(D, dispatcher_bias="items", use_local=False)


@pytest.mark.parametrize("C", [1, 3, 4])
@pytest.mark.parametrize("lookback", [False, True])
def test_no_future_leakage(C, lookback):
    m = _make(11, C, 3, 2, memory="pkm", local_lookback=lookback)
    assert_layer_causal(m, D, torch.Generator().manual_seed(3))


@pytest.mark.parametrize("use_local,lookback", [(True, False), (False, False), (True, True)])
def test_left_padding_and_batch_invariance(use_local, lookback):
    C, n = 8, 13
    m = _make(64, C, 4, 2, use_local=use_local, memory="pkm", dtype=torch.float32,
              local_lookback=lookback)
    g = torch.Generator().manual_seed(4)
    assert_layer_padding_and_batch_invariant(m, D, g, extras=(0, 5, 37), n=n)


@pytest.mark.parametrize("align", ["end", "start"])
def test_memory_reads_only_chunks_with_items(align):
    """The memory is queried once per dispatcher of every chunk holding a valid position, never
    for padding-only chunks: slot hits = chunks-with-items x k x heads x top-m; the outputs equal
    a layer whose memory reads every chunk."""
    C, k, L = 4, 3, 18                                  # padded to 20: five chunks
    m = _make(L, C, k, 2, memory="pkm")
    m.chunk_align = align
    mem = m.memory
    valid = left_valid(L, [18, 5, 1, 0])
    x = torch.randn(4, L, D, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    mem.track_usage = True
    y = m(x, valid)
    n_chunks = 5 + 2 + 1 + 0   # both grids: 18 items span 5 chunks, 5 span 2, 1 spans 1
    assert mem.usage_stats()["hits"] == n_chunks * k * mem.heads * mem.topk
    full = copy.deepcopy(m)
    full.finish_pack = lambda P, rows=None: type(m).finish_pack(full, P)   # memory on every chunk
    # equal up to float64 rounding: the memory's matmuls see a different number of rows, and
    # BLAS may block (and so round) them differently (bit-equality held only for some inputs)
    torch.testing.assert_close(y, full(x, valid), rtol=0, atol=1e-12)


def test_dropout_only_in_training_and_finite():
    m = _make(20, 4, 3, 2, memory="linear", dtype=torch.float32)
    m.dropout = 0.5
    x = torch.randn(2, 20, D)
    valid = left_valid(20, [20, 9])
    torch.testing.assert_close(m(x, valid), m(x, valid))  # eval: deterministic
    m.train()
    a, b = m(x, valid), m(x, valid)
    assert torch.isfinite(a).all() and not torch.equal(a, b)
    a.sum().backward()


def test_large_inputs_are_finite():
    m = _make(70, 8, 4, 2, memory="pkm", dtype=torch.float32)
    x = (torch.randn(3, 70, D) * 100).requires_grad_(True)
    valid = left_valid(70, [70, 33, 1])
    y = m(x, valid)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    # and still the exact softmax: compare with the reference at this scale (float64)
    md = copy.deepcopy(m).double()
    xd = x.detach().double()
    torch.testing.assert_close(md(xd, valid), dispatcher_attention_reference(md, xd, valid),
                               rtol=1e-6, atol=1e-6)


def _rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_bf16_close_to_fp32_reference():
    L = 40
    m32 = _make(L, 8, 4, 2, memory="pkm", dtype=torch.float32)
    mbf = copy.deepcopy(m32).to(torch.bfloat16)
    ref_module = copy.deepcopy(mbf).float()  # same (bf16-rounded) weights, fp32 math
    x = torch.randn(2, L, D)
    valid = left_valid(L, [L, 17])
    y = mbf(x.to(torch.bfloat16), valid)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    r = dispatcher_attention_reference(ref_module, x.to(torch.bfloat16).float(), valid)
    assert _rel_err(y, r) < 2e-2
    # autocast on CPU: fp32 module, bf16 matmuls, fp32 accumulation of the states
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya = m32(x, valid)
    assert torch.isfinite(ya).all()
    assert _rel_err(ya, dispatcher_attention_reference(m32, x, valid)) < 3e-2


# ---------------------------------------------------------------- aggregation helpers


def _sequential_scan(s: LSEState, dim: int) -> LSEState:
    """The obvious inclusive prefix-combine: fold the states one by one."""
    acc, out = None, []
    for c in range(s.m.shape[dim]):
        x = LSEState(*(t.select(dim, c) for t in s))
        acc = x if acc is None else combine_states(acc, x)
        out.append(acc)
    return LSEState(*(torch.stack([o[i] for o in out], dim) for i in range(3)))


@pytest.mark.parametrize("n,block", [(1, 4), (4, 4), (7, 64), (5, 4), (16, 4), (23, 4), (70, 4)])
def test_inclusive_scan_equals_sequential_fold(n, block):
    """The block-matrix scan (one block, several blocks with a padded last one, blocks of blocks)
    equals folding the states one by one, values and gradients, with logits 1e4 apart, states
    holding no entry (m = -1e30) and a first state holding none."""
    g = torch.Generator().manual_seed(n)
    B, k, dh = 2, 3, 4
    m = torch.randn(B, n, k, generator=g, dtype=torch.float64) * 40
    m[:, n // 2, 0] += 1e4                    # one dominant entry: everything before it vanishes
    num = torch.randn(B, n, k, dh, generator=g, dtype=torch.float64)
    den = torch.rand(B, n, k, generator=g, dtype=torch.float64) + 0.5
    empty = torch.zeros(n, dtype=torch.bool)
    empty[::3] = True                          # incl. state 0
    m[:, empty] = -1e30
    num[:, empty] = 0.0
    den[:, empty] = 0.0
    num.requires_grad_(True)
    den.requires_grad_(True)
    got = inclusive_scan(LSEState(m, num, den), 1, block=block)
    want = _sequential_scan(LSEState(m, num, den), 1)
    torch.testing.assert_close(got.m, want.m)
    torch.testing.assert_close(got.num, want.num)
    torch.testing.assert_close(got.den, want.den)
    w = torch.randn(want.num.shape, generator=g, dtype=torch.float64)
    grads = [torch.autograd.grad((s.num * w).sum() + s.den.sum(), (num, den)) for s in (got, want)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_state_helpers_exact_softmax():
    """Chunk partials + exclusive scan == direct softmax over (empty entry + earlier chunks)."""
    g = torch.Generator().manual_seed(5)
    k, C, dh, n = 3, 4, 5, 7
    scores = torch.randn(n, k, C, generator=g, dtype=torch.float64) * 30
    values = torch.randn(n, C, dh, generator=g, dtype=torch.float64)
    mask = torch.rand(n, 1, C, generator=g) > 0.4
    mask[2] = False  # a chunk with no valid position
    logit = torch.randn(k, dtype=torch.float64)
    val = torch.randn(k, dh, dtype=torch.float64)
    part = chunk_partials(scores, values, mask)
    init = LSEState(*(t[None] for t in empty_state(logit, val)))
    got = finalize_state(exclusive_chunk_states(part, init, dim=0))  # [n, k, dh]
    for c in range(n):
        s = torch.cat([logit[:, None]] + [scores[i][:, mask[i, 0]] for i in range(c)], dim=1)
        v = [val[:, None, :].expand(k, 1, dh)] + [values[i][mask[i, 0]][None].expand(k, -1, -1)
                                                 for i in range(c)]
        want = (torch.softmax(s, 1)[..., None] * torch.cat(v, dim=1)).sum(1)
        torch.testing.assert_close(got[c], want)
    # combining is associative / order-free
    a, b, c_ = (chunk_partials(scores[i], values[i], mask[i]) for i in (0, 1, 3))
    l = finalize_state(combine_states(combine_states(a, b), c_))
    r = finalize_state(combine_states(a, combine_states(c_, b)))
    torch.testing.assert_close(l, r)
