import pytest
import torch
import torch.nn.functional as F

from elasticrec.config import ModelConfig
from elasticrec.models import build_model, list_models
from elasticrec.models.layers.attention import (CausalSelfAttention, key_padding_features,
                                                reference_attention)
from model_checks import assert_no_future_leakage, assert_no_gradient_from_future


def _model(name="sasrec", **kw):
    cfg = ModelConfig(name=name, max_len=24, d_model=16, n_layers=2, n_heads=2, dropout=0.0, **kw)
    torch.manual_seed(0)
    return build_model(cfg, n_items=50).eval()


def test_registry_lists_models():
    assert {"sasrec", "sasrec-explicit"} <= set(list_models())
    with pytest.raises(ValueError, match="choose one of"):
        build_model(ModelConfig(name="nope"), 10)


GATED = {"output_gate": True, "output_norm": True}


@pytest.mark.parametrize("opts", [{}, {"output_gate": True}, GATED, {"null_kv": 3}])
@pytest.mark.parametrize("with_padding", [False, True])
def test_sdpa_equals_reference(with_padding, opts):
    torch.manual_seed(0)
    attn = CausalSelfAttention(16, 2, **opts).eval()
    x = torch.randn(3, 10, 16, requires_grad=True)
    valid = torch.ones(3, 10, dtype=torch.bool)
    if with_padding:
        valid[0, :4] = False
        valid[2, :9] = False
    y = attn(x, valid if with_padding else None)
    attn.explicit = True
    y_ref = attn(x, valid if with_padding else None)
    keep = valid[..., None]
    torch.testing.assert_close(y * keep, y_ref * keep, atol=1e-5, rtol=1e-5)
    g, = torch.autograd.grad((y * keep).sum(), x)
    g_ref, = torch.autograd.grad((y_ref * keep).sum(), x)
    torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)


def test_all_valid_mask_equals_no_mask_without_a_host_sync(monkeypatch):
    """A mask with no padding goes through the padding-feature path (the layer never asks
    ``valid.all()``, a GPU sync) and gives the plain causal kernel's output; the model asks once
    per batch and passes None."""
    torch.manual_seed(0)
    attn = CausalSelfAttention(16, 2).eval()
    x = torch.randn(3, 10, 16)
    valid = torch.ones(3, 10, dtype=torch.bool)
    torch.testing.assert_close(attn(x, valid), attn(x, None), atol=1e-5, rtol=1e-5)
    calls = []
    real_all = torch.Tensor.all
    monkeypatch.setattr(torch.Tensor, "all", lambda self, *a, **k: calls.append(1) or real_all(self, *a, **k))
    items = torch.randint(1, 20, (2, 8))
    items[0, :3] = 0  # left padding: every layer gets the mask
    _model("sasrec").encode(items)
    assert len(calls) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_padding_mask_ignores_padding_content(dtype):
    """The fused path masks padding keys with one extra feature (no L x L mask): whatever the
    padding holds, real positions equal the explicit masked reference, in every float type."""
    torch.manual_seed(1)
    B, H, L, d = 4, 3, 13, 8
    valid = torch.arange(L)[None] >= torch.tensor([0, 5, 12, 3])[:, None]
    q, k, v = torch.randn(3, B, H, L, d)
    loud = ~valid[:, None, :, None]  # padding keys and values far larger than real ones
    k, v = torch.where(loud, 30 * k, k), torch.where(loud, 1e3 * v, v)
    qp, kp, vp = key_padding_features(q.to(dtype), k.to(dtype), v.to(dtype), valid)
    assert qp.shape == kp.shape == vp.shape and kp.shape[-1] % 8 == 0 and kp.shape[-1] > d
    got = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=d ** -0.5)[..., :d]
    ref = reference_attention(q, k, v, valid)
    keep = valid[:, None, :, None]
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.isfinite(got).all()  # padding queries too (all their keys are padding)
    torch.testing.assert_close(got.float() * keep, ref * keep, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", ["sasrec", "sasrec-explicit"])
@pytest.mark.parametrize("pos", ["learned", "rotary"])
def test_no_future_leakage(name, pos):
    m = _model(name, pos_encoding=pos)
    items = torch.randint(1, 51, (2, 24))
    items[1, :5] = 0  # left padding
    assert_no_future_leakage(m, items, t=13, n_items=50)


def test_fused_and_explicit_models_match():
    a, b = _model("sasrec"), _model("sasrec-explicit")
    b.load_state_dict(a.state_dict())
    items = torch.randint(1, 51, (3, 24))
    items[0, :10] = 0
    valid = (items > 0)[..., None]
    torch.testing.assert_close(a.encode(items) * valid, b.encode(items) * valid, atol=1e-5, rtol=1e-5)


def test_reference_attention_causal():
    q = k = v = torch.randn(1, 1, 5, 4)
    out = reference_attention(q, k, v)
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 0])


@pytest.mark.parametrize("pos", ["learned-start", "chunk"])
def test_sasrec_rejects_elastic_only_positions(pos):
    from elasticrec.config import ModelConfig
    from elasticrec.models import build_model

    with pytest.raises(ValueError, match="pos_encoding"):
        build_model(ModelConfig(name="sasrec", pos_encoding=pos), n_items=10)


def _sasrec_cfg(**sasrec):
    from elasticrec.config import SASRecConfig

    return {"sasrec": SASRecConfig(**sasrec)}


@pytest.mark.parametrize("opts", [GATED, {"null_kv": 4}])
@pytest.mark.parametrize("name", ["sasrec", "sasrec-explicit"])
def test_gated_sasrec_has_no_future_leakage_and_ignores_padding(name, opts):
    m = _model(name, **_sasrec_cfg(**opts))
    for b in m.blocks:
        assert (b.attn.gate is not None) == opts.get("output_gate", False)
        assert b.attn.null_kv == opts.get("null_kv", 0)
    items = torch.randint(1, 51, (2, 24))
    items[1, :5] = 0
    assert_no_gradient_from_future(m, items, 13)
    # a row alone, unpadded, equals the same row behind left padding in a batch
    alone = m.encode(items[1:, 5:])
    torch.testing.assert_close(m.encode(items)[1:, 5:], alone, atol=1e-5, rtol=1e-5)


def test_output_gate_starts_near_the_identity():
    """Gate bias 1.2785 (SiLU of it is 1.000): with W_u = 0 a gated SASRec computes what the
    ungated one does with the same weights; training then moves W_u away from 0."""
    plain, gated = _model(), _model(**_sasrec_cfg(output_gate=True))
    missing, unexpected = gated.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == [f"blocks.{i}.attn.gate.{p}" for i in (0, 1) for p in ("bias", "weight")]
    for b in gated.blocks:
        torch.testing.assert_close(b.attn.gate.bias, torch.full((16,), 1.2785))
        torch.nn.init.zeros_(b.attn.gate.weight)
    items = torch.randint(1, 51, (3, 24))
    torch.testing.assert_close(gated.encode(items), plain.encode(items), atol=1e-4, rtol=1e-4)


def test_output_norm_normalises_each_position():
    torch.manual_seed(2)
    attn = CausalSelfAttention(16, 2, output_norm=True).eval()
    with torch.no_grad():
        attn.out.weight.copy_(torch.eye(16))
        attn.out.bias.zero_()
    y = attn(torch.randn(2, 9, 16))
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 9), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(2, 9), atol=1e-3, rtol=0)


@pytest.mark.parametrize("explicit", [False, True])
def test_null_kv_is_one_softmax_over_learned_pairs_and_the_history(explicit):
    """Position t attends to the n learned pairs and the valid items s <= t in one softmax:
    checked against that formula written out per position (one head, identity output)."""
    torch.manual_seed(3)
    d, n, L = 8, 3, 7
    attn = CausalSelfAttention(d, 1, null_kv=n, explicit=explicit).eval()
    with torch.no_grad():
        attn.out.weight.copy_(torch.eye(d))
        attn.out.bias.zero_()
        attn.null_k.normal_()  # large enough to matter
        attn.null_v.normal_()
    x = torch.randn(2, L, d)
    valid = torch.ones(2, L, dtype=torch.bool)
    valid[1, :4] = False
    y = attn(x, valid)
    q, k, v = attn.qkv(x).split(d, -1)
    for b in range(2):
        for t in range(L):
            if not valid[b, t]:
                continue
            keys = torch.cat([attn.null_k[0], k[b, : t + 1][valid[b, : t + 1]]])
            vals = torch.cat([attn.null_v[0], v[b, : t + 1][valid[b, : t + 1]]])
            w = torch.softmax(keys @ q[b, t] / d ** 0.5, 0)
            torch.testing.assert_close(y[b, t], w @ vals, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(y[0, 0], v[0, 0], atol=1e-3)  # the first item no longer gets all the weight


def test_null_kv_rejects_a_negative_count():
    with pytest.raises(ValueError, match="null_kv"):
        CausalSelfAttention(8, 1, null_kv=-1)
