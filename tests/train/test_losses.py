"""The training losses against their textbook definitions."""

import pytest
import torch
import torch.nn.functional as F

from elasticrec.config import TrainConfig
from elasticrec.train.losses import next_item_loss


class _Emb(torch.nn.Module):
    """The part of a model the losses use: an item table, scored by dot product."""

    def __init__(self, n_items: int, d: int):
        super().__init__()
        self.item_emb = torch.nn.Embedding(n_items + 1, d, padding_idx=0)

    def output_embeddings(self):
        return self.item_emb.weight

    def output_queries(self, h):
        return h


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_full_softmax_ce_equals_reference_over_all_real_items(temperature):
    """ce = softmax over items 1..n (the padding row 0 is never a class), mean over target > 0."""
    torch.manual_seed(0)
    model = _Emb(37, 8)
    h = torch.randn(3, 5, 8, requires_grad=True)
    targets = torch.randint(1, 38, (3, 5))
    targets[0, :2] = 0  # padding positions are ignored
    cfg = TrainConfig(loss="ce", temperature=temperature)
    got = next_item_loss(model, h, targets, cfg)
    g_h, g_e = torch.autograd.grad(got, [h, model.item_emb.weight])

    mask = targets > 0
    logits = h[mask] @ model.item_emb.weight.t() / temperature
    logits = torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, 1:]], 1)
    ref = F.cross_entropy(logits, targets[mask])
    r_h, r_e = torch.autograd.grad(ref, [h, model.item_emb.weight])
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(g_h, r_h, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_e, r_e, rtol=1e-5, atol=1e-7)
    assert g_e[0].abs().sum() == 0  # the padding row gets no gradient


def test_ce_with_cosine_scores_equals_reference():
    """model.score=cosine: the loss sees unit-length hidden states and item rows, so rescaling
    either changes nothing; with temperature 0.05 it is CE over cosine / 0.05."""
    from elasticrec.config import ModelConfig
    from elasticrec.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(name="sasrec", max_len=5, d_model=8, score="cosine"), 37)
    h = torch.randn(3, 5, 8)
    targets = torch.randint(1, 38, (3, 5))
    cfg = TrainConfig(loss="ce", temperature=0.05)
    got = next_item_loss(model, h, targets, cfg)
    emb = model.item_emb.weight
    logits = F.cosine_similarity(h.reshape(-1, 1, 8), emb[None, 1:], dim=-1) / 0.05
    ref = F.cross_entropy(logits, targets.reshape(-1) - 1)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    assert next_item_loss(model, 7.0 * h, targets, cfg).item() == pytest.approx(got.item(), rel=1e-5)
    for loss in ("sampled", "bce"):  # every loss scores through the same normalised vectors
        torch.manual_seed(1)
        a = next_item_loss(model, h, targets, TrainConfig(loss=loss, n_negatives=8))
        torch.manual_seed(1)
        b = next_item_loss(model, 3.0 * h, targets, TrainConfig(loss=loss, n_negatives=8))
        assert a.item() == pytest.approx(b.item(), rel=1e-5)
