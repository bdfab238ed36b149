"""Shared helpers of the serving tests (a cyclic dataset with string item ids)."""

import numpy as np

N_ITEMS, N_USERS, MAX_LEN = 30, 64, 12


def item_raw(i: int) -> str:
    return f"m{100 + i}"


def write_cyclic_seq_text(path, n_users=N_USERS, n_items=N_ITEMS, seed=0):
    """Users walk the item cycle with step 1 (even users) or 2 (odd): next item is predictable."""
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(n_users):
        n = int(rng.integers(8, 21))
        start, step = int(rng.integers(0, n_items)), 1 + (u % 2)
        seq = (start + step * np.arange(n)) % n_items + 1
        lines.append(" ".join([f"u{u}"] + [item_raw(int(i)) for i in seq]))
    path.write_text("\n".join(lines) + "\n")


def cycle_next(item: int, step: int) -> int:
    return (item - 1 + step) % N_ITEMS + 1
