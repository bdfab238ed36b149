"""Counting the PyTorch ops a piece of code issues (benchmarks/op_count.py, benchmarks/chunk_scan.py).

On a GPU every op that is not a view is at least one kernel launch, so the count is the launch
floor of a small model's step."""

from __future__ import annotations

# ops that only make a new view of existing memory (no kernel on a GPU); ``reshape`` and ``to``
# can copy but seldom do in these models, so they are counted as views too
VIEW_OPS = {f"aten::{n}" for n in (
    "view", "_unsafe_view", "reshape", "narrow", "slice", "select", "transpose", "permute", "t",
    "unsqueeze", "squeeze", "expand", "expand_as", "as_strided", "unflatten", "flatten", "detach",
    "alias", "split", "split_with_sizes", "unbind", "chunk", "view_as", "contiguous", "to",
    "lift_fresh", "numpy_T", "movedim", "unfold", "diagonal", "real", "_reshape_alias")}


def top_level_ops(fn) -> tuple[int, int]:
    """(all, compute) top-level ATen ops of one call of ``fn``: those not called from inside
    another ATen op (backward included), and of them those that are not views (``VIEW_OPS``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = [e.name for e in prof.events() if e.name.startswith("aten::")
             and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return len(names), sum(1 for n in names if n not in VIEW_OPS)
