"""Whole-model properties of ELASTIC (layer-level equivalence tests live in test_dispatcher.py)."""

import pytest
import torch

from elasticrec.config import ElasticConfig, ModelConfig
from elasticrec.models import build_model
from model_checks import HSTU_FULL, HSTU_LIKE, LOOKBACK, assert_no_gradient_from_future


def _model(memory=True, **ekw):
    e = ElasticConfig(n_dispatchers=4, chunk_size=4, memory=memory, memory_n_keys=8,
                      memory_heads=2, memory_topk=4, memory_key_dim=8, **ekw)
    cfg = ModelConfig(name="elastic", max_len=32, d_model=16, n_layers=2, n_heads=2,
                      dropout=0.0, elastic=e)
    torch.manual_seed(0)
    return build_model(cfg, n_items=60).eval()


LEAK_CASES = [(memory, site, bias, local)
              for memory, site, bias in [(False, "dispatchers", "none"), (True, "dispatchers", "none"),
                                         (True, "tokens", "none"), (True, "dispatchers", "count"),
                                         (True, "queries", "none")]
              for local in (False, True)] + [(True, "dispatchers", "items", True)]  # needs local
LEAK_CASES = [c + ({},) for c in LEAK_CASES] + [(True, "dispatchers", "items", True, HSTU_LIKE),
                                                (False, "dispatchers", "none", True, HSTU_LIKE),
                                                (True, "dispatchers", "items", True, HSTU_FULL),
                                                (True, "dispatchers", "items", True, LOOKBACK)]


@pytest.mark.parametrize("memory,site,bias,use_local,extra", LEAK_CASES)
def test_no_future_leakage_forward_and_grad(memory, site, bias, use_local, extra):
    m = _model(memory, use_local=use_local, memory_site=site, dispatcher_bias=bias, **extra)
    items = torch.randint(1, 61, (3, 30))
    items[1, :7] = 0
    for t in (2, 11, 20):
        changed = items.clone()
        changed[:, t + 1:] = torch.randint(1, 61, (3, 30 - t - 1))
        a, b = m.encode(items), m.encode(changed)
        torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=0, rtol=0)
    assert_no_gradient_from_future(m, items, t=14)


@pytest.mark.parametrize("site,bias,extra", [("dispatchers", "none", {}), ("tokens", "none", {}),
                                             ("dispatchers", "count", {}),
                                             ("dispatchers", "items", {}), ("queries", "items", {}),
                                             ("dispatchers", "items", HSTU_LIKE),
                                             ("dispatchers", "items", HSTU_FULL),
                                             ("dispatchers", "items", LOOKBACK)])
def test_left_padding_and_batch_composition_invariance(site, bias, extra):
    m = _model(True, memory_site=site, dispatcher_bias=bias, **extra)
    seq = torch.randint(1, 61, (1, 13))
    outs = []
    for pad in (0, 5, 19):
        x = torch.cat([torch.zeros(1, pad, dtype=torch.long), seq], 1)
        outs.append(m.encode(x)[:, -13:])
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=1e-5, rtol=1e-5)
    other = torch.randint(1, 61, (2, 32))
    batch = torch.cat([other[:1], torch.cat([torch.zeros(1, 19, dtype=torch.long), seq], 1), other[1:]])
    torch.testing.assert_close(m.encode(batch)[1:2, -13:], outs[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("site", ["dispatchers", "tokens", "queries"])
def test_memory_usage_reported_and_value_lr_group(site):
    m = _model(True, memory_value_lr=0.01, memory_site=site)
    items = torch.randint(1, 61, (4, 32))
    items[0, :20] = 0
    m.encode(items)
    stats = m.extra_metrics()
    assert any(k.endswith("frac_used") for k in stats) and all(v == v for v in stats.values())
    if site == "tokens":  # one read per valid position, head and top-m; none at padding
        mem = m.blocks[-1].memory
        assert m.blocks[-1].attn.memory is None and list(m.memories) == ["1"]
        assert stats["memory1/hits"] == int((items > 0).sum()) * mem.heads * mem.topk
    if site == "queries":  # k reads per chunk holding an item (12 + 3 * 32 items, chunks of 4)
        mem = m.blocks[-1].attn.query_memory
        assert m.blocks[-1].attn.memory is None and list(m.memories) == ["1"]
        assert stats["memory1/hits"] == (3 + 3 * 8) * 4 * mem.heads * mem.topk
    groups = m.param_groups(1e-3, 0.0)
    assert any(g["lr"] == 0.01 for g in groups)
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in m.parameters())


def test_memory_off_has_no_memory():
    assert not list(_model(False).memories)


@pytest.mark.parametrize("field,value", [("memory_site", "everywhere"), ("chunk_align", "middle")])
def test_bad_elastic_choice_rejected_even_for_configs_built_in_code(field, value):
    with pytest.raises(ValueError, match=f"elastic.{field} must be one of"):
        _model(True, **{field: value})
