import numpy as np
import pytest
import torch

from elasticrec.data.sequences import SequenceData


def make_cyclic_data(n_users=64, n_items=30, min_len=8, max_len=20, seed=0) -> SequenceData:
    """Each user walks the item cycle 1..n with step 1 or 2 (per user): next item is predictable."""
    rng = np.random.default_rng(seed)
    seqs = []
    for u in range(n_users):
        n = int(rng.integers(min_len, max_len + 1))
        start, step = int(rng.integers(0, n_items)), 1 + (u % 2)
        seqs.append((start + step * np.arange(n)) % n_items + 1)
    lens = np.array([len(s) for s in seqs])
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return SequenceData(
        items=np.concatenate(seqs).astype(np.int64), offsets=offsets, n_items=n_items,
        item_raw_ids=np.array(["<pad>"] + [f"i{i}" for i in range(1, n_items + 1)]),
        user_raw_ids=np.array([f"u{u}" for u in range(n_users)]), meta={"name": "cyclic"})


@pytest.fixture
def cyclic_data():
    return make_cyclic_data()


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(2)
    yield
