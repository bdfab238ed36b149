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


@pytest.mark.parametrize("impl,rows", [("plain", 0), ("chunked", 0), ("chunked", 4), ("chunked", 1)])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_full_softmax_ce_equals_reference_over_all_real_items(temperature, impl, rows):
    """ce = softmax over items 1..n (the padding row 0 is never a class), mean over target > 0."""
    torch.manual_seed(0)
    model = _Emb(37, 8)
    h = torch.randn(3, 5, 8, requires_grad=True)
    targets = torch.randint(1, 38, (3, 5))
    targets[0, :2] = 0  # padding positions are ignored
    cfg = TrainConfig(loss="ce", temperature=temperature, ce_impl=impl, ce_chunk_rows=rows)
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


def test_chunked_ce_sum_no_grad_and_second_use_of_inputs():
    """reduction="sum", inputs that need no gradient (evaluation), and inputs that also feed
    another term of the loss: the block-wise CE composes with autograd like F.cross_entropy."""
    from elasticrec.train.losses import chunked_linear_ce

    torch.manual_seed(1)
    h = torch.randn(13, 6, requires_grad=True)
    w = torch.randn(29, 6, requires_grad=True)
    t = torch.randint(0, 29, (13,))
    with torch.no_grad():
        assert chunked_linear_ce(h, w, t, 2.0, rows=5).item() == pytest.approx(
            F.cross_entropy(2.0 * h @ w.t(), t, reduction="sum").item(), rel=1e-6)
    got = chunked_linear_ce(h, w, t, 2.0, rows=5) * 0.3 + (h ** 2).sum() + w.sum()
    ref = F.cross_entropy(2.0 * h @ w.t(), t, reduction="sum") * 0.3 + (h ** 2).sum() + w.sum()
    for a, b in zip(torch.autograd.grad(got, [h, w]), torch.autograd.grad(ref, [h, w])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # only one input needs a gradient
    w2 = w.detach()
    g, = torch.autograd.grad(chunked_linear_ce(h, w2, t, rows=4), [h])
    r, = torch.autograd.grad(F.cross_entropy(h @ w2.t(), t, reduction="sum"), [h])
    torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_chunked_ce_under_bf16_autocast_matches_fp32_reference():
    """Under autocast the block matmuls run in bf16, softmax statistics and the loss in fp32; the
    gradients come back in the inputs' dtypes, within bf16 tolerance of the fp32 reference."""
    from elasticrec.train.losses import chunked_linear_ce

    torch.manual_seed(2)
    h = torch.randn(40, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    t = torch.randint(0, 50, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = chunked_linear_ce(h, w, t, 0.5, rows=16)
    assert got.dtype == torch.float32
    g_h, g_w = torch.autograd.grad(got, [h, w])
    assert g_h.dtype == g_w.dtype == torch.float32
    ref = F.cross_entropy(0.5 * h @ w.t(), t, reduction="sum")
    r_h, r_w = torch.autograd.grad(ref, [h, w])
    assert got.item() == pytest.approx(ref.item(), rel=2e-2)
    torch.testing.assert_close(g_h, r_h, rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(g_w, r_w, rtol=5e-2, atol=5e-2)


def _sampled_reference(h, targets, emb, negatives, temperature):
    """Textbook sampled softmax, one position at a time: the target against its own list of
    negatives, accidental hits (a negative equal to the target) left out."""
    losses = []
    for q, t, negs in zip(h, targets, negatives):
        negs = [n for n in negs.tolist() if n != t.item()]
        logits = torch.stack([q @ emb[t]] + [q @ emb[n] for n in negs]) / temperature
        losses.append(-torch.log_softmax(logits, 0)[0])
    return torch.stack(losses).mean()


@pytest.mark.parametrize("negatives_per,rows,blockwise", [("batch", 0, True), ("position", 0, True),
                                                          ("position", 4, True), ("position", 0, False)])
def test_sampled_softmax_equals_reference(negatives_per, rows, blockwise, monkeypatch):
    """negatives_per=batch: one draw of n_negatives items shared by every position (duplicates
    merged); position: a fresh draw for each position (generative-recommenders' local sampling;
    computed block by block against the whole table, a class drawn twice counting twice). Both
    against the per-position textbook loss on the same draws, loss and gradients. blockwise=False:
    the gathered-rows path that large catalogues take."""
    from elasticrec.train import losses

    if not blockwise:
        monkeypatch.setattr(losses, "BLOCKWISE_ITEMS_PER_NEGATIVE", 0)
    torch.manual_seed(0)
    n_items, k = 11, 6  # a small catalogue, so accidental hits and duplicates do occur
    model = _Emb(n_items, 4)
    h = torch.randn(3, 5, 4, requires_grad=True)
    targets = torch.randint(1, n_items + 1, (3, 5))
    targets[1, :3] = 0
    cfg = TrainConfig(loss="sampled", n_negatives=k, in_batch_negatives=False, negatives_per=negatives_per,
                      temperature=0.5, ce_chunk_rows=rows)
    torch.manual_seed(7)
    got = next_item_loss(model, h, targets, cfg)
    g_h, g_e = torch.autograd.grad(got, [h, model.item_emb.weight])

    mask = targets > 0
    n = int(mask.sum())
    torch.manual_seed(7)  # the same draw the loss made
    if negatives_per == "batch":
        negatives = torch.unique(torch.randint(1, n_items + 1, (k,))).expand(n, -1)
    else:
        negatives = torch.randint(1, n_items + 1, (n, k))
        assert any(len(set(r.tolist())) > 1 for r in negatives.t())  # positions differ
        assert any(len(set(r.tolist())) < k for r in negatives)  # and some draw a class twice
    ref = _sampled_reference(h[mask], targets[mask], model.item_emb.weight, negatives, 0.5)
    r_h, r_e = torch.autograd.grad(ref, [h, model.item_emb.weight])
    assert (negatives == targets[mask][:, None]).any()  # the draw holds accidental hits
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(g_h, r_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_e, r_e, rtol=1e-5, atol=1e-6)


def test_per_position_negatives_add_to_in_batch_ones():
    """in_batch_negatives with negatives_per=position: each position's softmax holds the batch's
    targets and its own uniform draw; neither alone gives the same loss."""
    torch.manual_seed(0)
    model = _Emb(50, 8)
    h = torch.randn(2, 6, 8)
    targets = torch.randint(1, 51, (2, 6))
    losses = {}
    for name, kw in {"both": dict(in_batch_negatives=True, n_negatives=5),
                     "in-batch": dict(in_batch_negatives=True, n_negatives=0),
                     "uniform": dict(in_batch_negatives=False, n_negatives=5)}.items():
        torch.manual_seed(3)
        losses[name] = next_item_loss(model, h, targets, TrainConfig(loss="sampled", negatives_per="position", **kw))
    assert losses["both"] > losses["in-batch"] and losses["both"] > losses["uniform"]
    # the combined path (gathered rows) against the textbook loss on the same draws
    mask = targets > 0
    torch.manual_seed(3)
    own = torch.randint(1, 51, (int(mask.sum()), 5))
    negatives = torch.cat([torch.unique(targets[mask]).expand(len(own), -1), own], 1)
    ref = _sampled_reference(h[mask], targets[mask], model.item_emb.weight, negatives, 1.0)
    assert losses["both"].item() == pytest.approx(ref.item(), rel=1e-5)
    with pytest.raises(ValueError, match="needs in_batch_negatives or n_negatives"):
        next_item_loss(model, h, targets, TrainConfig(loss="sampled", in_batch_negatives=False, n_negatives=0,
                                                      negatives_per="position"))
