"""Checks shared by the model tests (imported as a plain module, like tests/serving/serving_helpers)."""

from __future__ import annotations

import torch

# ELASTIC options taken from HSTU (each needs no more than the local chunk)
HSTU_LIKE = {"local_position_bias": True, "output_gate": True}
HSTU_FULL = {**HSTU_LIKE, "output_norm": True}
# every position also reads the previous chunk exactly (with the distance bias over 2C)
LOOKBACK = {"local_lookback": True, "local_position_bias": True}


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values (N(0, 0.25)) for every parameter, e.g. the zero-initialised empty logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return module


def assert_no_gradient_from_future(model, items: torch.Tensor, t: int, encode=None) -> None:
    """The outputs at positions <= t have a gradient path to the item embeddings at positions
    <= t and none to those after t. ``encode(items)`` defaults to ``model.encode(items)``."""
    encode = encode or model.encode
    emb = model.item_emb(items).detach().requires_grad_(True)
    hook = model.item_emb.register_forward_hook(lambda mod, inp, out: emb)
    try:
        g, = torch.autograd.grad(encode(items)[:, : t + 1].sum(), emb)
    finally:
        hook.remove()
    assert g[:, t + 1:].abs().max() == 0
    assert g[:, : t + 1].abs().max() > 0


def assert_no_future_leakage(model, items: torch.Tensor, t: int, n_items: int,
                             timestamps: torch.Tensor | None = None) -> None:
    """Forward: new items after position ``t`` (ids in 1..n_items; with ``timestamps``, later
    times after ``t`` too) leave the outputs at <= t exactly as they were and change those after.
    Backward: :func:`assert_no_gradient_from_future`."""
    def encode(it, ts):
        return model.encode(it) if ts is None else model.encode(it, ts)

    base = encode(items, timestamps)
    changed, later = items.clone(), None
    changed[:, t + 1:] = torch.randint(1, n_items + 1, changed[:, t + 1:].shape)
    if timestamps is not None:
        later = timestamps.clone()
        later[:, t + 1:] += 12345
    out = encode(changed, later)
    torch.testing.assert_close(base[:, : t + 1], out[:, : t + 1])
    assert not torch.allclose(base[:, t + 1:], out[:, t + 1:])
    assert_no_gradient_from_future(model, items, t, encode=lambda it: encode(it, timestamps))


def left_valid(L: int, lengths) -> torch.Tensor:
    """[len(lengths), L] mask of left-padded rows holding the given numbers of items."""
    return torch.arange(L)[None, :] >= (L - torch.tensor(lengths))[:, None]


def assert_layer_padding_and_batch_invariant(layer, d: int, generator: torch.Generator,
                                             extras=(0, 5, 37), n: int = 13,
                                             lengths=(13, 3, 29, 8)) -> None:
    """A sequence layer ``layer(x [B, L, d], valid)``: extra left padding (whatever its content)
    never changes a sequence's outputs and padding outputs are zero; each row alone (unpadded)
    equals that row inside a padded batch."""
    g = generator
    seq = torch.randn(1, n, d, generator=g)
    base = layer(seq)  # no padding at all
    for extra in extras:
        junk = torch.randn(1, extra, d, generator=g) * 10  # padding content must not matter
        yp = layer(torch.cat([junk, seq], dim=1), left_valid(n + extra, [n]))
        torch.testing.assert_close(yp[:, extra:], base, rtol=1e-5, atol=1e-6)
        assert torch.all(yp[:, :extra] == 0)
    seqs = [torch.randn(1, ln, d, generator=g) for ln in lengths]
    Lb = max(lengths)
    xb = torch.cat([torch.cat([torch.randn(1, Lb - s.shape[1], d, generator=g), s], 1) for s in seqs])
    yb = layer(xb, left_valid(Lb, list(lengths)))
    for i, s in enumerate(seqs):
        torch.testing.assert_close(yb[i, Lb - s.shape[1]:], layer(s)[0], rtol=1e-5, atol=1e-6)


def assert_layer_causal(layer, d: int, generator: torch.Generator, L: int = 11) -> None:
    """A sequence layer ``layer(x [B, L, d], valid)`` in float64: for every t, new inputs after t
    leave the outputs at <= t bit-identical, and those outputs have no gradient from them."""
    g = generator
    x = torch.randn(2, L, d, generator=g, dtype=torch.float64)
    valid = left_valid(L, [L, 8])
    y = layer(x, valid)
    for t in range(L - 1):
        x2 = x.clone()
        x2[:, t + 1:] = torch.randn(2, L - t - 1, d, generator=g, dtype=torch.float64) * 3
        assert torch.equal(y[:, : t + 1], layer(x2, valid)[:, : t + 1]), t
        xg = x.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(layer(xg, valid)[:, : t + 1].sum(), xg)
        assert torch.all(gx[:, t + 1:] == 0), t
        assert gx[:, : t + 1].abs().sum() > 0, t
