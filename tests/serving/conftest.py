"""A tiny trained run with string item ids (``m101``...), rebuilt from its own config.yaml."""

import pytest
import torch
from serving_helpers import MAX_LEN, write_cyclic_seq_text

from elasticrec.config import load_config
from elasticrec.train.trainer import Trainer


def _train_tiny(root, overrides):
    """Train on the cyclic string-id data under ``root``; the run directory is ``root / "run"``."""
    data_file = root / "cyclic.txt"
    write_cyclic_seq_text(data_file)
    cfg = load_config(None, [
        "data.name=custom", "data.format=seq-text", f"data.path={data_file}",
        f"data.cache_dir={root / 'cache'}",
        f"model.max_len={MAX_LEN}", "model.d_model=32", "model.n_heads=2", "model.dropout=0.0",
        "train.batch_size=16", "train.lr=0.01", "train.progress=false",
        "train.device=cpu", "eval.ks=1,5,10", f"run_dir={root / 'run'}", *overrides])
    torch.set_num_threads(2)
    Trainer(cfg).fit()
    return root / "run"


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    return _train_tiny(tmp_path_factory.mktemp("serving"), ["train.epochs=4"])


@pytest.fixture(scope="session")
def rec(run_dir):
    from elasticrec.serving import load_run

    return load_run(run_dir)


@pytest.fixture(scope="session")
def elastic_run(tmp_path_factory):
    """A tiny streaming ELASTIC run (chunk_align=start, learned-start positions)."""
    return _train_tiny(tmp_path_factory.mktemp("serving-elastic"), [
        "model.name=elastic", "model.pos_encoding=learned-start", "model.elastic.chunk_align=start",
        "model.elastic.chunk_size=4", "model.elastic.n_dispatchers=4", "train.epochs=3"])
