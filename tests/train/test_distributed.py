"""DistributedDataParallel (gloo, CPU) with one or two processes equals a plain single process
with the same global batch and seed: real ``torchrun`` subprocesses, as a user would launch them.
One process still joins the process group and runs every collective (what a one-GPU nccl run
exercises)."""

import json
import os
import subprocess
import sys

import pytest

from elasticrec.evaluate.significance import load_ranks, per_user

ARGS = ["train", "--dataset", "synthetic", "--model", "sasrec", "--no-progress",
        "--set", "data.synthetic.n_users=96", "--set", "data.synthetic.n_items=60",
        "--set", "data.synthetic.min_len=10", "--set", "data.synthetic.max_len=30",
        "--set", "data.synthetic.n_clusters=6", "--set", "model.max_len=24", "--set", "model.d_model=16",
        "--set", "model.dropout=0.0", "--set", "train.batch_size=20", "--set", "train.epochs=3",
        "--set", "train.lr=0.005", "--set", "train.num_threads=1", "--set", "eval.ks=1,10"]


def _run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ELASTICREC_CACHE": str(tmp_path / "cache")}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]


def _valid(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process test runs on Linux")
@pytest.mark.parametrize("nproc", [2, 1])
def test_torchrun_gloo_matches_single_process(tmp_path, nproc):
    single, multi = tmp_path / "single", tmp_path / "ddp"
    _run([sys.executable, "-m", "elasticrec", *ARGS, "--run-dir", str(single)], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
          "-m", "elasticrec", *ARGS, "--run-dir", str(multi)], tmp_path)
    a, b = _valid(single), _valid(multi)
    assert len(a) == len(b) == 3
    for ea, eb in zip(a, b):
        assert eb["step"] == ea["step"]  # same number of global batches
        assert eb["loss"] == pytest.approx(ea["loss"], rel=1e-4)
        assert eb["valid/n_users"] == ea["valid/n_users"] == 96  # shards merged exactly
        for k in ("valid/HR@10", "valid/NDCG@10", "valid/MRR"):
            assert eb[k] == pytest.approx(ea[k], abs=1e-3), k
    ta = json.loads((single / "test_metrics.json").read_text())
    tb = json.loads((multi / "test_metrics.json").read_text())
    assert tb["NDCG@10"] == pytest.approx(ta["NDCG@10"], abs=1e-3)
    # the per-user test ranks gathered from the shards cover every user once, in user order
    ua, ra, _ = load_ranks(single)
    ub, rb, _ = load_ranks(multi)
    assert ua.tolist() == ub.tolist() == list(range(96))
    assert per_user(rb, "NDCG@10").mean() == pytest.approx(tb["NDCG@10"])
    # only rank 0 wrote the run directory: one line per epoch, no duplicates
    assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir())
