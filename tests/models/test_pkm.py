"""Product-key memory: fast top-m == brute force over all slots, shapes, gradients, usage stats."""

import math

import pytest
import torch

from elasticrec.models.layers.pkm import ProductKeyMemory, pkm_topk_bruteforce, pkm_topk_fast


@pytest.mark.parametrize("n_keys,topk,heads,norm", [(8, 4, 2, "batchnorm"), (12, 5, 1, "layernorm"),
                                                    (16, 8, 4, "batchnorm"), (16, 16, 2, "layernorm")])
def test_fast_topk_equals_bruteforce(n_keys, topk, heads, norm):
    torch.manual_seed(0)
    m = ProductKeyMemory(12, 6, n_keys=n_keys, heads=heads, topk=topk, key_dim=8, query_norm=norm)
    m.train()
    m(torch.randn(64, 12))  # non-trivial BatchNorm running stats
    m.eval()
    x = torch.randn(5, 7, 12)
    idx_b, w_b = pkm_topk_bruteforce(m, x)
    idx_f, w_f = pkm_topk_fast(m, x)
    assert idx_f.shape == idx_b.shape == (35, heads, topk)
    assert int(idx_f.max()) < n_keys ** 2 and int(idx_f.min()) >= 0
    # same sets of slots; weights match slot by slot
    sb, ob = idx_b.sort(-1)
    sf, of = idx_f.sort(-1)
    assert torch.equal(sb, sf)
    torch.testing.assert_close(w_f.gather(-1, of), w_b.gather(-1, ob), rtol=1e-5, atol=1e-6)
    # and the forward output is the weighted sum of the brute-force slots' values
    out = m(x)
    vals = m.values.weight[idx_b]                       # [N, H, m, d_out]
    want = (w_b[..., None] * vals).sum((1, 2)).view(5, 7, 6)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


def test_shapes_and_default_dout():
    m = ProductKeyMemory(10, n_keys=8, heads=2, topk=4, key_dim=6, query_norm="layernorm")
    assert m(torch.randn(3, 10)).shape == (3, 10)
    assert m(torch.randn(2, 4, 5, 10)).shape == (2, 4, 5, 10)
    m2 = ProductKeyMemory(10, 3, n_keys=8, heads=2, topk=4, key_dim=6)
    assert m2(torch.randn(2, 7, 10)).shape == (2, 7, 3)
    with pytest.raises(ValueError):
        ProductKeyMemory(10, n_keys=4, topk=5)


@pytest.mark.parametrize("norm", ["batchnorm", "layernorm"])
def test_gradients_reach_keys_query_and_values(norm):
    torch.manual_seed(1)
    m = ProductKeyMemory(16, 8, n_keys=16, heads=2, topk=4, key_dim=8, query_norm=norm)
    x = torch.randn(4, 9, 16, requires_grad=True)
    (m(x) * torch.randn(4, 9, 8)).sum().backward()
    for name, p in [("keys", m.keys), ("query", m.query_proj.weight), ("values", m.values.weight),
                    ("x", x)]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # only the selected value rows get a gradient
    used = (m.values.weight.grad.abs().sum(1) > 0).sum().item()
    assert 0 < used <= 4 * 9 * 2 * 4
    assert m.value_parameters() == [m.values.weight]
    ids = {id(p) for p in m.non_value_parameters()}
    assert id(m.values.weight) not in ids and id(m.keys) in ids


def test_usage_stats():
    torch.manual_seed(2)
    m = ProductKeyMemory(8, n_keys=8, heads=2, topk=4, key_dim=8, query_norm="layernorm")
    m(torch.randn(10, 8))
    assert m.usage_stats()["frac_used"] == 0.0  # not tracking by default
    m.track_usage = True
    with torch.no_grad():
        m(torch.randn(20, 8))
    s = m.usage_stats(reset=False)
    assert s["hits"] == 20 * 2 * 4
    assert 0 < s["frac_used"] <= 1
    assert 0 < s["entropy"] <= math.log(64) + 1e-9
    assert 0 < s["normalized_entropy"] <= 1 + 1e-9
    assert m.usage_stats(reset=True)["hits"] == s["hits"]
    assert m.usage_stats()["hits"] == 0
    assert "usage_counts" not in m.state_dict()


def test_half_precision_and_float64():
    m = ProductKeyMemory(8, n_keys=8, heads=2, topk=3, key_dim=4, query_norm="layernorm")
    y = m.to(torch.bfloat16)(torch.randn(2, 3, 8, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    y = m.double()(torch.randn(2, 3, 8, dtype=torch.float64))
    assert y.dtype == torch.float64


@pytest.mark.parametrize("n_keys", [32, 1024])
def test_large_banks(n_keys):
    """2^10 and 2^20 slots construct and run (small d_out keeps the 2^20 table cheap)."""
    m = ProductKeyMemory(16, 4, n_keys=n_keys, heads=2, topk=8, key_dim=8, query_norm="layernorm")
    assert m.values.weight.shape == (n_keys ** 2, 4)
    x = torch.randn(3, 5, 16)
    y = m(x)
    assert y.shape == (3, 5, 4) and torch.isfinite(y).all()
    if n_keys == 32:
        idx_b, _ = pkm_topk_bruteforce(m, x)
        idx_f, _ = pkm_topk_fast(m, x)
        assert torch.equal(idx_b.sort(-1).values, idx_f.sort(-1).values)
