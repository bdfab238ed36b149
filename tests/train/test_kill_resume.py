"""A run killed with SIGKILL mid-epoch and restarted with --resume ends exactly like an
uninterrupted run (CPU, deterministic mode): real subprocess, real kill."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ARGS = ["train", "--dataset", "synthetic", "--model", "sasrec", "--no-progress",
        "--set", "data.synthetic.n_users=400", "--set", "data.synthetic.n_items=80",
        "--set", "data.synthetic.min_len=20", "--set", "data.synthetic.max_len=60",
        "--set", "data.synthetic.n_clusters=6", "--set", "model.max_len=48", "--set", "model.d_model=32",
        "--set", "train.batch_size=8", "--set", "train.epochs=4", "--set", "train.num_threads=1",
        "--set", "train.deterministic=true", "--set", "eval.ks=1,10"]


def _env(tmp_path):
    return {**os.environ, "OMP_NUM_THREADS": "1", "ELASTICREC_CACHE": str(tmp_path / "cache")}


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    cmd = [sys.executable, "-m", "elasticrec", *ARGS]
    subprocess.run(cmd + ["--run-dir", str(ref)], check=True, env=_env(tmp_path), timeout=300,
                   capture_output=True)

    p = subprocess.Popen(cmd + ["--run-dir", str(killed)], env=_env(tmp_path),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = killed / "checkpoints" / "last.json"
    deadline = time.time() + 120
    while not manifest.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert manifest.exists() and p.poll() is None, "run ended before it could be killed"
    time.sleep(0.5)  # now inside the next epoch
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (killed / "test_metrics.json").exists()
    epoch_at_kill = json.loads(manifest.read_text())["epoch"]
    assert epoch_at_kill < 3, "kill arrived too late to interrupt training"

    r = subprocess.run([sys.executable, "-m", "elasticrec", "train", "--run-dir", str(killed), "--resume",
                        "--no-progress"], env=_env(tmp_path), timeout=300, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    a = json.loads((ref / "test_metrics.json").read_text())
    b = json.loads((killed / "test_metrics.json").read_text())
    for k in ("HR@10", "NDCG@10", "MRR"):
        assert b[k] == pytest.approx(a[k], abs=1e-9), k
    la = (ref / "metrics.jsonl").read_text().splitlines()
    lb = (killed / "metrics.jsonl").read_text().splitlines()
    assert len(la) == len(lb) == 4
    for x, y in zip(la, lb):
        x, y = json.loads(x), json.loads(y)
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-9)
        assert x["valid/NDCG@10"] == pytest.approx(y["valid/NDCG@10"], abs=1e-9)
    assert not list((killed / "checkpoints").glob(".*.tmp")), "temporary files left behind"
