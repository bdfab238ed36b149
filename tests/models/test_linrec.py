import pytest
import torch

from elasticrec.config import ExperimentConfig, ModelConfig
from elasticrec.models import build_model, list_models
from elasticrec.models.layers.linear_attention import (
    CausalLinearAttention, causal_linear_attention, elu_feature_map, reference_linear_attention)
from model_checks import assert_no_future_leakage


def _model(max_len=24, chunk=5, **kw):
    cfg = ModelConfig(name="linrec", max_len=max_len, d_model=16, n_layers=2, n_heads=2, dropout=0.0, **kw)
    cfg.linrec.chunk_size = chunk
    torch.manual_seed(0)
    return build_model(cfg, n_items=50).eval()


def test_registered():
    assert "linrec" in list_models()


@pytest.mark.parametrize("L,heads,chunk", [(1, 1, 4), (7, 1, 3), (16, 2, 4), (13, 4, 64), (20, 2, 1)])
def test_chunked_equals_reference(L, heads, chunk):
    torch.manual_seed(L * 10 + heads)
    B, dk, dv = 3, 5, 6
    q = elu_feature_map(torch.randn(B, heads, L, dk)).requires_grad_(True)
    k = elu_feature_map(torch.randn(B, heads, L, dk)).requires_grad_(True)
    v = torch.randn(B, heads, L, dv, requires_grad=True)
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[1, : L // 2] = False
    valid[2, : L - 1] = False
    y = causal_linear_attention(q, k, v, valid, chunk_size=chunk)
    y_ref = reference_linear_attention(q, k, v, valid)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    assert y.transpose(1, 2)[~valid].abs().sum() == 0  # padding queries see no key
    w = torch.randn_like(y)
    for g, gr in zip(torch.autograd.grad((y * w).sum(), [q, k, v]),
                     torch.autograd.grad((y_ref * w).sum(), [q, k, v])):
        torch.testing.assert_close(g, gr, atol=1e-5, rtol=1e-5)


def test_reference_is_the_definition():
    q, k, v = torch.rand(1, 1, 3, 2) + 0.1, torch.rand(1, 1, 3, 2) + 0.1, torch.randn(1, 1, 3, 4)
    y = reference_linear_attention(q, k, v, eps=0.0)
    w = q[0, 0, 2] @ k[0, 0].T  # position 2 reads keys 0..2
    torch.testing.assert_close(y[0, 0, 2], (w[:, None] * v[0, 0]).sum(0) / w.sum())
    torch.testing.assert_close(y[0, 0, 0], v[0, 0, 0])


def test_running_sums_stay_fp32_under_autocast():
    torch.manual_seed(0)
    q, k = elu_feature_map(torch.randn(2, 1, 40, 8)), elu_feature_map(torch.randn(2, 1, 40, 8))
    v = torch.randn(2, 1, 40, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = causal_linear_attention(q, k, v, chunk_size=8)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, reference_linear_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_module_fast_equals_explicit():
    torch.manual_seed(0)
    att = CausalLinearAttention(16, 2, chunk_size=4)
    x = torch.randn(2, 11, 16)
    valid = torch.ones(2, 11, dtype=torch.bool)
    valid[0, :6] = False
    y = att(x, valid)
    att.explicit = True
    torch.testing.assert_close(y, att(x, valid), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [5, 64])
def test_no_future_leakage(chunk):
    m = _model(chunk=chunk)
    items = torch.randint(1, 51, (2, 24))
    items[1, :5] = 0
    assert_no_future_leakage(m, items, t=13, n_items=50)


def test_padding_and_batch_composition_invariance():
    m = _model()
    seq = torch.randint(1, 51, (1, 10))
    alone = m.encode(torch.cat([torch.zeros(1, 14, dtype=torch.long), seq], 1))
    short = m.encode(torch.cat([torch.zeros(1, 3, dtype=torch.long), seq], 1))  # other chunk grid
    other = torch.randint(1, 51, (2, 24))
    batch = torch.cat([other[:1], torch.cat([torch.zeros(1, 14, dtype=torch.long), seq], 1), other[1:]])
    out = m.encode(batch)
    torch.testing.assert_close(out[1, 14:], alone[0, 14:], atol=1e-5, rtol=1e-5)
    # absolute positions count from the end, so a shorter window gives the same states
    torch.testing.assert_close(short[0, 3:], alone[0, 14:], atol=1e-5, rtol=1e-5)


def test_bad_options():
    with pytest.raises(ValueError, match="pos_encoding"):
        build_model(ModelConfig(name="linrec", pos_encoding="rotary"), 10)
    cfg = ModelConfig(name="linrec")
    cfg.linrec.chunk_size = 0
    with pytest.raises(ValueError, match="chunk_size"):
        build_model(cfg, 10)


def test_trains_on_cyclic_data(tmp_path, cyclic_data):
    from elasticrec.train.trainer import Trainer

    cfg = ExperimentConfig()
    cfg.model = ModelConfig(name="linrec", max_len=16, d_model=32, n_layers=2, n_heads=2, dropout=0.0)
    cfg.model.linrec.chunk_size = 4
    cfg.train.epochs, cfg.train.batch_size, cfg.train.lr = 4, 16, 5e-3
    cfg.train.progress = False
    cfg.eval.ks = [1, 10]
    res = Trainer(cfg, run_dir=tmp_path / "run", data=cyclic_data).fit()
    assert res["HR@10"] > 0.6, res  # random: 10/30 (as SASRec's trainer test)
