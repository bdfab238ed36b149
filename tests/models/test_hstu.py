import math

import numpy as np
import pytest
import torch

from elasticrec.config import ExperimentConfig, ModelConfig, load_config
from elasticrec.data.sequences import SequenceData
from elasticrec.models import build_model, list_models
from elasticrec.models.layers.hstu_attention import (
    HSTUAttention, hstu_attention, position_bucket, reference_hstu_attention,
    relative_position_buckets, relative_time_buckets, time_bucket, toeplitz_lower, bucket_lookup,
    distance_buckets)
from model_checks import assert_no_future_leakage


def _model(use_time_bias=True, max_len=24, **kw):
    cfg = ModelConfig(name="hstu", max_len=max_len, d_model=16, n_layers=2, n_heads=2, dropout=0.0, **kw)
    cfg.hstu.use_time_bias = use_time_bias
    torch.manual_seed(0)
    m = build_model(cfg, n_items=50).eval()
    with torch.no_grad():  # non-zero biases so that the tests see them
        for blk in m.blocks:
            blk.attn.pos_bias.normal_(0, 0.5)
            if blk.attn.time_bias is not None:
                blk.attn.time_bias.normal_(0, 0.5)
    return m


def _times(B, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    gaps = torch.randint(0, 10 ** 6, (B, L), generator=g) * (torch.rand(B, L, generator=g) < 0.8)
    return 10 ** 9 + gaps.cumsum(1)


def test_registered():
    assert "hstu" in list_models()


def test_bucket_functions_match_scalar_definitions():
    L, nb = 300, 16
    got = relative_position_buckets(L, nb, max_distance=200)
    for t in range(L):
        for s in range(0, t + 1, 7):
            assert int(got[t, s]) == position_bucket(t - s, nb, 200)
    assert int(got[5, 5]) == 0 and int(got.max()) == nb - 1
    # monotone in the distance, exact for small ones
    row = got[L - 1, :].flip(0)
    assert bool((row[1:] >= row[:-1]).all()) and row[:nb // 2].tolist() == list(range(nb // 2))
    ts = torch.tensor([[0, 0, 1, 3, 100, 10 ** 5, 10 ** 9]])
    tb = relative_time_buckets(ts, 128, 0.301)
    for t in range(7):
        for s in range(t + 1):
            assert int(tb[0, t, s]) == time_bucket(int(ts[0, t] - ts[0, s]), 128, 0.301)
    assert int(tb[0, 1, 0]) == 0 and int(tb[0, 6, 0]) == int(math.log(10 ** 9) / 0.301)


@pytest.mark.parametrize("L,heads,norm,with_time", [(7, 1, "max_len", True), (12, 2, "causal", True),
                                                    (16, 2, "max_len", False)])
def test_attention_equals_reference(L, heads, norm, with_time):
    torch.manual_seed(L)
    d = 8 * heads
    att = HSTUAttention(d, heads, attention_dim=6, linear_dim=4, num_buckets=8,
                        time_buckets=16 if with_time else 0, max_len=20, norm=norm).eval()
    with torch.no_grad():
        att.pos_bias.normal_(0, 0.5)
        if with_time:
            att.time_bias.normal_(0, 0.5)
    B = 3
    q, k = torch.randn(B, heads, L, 6, requires_grad=True), torch.randn(B, heads, L, 6, requires_grad=True)
    v = torch.randn(B, heads, L, 4, requires_grad=True)
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[1, :3] = False
    valid[2, : L - 1] = False  # a single real item
    ts = _times(B, L)
    pos_idx = distance_buckets(L, 8, 20)
    time_idx = relative_time_buckets(ts, 16, 0.301) if with_time else None
    y = hstu_attention(q, k, v, valid, att.bias(pos_idx, time_idx), att.n)
    y_ref = reference_hstu_attention(q, k, v, valid, att.pos_bias, 20, att.n,
                                     att.time_bias if with_time else None, ts, 0.301)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    assert y.transpose(1, 2)[~valid].abs().max() == 0  # padding queries read nothing
    w = torch.randn_like(y)
    params = [q, k, v, att.pos_bias] + ([att.time_bias] if with_time else [])
    grads = torch.autograd.grad((y * w).sum(), params)
    grads_ref = torch.autograd.grad((y_ref * w).sum(), params)
    for g, gr in zip(grads, grads_ref):
        torch.testing.assert_close(g, gr, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_time", [False, True])
def test_no_future_leakage(use_time):
    m = _model(use_time_bias=use_time)
    items = torch.randint(1, 51, (2, 24))
    items[1, :5] = 0
    assert_no_future_leakage(m, items, 13, n_items=50, timestamps=_times(2, 24))


def test_padding_and_batch_composition_invariance():
    m = _model()
    seq = torch.randint(1, 51, (1, 10))
    ts = _times(1, 10)
    alone = m.encode(torch.cat([torch.zeros(1, 14, dtype=torch.long), seq], 1),
                     torch.cat([torch.zeros(1, 14, dtype=torch.long), ts], 1))
    other = torch.randint(1, 51, (2, 24))
    batch = torch.cat([other[:1], torch.cat([torch.zeros(1, 14, dtype=torch.long), seq], 1), other[1:]])
    tsb = torch.cat([_times(1, 24, 1), torch.cat([torch.full((1, 14), 77), ts], 1), _times(1, 24, 2)])
    out = m.encode(batch, tsb)  # padding timestamps are arbitrary: masked
    torch.testing.assert_close(out[1, 14:], alone[0, 14:], atol=1e-5, rtol=1e-5)


def test_time_bias_used_and_optional():
    m = _model()
    items = torch.randint(1, 51, (2, 24))
    ts = _times(2, 24)
    a, b = m.encode(items, ts), m.encode(items, ts * 3)
    assert not torch.allclose(a, b)  # time gaps matter
    assert m.encode(items).isfinite().all()  # no timestamps: position bias only
    m2 = _model(use_time_bias=False)
    assert not m2.uses_timestamps and m2.blocks[0].attn.time_bias is None
    torch.testing.assert_close(m2.encode(items, ts), m2.encode(items))
    with pytest.raises(ValueError, match="timestamps shape"):
        m.encode(items, ts[:, :5])


@pytest.mark.parametrize("L", [1, 2, 7, 40])
def test_bias_equals_plain_table_lookup(L):
    """The Toeplitz / F.embedding bias (fast CUDA backward) equals indexing the tables with the
    bucket matrices, forward on and below the diagonal and in both tables' gradients."""
    torch.manual_seed(L)
    attn = HSTUAttention(8, n_heads=2, max_len=40, num_buckets=16, time_buckets=12)
    with torch.no_grad():
        attn.pos_bias.normal_()
        attn.time_bias.normal_()
    pos_idx = relative_position_buckets(L, 16, 40)
    time_idx = relative_time_buckets(_times(3, L, seed=L), 12, 0.301)
    lower = torch.ones(L, L, dtype=torch.bool).tril()
    g = torch.randn(3, 2, L, L) * lower
    fast = attn.bias(distance_buckets(L, 16, 40), time_idx)
    plain = attn.pos_bias[:, pos_idx][None] + attn.time_bias[:, time_idx].transpose(0, 1)
    torch.testing.assert_close(fast * lower, plain * lower)
    grads = [torch.autograd.grad((out * g).sum(), [attn.pos_bias, attn.time_bias]) for out in (fast, plain)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    x = torch.arange(1.0, L + 1)
    assert toeplitz_lower(x)[L - 1].tolist() == x.flip(0).tolist() and toeplitz_lower(x)[0, 1:].abs().sum() == 0


def test_bucket_lookup_gradient():
    table = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 4, (3, 6, 6))  # bucket 4 never used: zero gradient
    assert torch.autograd.gradcheck(bucket_lookup, (table, idx))
    bucket_lookup(table, idx).sum().backward()
    assert table.grad[:, 4].abs().max() == 0 and table.grad[:, :4].sum() == 2 * 3 * 36


def test_unused_time_table_still_in_graph_without_timestamps():
    m = _model().train()  # DistributedDataParallel needs every parameter in the graph
    m.encode(torch.randint(1, 51, (2, 24))).sum().backward()
    for blk in m.blocks:
        assert blk.attn.time_bias.grad is not None and blk.attn.time_bias.grad.abs().max() == 0
        assert blk.attn.pos_bias.grad.abs().max() > 0


def test_bad_options():
    with pytest.raises(ValueError, match="pos_encoding"):
        build_model(ModelConfig(name="hstu", pos_encoding="rotary"), 10)
    cfg = load_config(None, ["model.name=hstu", "model.hstu.attn_norm=causal"])
    assert cfg.model.hstu.attn_norm == "causal"
    from elasticrec.config import ConfigError
    with pytest.raises(ConfigError, match="choose one of"):
        load_config(None, ["model.hstu.attn_norm=sum"])


def _with_times(data: SequenceData) -> SequenceData:
    ts = np.zeros(len(data.items), dtype=np.int64)
    for u in range(data.n_users):
        a, b = int(data.offsets[u]), int(data.offsets[u + 1])
        ts[a:b] = 10 ** 9 + np.arange(b - a) * 3600 * (1 + u % 3)
    data.timestamps = ts
    return data


@pytest.mark.parametrize("with_times", [False, True])
def test_trains_on_cyclic_data(tmp_path, with_times, recwarn, cyclic_data):
    from elasticrec.train.trainer import Trainer

    data = cyclic_data
    if with_times:
        data = _with_times(data)
    cfg = ExperimentConfig()
    cfg.model = ModelConfig(name="hstu", max_len=16, d_model=32, n_layers=2, n_heads=1, dropout=0.0)
    cfg.train.epochs, cfg.train.batch_size, cfg.train.lr = 4, 16, 5e-3
    cfg.train.progress, cfg.train.num_threads = False, 2
    cfg.eval.ks = [1, 10]
    tr = Trainer(cfg, run_dir=tmp_path / "run", data=data)
    assert tr.use_timestamps == with_times
    assert any("no timestamps" in str(w.message) for w in recwarn) != with_times
    seen = []
    orig = tr.model.encode
    tr.model.encode = lambda items, timestamps=None: (seen.append(timestamps is not None), orig(items, timestamps))[1]
    res = tr.fit()
    assert all(s == with_times for s in seen) and seen
    assert res["HR@10"] > 0.6, res  # random: 10/30 (as SASRec's trainer test)


def test_models_command_lists_baselines(capsys):
    from elasticrec.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out.split()
    assert "hstu" in out and "linrec" in out
