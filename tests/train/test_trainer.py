import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from elasticrec.config import ExperimentConfig, load_config, merge
from elasticrec.models import build_model
from elasticrec.train.batches import TrainSequences
from elasticrec.train.checkpoint import CheckpointError, load_checkpoint, load_last_weights
from elasticrec.train.losses import next_item_loss
from elasticrec.train.trainer import Trainer, TrainingError


def small_cfg(tmp_path, **train) -> ExperimentConfig:
    cfg = load_config(None, [
        "model.max_len=16", "model.d_model=32", "model.n_heads=2", "model.dropout=0.0",
        "train.epochs=6", "train.batch_size=16", "train.lr=0.005", "train.progress=false",
        "eval.ks=1,5,10", f"run_dir={tmp_path / 'run'}"])
    return merge(cfg, {"train": train}) if train else cfg


def test_batches_shift_and_left_pad(cyclic_data):
    ts = TrainSequences(cyclic_data, max_len=6)
    x, y = ts.batch(np.array([0]))
    train_part = cyclic_data.sequence(0)[:-2]
    assert list(y[0][y[0] > 0]) == list(train_part[1:][-6:])
    assert list(x[0][x[0] > 0]) == list(train_part[:-1][-6:])
    assert (x[0] > 0).tolist() == (y[0] > 0).tolist()


@pytest.mark.parametrize("loss", ["ce", "sampled", "bce"])
def test_losses_are_finite_and_learnable(cyclic_data, loss, tmp_path):
    cfg = small_cfg(tmp_path, loss=loss, n_negatives=8, logq=(loss == "sampled"))
    tr = Trainer(cfg, data=cyclic_data)
    x, y = tr.seqs.batch(tr.seqs.users[:8])
    h = tr.model.encode(torch.from_numpy(x))
    val = next_item_loss(tr.model, h, torch.from_numpy(y), cfg.train, tr.log_q)
    assert torch.isfinite(val)
    val.backward()
    assert tr.model.item_emb.weight.grad.abs().sum() > 0


def test_train_learns_and_writes_run_dir(cyclic_data, tmp_path):
    cfg = small_cfg(tmp_path)
    tr = Trainer(cfg, data=cyclic_data)
    res = tr.fit()
    run = tmp_path / "run"
    # next item is a deterministic function of the last two items: easy to learn
    assert res["HR@10"] > 0.6, res
    assert set(json.loads((run / "test_metrics.json").read_text())) >= {"HR@10", "NDCG@10", "MRR"}
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == list(range(6))
    assert "valid/NDCG@10" in lines[0] and "loss" in lines[0]
    assert (run / "config.yaml").exists() and (run / "data.json").exists()
    ck = run / "checkpoints"
    assert load_file(str(ck / "best.safetensors"))
    assert not list(ck.glob(".*tmp")), "temporary files left behind"
    # selection used validation only: the test set was scored exactly once, at the end
    assert all(not k.startswith("test") for ln in lines for k in ln)


def test_resume_continues_to_identical_result(cyclic_data, tmp_path):
    full = Trainer(small_cfg(tmp_path / "a", epochs=4), data=cyclic_data).fit()
    cfg = small_cfg(tmp_path / "b", epochs=4)
    Trainer(merge(cfg, {"train": {"epochs": 2}}), data=cyclic_data).fit()  # "interrupted" after 2
    resumed = Trainer(cfg, data=cyclic_data, resume=True)
    assert resumed.state.epoch == 2
    res = resumed.fit()
    for k in ("HR@10", "NDCG@10", "MRR"):
        assert res[k] == pytest.approx(full[k], abs=1e-6)


def test_stop_inside_an_epoch_then_resume_trains_like_an_uninterrupted_run(cyclic_data, tmp_path):
    """A max_steps / time-budget stop mid-epoch checkpoints its place; --resume finishes that epoch
    from the next batch with the same order and dropout stream (dropout on, so RNG matters)."""
    def cfg(name, **train):
        c = merge(small_cfg(tmp_path / name, epochs=3, **train), {"model": {"dropout": 0.3}})
        return c

    full = Trainer(cfg("a"), data=cyclic_data)
    full.fit()
    spe = full.steps_per_epoch
    assert spe >= 3
    stopped = Trainer(cfg("b", max_steps=spe + spe // 2), data=cyclic_data)
    stopped.fit()
    assert stopped.state.epoch == 1 and stopped.state.batch == spe // 2
    line = json.loads((tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["epoch"] == 1 and line["partial_epoch"] == pytest.approx((spe // 2) / spe)
    probe = build_model(stopped.cfg.model, cyclic_data.n_items)   # `evaluate --checkpoint last`'s loader
    info = load_last_weights(tmp_path / "b" / "run" / "checkpoints", probe)
    assert info == {"epoch": 1, "epochs_trained": 1, "partial_epoch": True}
    for (k, a), b in zip(stopped.model.state_dict().items(), probe.state_dict().values()):
        assert torch.equal(a, b), k
    resumed = Trainer(cfg("b"), data=cyclic_data, resume=True)
    assert (resumed.state.epoch, resumed.state.batch) == (1, spe // 2)
    resumed.fit()
    assert resumed.state.step == full.state.step == 3 * spe
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    la, lb = ([json.loads(x) for x in (tmp_path / n / "run" / "metrics.jsonl").read_text().splitlines()]
              for n in ("a", "b"))
    assert [x["epoch"] for x in lb] == [0, 1, 2]  # the partial line was replaced by the whole epoch's
    assert lb[1]["resumed_at_batch"] == spe // 2
    for x, y in zip(la, lb):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-12)
        assert x["valid/NDCG@10"] == y["valid/NDCG@10"]


def test_corrupted_checkpoint_is_detected(cyclic_data, tmp_path):
    cfg = small_cfg(tmp_path, epochs=1)
    tr = Trainer(cfg, data=cyclic_data)
    tr.fit()
    ck = tmp_path / "run" / "checkpoints"
    w = next(ck.glob("epoch-*.safetensors"))
    w.write_bytes(w.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(ck, tr.model)


def test_checkpoint_sweeps_temporaries_of_a_killed_writer(cyclic_data, tmp_path):
    """A writer killed by SIGKILL inside atomic_path leaves its .<name>.*.tmp behind; the next
    checkpoint of the resumed run removes it and keeps the checkpoint it just wrote."""
    cfg = small_cfg(tmp_path, epochs=1)
    Trainer(cfg, data=cyclic_data).fit()
    ck = tmp_path / "run" / "checkpoints"
    stale = ck / ".epoch-0001.state.pt.abc123.tmp"
    stale.write_bytes(b"half a file")
    tr = Trainer(merge(cfg, {"train": {"epochs": 2}}), data=cyclic_data, resume=True)
    tr.fit()
    assert not list(ck.glob(".*.tmp"))
    assert json.loads((ck / "last.json").read_text())["epoch"] == 1
    load_checkpoint(ck, tr.model)


def test_existing_run_dir_is_not_overwritten(cyclic_data, tmp_path):
    cfg = small_cfg(tmp_path, epochs=1)
    Trainer(cfg, data=cyclic_data).fit()
    with pytest.raises(TrainingError, match="already holds a run"):
        Trainer(cfg, data=cyclic_data)


def test_nonfinite_loss_stops_with_step(cyclic_data, tmp_path):
    cfg = small_cfg(tmp_path, epochs=1, lr=1e30, grad_clip=None)
    tr = Trainer(cfg, data=cyclic_data)
    with torch.no_grad():
        tr.model.item_emb.weight.mul_(float("inf"))
    with pytest.raises(TrainingError, match="non-finite loss .* step 0"):
        tr.fit()


def test_elastic_trains_with_memory(cyclic_data, tmp_path):
    cfg = merge(small_cfg(tmp_path), {"model": {"name": "elastic", "elastic": {
        "n_dispatchers": 4, "chunk_size": 4, "memory": True, "memory_n_keys": 8,
        "memory_heads": 2, "memory_topk": 4, "memory_key_dim": 16}}})
    res = Trainer(cfg, data=cyclic_data).fit()
    assert res["HR@10"] > 0.6, res
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 0 < lines[-1]["memory1/frac_used"] <= 1


def test_warmup_cosine_schedule(cyclic_data, tmp_path):
    cfg = small_cfg(tmp_path, schedule="cosine", warmup_steps=4, epochs=2)
    tr = Trainer(cfg, data=cyclic_data)
    total = tr.steps_per_epoch * 2
    lrs = []
    for _ in range(total):
        lrs.append(tr.sched.get_last_lr()[0])
        tr.opt.step()
        tr.sched.step()
    assert lrs[0] == pytest.approx(0.005 / 4) and lrs[3] == pytest.approx(0.005)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))  # decays after warm-up
    assert lrs[-1] < 0.005 * 0.2  # cos(3pi/4) point of the 4 post-warm-up steps


def test_cosine_scores_train_and_learn(cyclic_data, tmp_path):
    """model.score=cosine with HSTU's temperature of 0.05 learns the deterministic sequences."""
    cfg = merge(small_cfg(tmp_path, temperature=0.05), {"model": {"score": "cosine"}})
    res = Trainer(cfg, data=cyclic_data).fit()
    assert res["HR@10"] > 0.6, res


def test_chunked_and_plain_ce_train_the_same_model(cyclic_data, tmp_path):
    """The block-wise CE (default) and F.cross_entropy give the same training run: two epochs of
    the trainer, ELASTIC, end with the same weights to float tolerance."""
    weights = []
    for impl, rows in (("plain", 0), ("chunked", 7)):
        cfg = small_cfg(tmp_path / impl, epochs=2, ce_impl=impl, ce_chunk_rows=rows)
        cfg = merge(cfg, {"model": {"name": "elastic", "elastic": {"chunk_size": 4, "n_dispatchers": 3}}})
        tr = Trainer(cfg, data=cyclic_data)
        tr.fit()
        weights.append(torch.cat([p.detach().flatten() for p in tr.model.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-5)


def test_bf16_on_cpu_caps_onednns_shape_cache_unless_the_user_did(cyclic_data, tmp_path, monkeypatch):
    """bf16 autocast on CPU caches one oneDNN primitive per shape (1,024 by default); the loss's
    row count changes every batch, so without a cap a long CPU run grows by gigabytes."""
    import os

    from elasticrec.utils import ONEDNN_CACHE_CAPACITY

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    Trainer(small_cfg(tmp_path / "fp32", amp="off", device="cpu"), data=cyclic_data)
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ  # fp32: untouched
    tr = Trainer(small_cfg(tmp_path / "bf16", amp="bf16", device="cpu", epochs=1), data=cyclic_data)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == ONEDNN_CACHE_CAPACITY
    assert np.isfinite(tr.fit()["NDCG@10"])  # and bf16 training on CPU runs end to end
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8")
    Trainer(small_cfg(tmp_path / "own", amp="bf16", device="cpu"), data=cyclic_data)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "8"  # the user's value is kept


def test_last_epoch_is_validated_even_off_the_eval_every_grid(cyclic_data, tmp_path):
    """eval_every larger than epochs once left no best checkpoint, and the test step failed."""
    import json

    tr = Trainer(small_cfg(tmp_path, epochs=3, eval_every=2), data=cyclic_data)
    res = tr.fit()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if "valid/NDCG@10" in r] == [1, 2]
    assert res["best_epoch"] in (1, 2) and np.isfinite(res["NDCG@10"])


@pytest.mark.parametrize("windows", ["all", "random"])
def test_train_windows_learn_and_size_the_epoch(cyclic_data, tmp_path, windows):
    cfg = merge(small_cfg(tmp_path, windows=windows, epochs=3), {"model": {"max_len": 6}})
    tr = Trainer(cfg, data=cyclic_data)
    last = TrainSequences(cyclic_data, 6)
    assert (len(tr.seqs) > len(last)) == (windows == "all")  # histories of 8-20 items, L=6
    assert tr.steps_per_epoch == -(-len(tr.seqs) // 16)
    res = tr.fit()
    assert res["HR@10"] > 0.5, res
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 3 * tr.steps_per_epoch


def test_run_saves_the_validation_ranks_of_the_tested_weights(cyclic_data, tmp_path):
    """valid_ranks.npz (for `compare --stage-gap`) holds the best checkpoint's validation ranks:
    their NDCG@10 is the selected epoch's logged validation score; a refit writes none."""
    from elasticrec.cli import main
    from elasticrec.evaluate import metrics_from_ranks
    from elasticrec.evaluate.significance import load_ranks

    res = Trainer(small_cfg(tmp_path, epochs=3), data=cyclic_data).fit()
    run = tmp_path / "run"
    users, ranks, meta = load_ranks(run, "valid")
    assert meta["stage"] == "valid" and meta["epoch"] == res["best_epoch"]
    assert (users == np.sort(cyclic_data.eval_users("valid"))).all()
    assert metrics_from_ranks(ranks, (10,))["NDCG@10"] == pytest.approx(res["valid_NDCG@10"], abs=1e-9)
    assert main(["compare", str(run), str(run), "--stage-gap", "--resamples", "100"]) == 0

    refit = Trainer(small_cfg(tmp_path / "refit", fit="train+valid", epochs=1), data=cyclic_data)
    refit.fit()
    assert not (tmp_path / "refit" / "run" / "valid_ranks.npz").exists()


def test_refit_never_validates_and_tests_the_final_weights(cyclic_data, tmp_path):
    """train.fit=train+valid: exactly `epochs` epochs (patience does not apply), no validation
    metrics, the final weights saved as the tested ones, and the run labelled as a refit."""
    cfg = small_cfg(tmp_path, fit="train+valid", epochs=3, patience=1)
    tr = Trainer(cfg, data=cyclic_data)
    assert tr.seqs.fit == "train+valid" and (tr.seqs.train_len == cyclic_data.lengths - 1).all()
    res = tr.fit()
    run = tmp_path / "run"
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == [0, 1, 2]
    assert not any(k.startswith("valid") for ln in lines for k in ln)
    assert res["fit"] == "train+valid" and res["best_epoch"] == 2 and res["valid_NDCG@10"] is None
    assert res["HR@10"] > 0.3, res
    final = load_file(str(next((run / "checkpoints").glob("epoch-0002.safetensors"))))
    best = load_file(str(run / "checkpoints" / "best.safetensors"))
    assert all(torch.equal(final[k], best[k]) for k in final)  # tested = final weights
    assert np.load(run / "test_ranks.npz")["meta"].item().find('"fit": "train+valid"') >= 0


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_native_bf16_warns(native, cyclic_data, tmp_path, monkeypatch):
    """Emulated bf16 (no AVX512-BF16 / AMX) is about 9x slower than fp32: say so, once."""
    import warnings

    from elasticrec.train import trainer

    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(small_cfg(tmp_path / "bf16", amp="bf16", device="cpu"), data=cyclic_data)
        Trainer(small_cfg(tmp_path / "fp32", amp="off", device="cpu"), data=cyclic_data)
    said = [str(w.message) for w in caught if "native bf16" in str(w.message)]
    assert len(said) == (0 if native else 1) and all("train.amp=off" in m for m in said)


def test_cpu_has_native_bf16_answers():
    from elasticrec.utils import cpu_has_native_bf16

    assert isinstance(cpu_has_native_bf16(), bool)


@pytest.mark.parametrize("model", ["sasrec", "elastic"])
def test_trimmed_batches_train_the_same_model_as_padded_ones(cyclic_data, tmp_path, model):
    """train.batching=trimmed cuts each batch to its longest window; the models ignore left
    padding, so without dropout two epochs end with the same weights as padded batches."""
    weights = []
    for batching in ("padded", "trimmed"):
        cfg = merge(small_cfg(tmp_path / batching, epochs=2, batching=batching),
                    {"model": {"name": model, "max_len": 48,
                               "elastic": {"chunk_size": 4, "n_dispatchers": 3}}})
        tr = Trainer(cfg, data=cyclic_data)
        tr.fit()
        weights.append(torch.cat([p.detach().flatten() for p in tr.model.parameters()]))
    # atol 1e-4: the key bias's true gradient is 0 (a softmax ignores a shift shared by all keys),
    # so Adam turns float noise of either shape into steps of up to lr on it
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-4)


def test_bucketed_batches_learn_and_keep_the_epoch_size(cyclic_data, tmp_path):
    cfg = small_cfg(tmp_path, batching="bucketed", bucket_pool=2, epochs=4)
    tr = Trainer(cfg, data=cyclic_data)
    res = tr.fit()
    assert res["HR@10"] > 0.5, res
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 4 * tr.steps_per_epoch
    # each step's loss sum is divided by the epoch's mean target tokens per batch, not its own
    n_targets = sum(min(len(cyclic_data.sequence(int(u))) - 3, 16) for u in tr.seqs.users)  # L = 16
    assert tr.tokens_per_batch == pytest.approx(n_targets / tr.steps_per_epoch)
    assert Trainer(small_cfg(tmp_path / "padded"), data=cyclic_data).tokens_per_batch is None
    from elasticrec.config import ConfigError

    with pytest.raises(ConfigError, match="bucket_pool"):
        Trainer(small_cfg(tmp_path / "bad", batching="bucketed", bucket_pool=0), data=cyclic_data)
    with pytest.raises(ConfigError, match="batching"):
        small_cfg(tmp_path / "bad2", batching="sorted")
