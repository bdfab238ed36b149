"""Checks shared by the model tests (imported as a plain module, like tests/serving/serving_helpers)."""

from __future__ import annotations

import torch


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
