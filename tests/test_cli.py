import json
import subprocess
import sys

import pytest

from elasticrec.cli import main
from elasticrec.config import load_config
from elasticrec.data import load_dataset
from elasticrec.evaluate.significance import load_ranks, per_user

SMALL = ["--set", "data.synthetic.n_users=60", "--set", "data.synthetic.n_items=40",
         "--set", "data.synthetic.min_len=10", "--set", "data.synthetic.max_len=30",
         "--set", "data.synthetic.n_clusters=4", "--set", "model.max_len=24",
         "--set", "model.d_model=16", "--set", "train.batch_size=32", "--set", "eval.ks=1,10"]


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["evaluate", "--help"], ["refit", "--help"], ["compare", "--help"],
                                  ["data", "stats", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_top_level_help_lists_every_command_with_examples(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("train", "refit", "evaluate", "compare", "data", "models", "recommend", "serve", "bench"):
        assert cmd in out
    assert "examples:" in out and "``" not in out


def test_train_then_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--dataset", "synthetic", "--model", "sasrec", "--epochs", "2",
               "--run-dir", str(run), "--no-progress", *SMALL])
    assert rc == 0
    test = json.loads((run / "test_metrics.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["HR@10"] == pytest.approx(test["HR@10"])
    assert main(["evaluate", "--run", str(run), "--protocol", "sampled"]) == 0
    assert json.loads(capsys.readouterr().out)["protocol"].startswith("SAMPLED")


def test_runs_save_ranks_and_compare_pairs_them(tmp_path, capsys):
    """Training saves each test user's rank; `evaluate --save-ranks` reproduces them from the best
    checkpoint; `compare` pairs two runs, and refuses a run without ranks or another protocol."""
    a, b = tmp_path / "a", tmp_path / "b"
    for run, seed in ((a, 0), (b, 1)):
        assert main(["train", "--dataset", "synthetic", "--model", "sasrec", "--epochs", "2", "--run-dir", str(run),
                     "--no-progress", "--set", f"train.seed={seed}", *SMALL]) == 0
    users, ranks, meta = load_ranks(a)
    test = json.loads((a / "test_metrics.json").read_text())
    assert len(users) == test["n_users"] == 60
    assert per_user(ranks, "NDCG@10").mean() == pytest.approx(test["NDCG@10"])
    assert meta["model"] == "sasrec" and meta["protocol"] == "full" and meta["epoch"] == test["best_epoch"]

    again = tmp_path / "again.npz"
    assert main(["evaluate", "--run", str(a), "--save-ranks", str(again)]) == 0
    assert load_ranks(again)[1].tolist() == ranks.tolist()
    assert main(["evaluate", "--run", str(a), "--stage", "valid", "--save-ranks"]) == 0
    assert load_ranks(a, "valid")[2]["stage"] == "valid"
    capsys.readouterr()

    assert main(["compare", str(a), str(a), "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "| NDCG@10 |" in out and "+0.0000 | [+0.0000, +0.0000] | 1.0000 | 0 | 0 |" in out
    assert main(["compare", str(a), str(b), "--resamples", "200", "--metrics", "HR@1,MRR", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["results"]
    assert [r["metric"] for r in res] == ["HR@1", "MRR"]
    assert res[1]["diff"] == pytest.approx(res[1]["b"] - res[1]["a"])
    assert res[1]["ci_low"] <= res[1]["diff"] <= res[1]["ci_high"]

    assert main(["compare", str(a), str(b), "--resamples", "200", "--metrics", "MRR", "--by-length", "15,25"]) == 0
    out = capsys.readouterr().out
    hist = load_dataset(load_config(a / "config.yaml").data).lengths[users] - 1
    buckets = (("0-14", hist < 15), ("15-24", (hist >= 15) & (hist < 25)), (">=25", hist >= 25))
    assert sum(sel.any() for _, sel in buckets) >= 2
    for label, sel in buckets:
        if sel.any():  # each non-empty bucket: its users and A's mean over them
            assert f"| {label} | {int(sel.sum())} | MRR | {per_user(ranks[sel], 'MRR').mean():.4f} |" in out
    assert main(["compare", f"{a},{b}", str(b), "--resamples", "200", "--metrics", "MRR", "--json",
                 "--by-length", "20"]) == 0  # several runs per side: per-user means
    res = json.loads(capsys.readouterr().out)
    mrr_b = per_user(load_ranks(b)[1], "MRR")
    assert res["runs_a"] == [str(a), str(b)]
    assert res["results"][0]["a"] == pytest.approx((per_user(ranks, "MRR").mean() + mrr_b.mean()) / 2)
    assert sum(r["n_users"] for r in res["by_length"]) == 60
    assert main(["compare", str(a), str(b), "--resamples", "200", "--metrics", "MRR", "--json",
                 "--by-length", "20", "--by-transition"]) == 0
    res = json.loads(capsys.readouterr().out)
    seen = load_dataset(load_config(a / "config.yaml").data).seen_transitions("test")[users]
    groups = {r["group"]: r["n_users"] for r in res["by_transition"]}
    assert sum(groups.values()) == 60 and set(groups) <= {"0-19, seen step", "0-19, new step",
                                                          ">=20, seen step", ">=20, new step"}
    assert groups.get("0-19, seen step", 0) + groups.get(">=20, seen step", 0) == int(seen.sum())
    assert main(["compare", str(a), str(b), "--resamples", "200", "--metrics", "MRR", "--by-transition"]) == 0
    assert "| all, new step | " in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--by-length", "25,15"]) == 2
    assert "--by-length '25,15': length edges must be increasing" in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "--by-length", "ten"]) == 2
    assert "comma-separated integers expected" in capsys.readouterr().err

    # --stage-gap: B - A on the validation item against B - A on the test item, per user
    trained = load_ranks(b, "valid")[1].copy()  # training writes them with the tested weights
    (b / "valid_ranks.npz").unlink()             # as in a run trained before it did
    assert main(["compare", str(a), str(b), "--stage-gap"]) == 1
    assert "valid_ranks.npz" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(b), "--stage", "valid", "--save-ranks"]) == 0
    assert load_ranks(b, "valid")[1].tolist() == trained.tolist()
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--resamples", "200", "--metrics", "MRR", "--stage-gap", "--json"]) == 0
    gap = json.loads(capsys.readouterr().out)["stage_gap"][0]
    mrr = {st: per_user(load_ranks(b, st)[1], "MRR") - per_user(load_ranks(a, st)[1], "MRR") for st in ("valid", "test")}
    assert gap["n_users"] == 60
    assert gap["valid_gap"] == pytest.approx(mrr["valid"].mean()) and gap["test_gap"] == pytest.approx(mrr["test"].mean())
    assert gap["diff"] == pytest.approx(mrr["valid"].mean() - mrr["test"].mean())
    assert main(["compare", str(a), str(b), "--resamples", "200", "--stage-gap"]) == 0
    assert "| valid - test |" in capsys.readouterr().out

    sampled = tmp_path / "sampled.npz"
    assert main(["evaluate", "--run", str(b), "--protocol", "sampled", "--save-ranks", str(sampled)]) == 0
    capsys.readouterr()
    assert main(["compare", str(a), str(sampled)]) == 1
    assert "differ in protocol" in capsys.readouterr().err
    (a / "test_ranks.npz").unlink()
    assert main(["compare", str(a), str(b)]) == 1
    assert "--save-ranks" in capsys.readouterr().err


def test_resume_accepts_only_run_safe_changes(tmp_path, capsys):
    """--resume continues the saved config; --epochs / --set train.patience etc. may change it (and
    are saved), anything that would make it another experiment is a clear error."""
    run = tmp_path / "run"
    assert main(["train", "--dataset", "synthetic", "--model", "sasrec", "--epochs", "1",
                 "--run-dir", str(run), "--no-progress", *SMALL]) == 0
    capsys.readouterr()
    for argv, needle in ((["--set", "model.d_model=8"], "model.d_model cannot change"),
                         (["--model", "elastic"], "--model cannot change"),
                         (["--set", "train.lr=0.1"], "allowed: train.epochs")):
        assert main(["train", "--run-dir", str(run), "--resume", *argv]) == 2
        assert needle in capsys.readouterr().err
    assert main(["train", "--run-dir", str(run), "--resume", "--no-progress", "--epochs", "2",
                 "--set", "train.patience=7"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]
    saved = (run / "config.yaml").read_text()
    assert "epochs: 2" in saved and "patience: 7" in saved


def test_data_stats(capsys):
    assert main(["data", "stats", "--dataset", "synthetic", "--json", *SMALL]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["users"] == 60 and s["items"] <= 40 and 10 <= s["min_len"] <= s["max_len"] <= 30


def test_bad_override_is_a_clear_error(capsys):
    assert main(["data", "stats", "--dataset", "synthetic", "--set", "data.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'data.nope'" in err and "valid keys here" in err


def test_console_entry_point_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "elasticrec", "models"], capture_output=True, text=True)
    assert out.returncode == 0 and "sasrec" in out.stdout


@pytest.mark.parametrize("argv,needle", [
    (["train", "--dataset", "synthetic", "--model", "nope"], "choose one of elastic"),
    (["data", "stats", "--dataset", "nope"], "choose one of ml-1m"),
    (["data", "stats", "--dataset", "synthetic", "--set", "train.loss=hinge"], "choose one of ce, sampled, bce"),
    (["data", "stats", "--dataset", "synthetic", "--set", "model.max_len=many"], "expected an integer"),
])
def test_bad_names_and_types_list_valid_choices(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_bad_config_file_is_rejected(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochz: 3\n")
    assert main(["data", "stats", "--config", str(p)]) == 2
    err = capsys.readouterr().err
    assert "c.yaml" in err and "epochz" in err and "valid keys here" in err


def test_refit_retrains_on_train_and_valid_for_the_best_epoch_count(tmp_path, capsys):
    """`refit RUN` copies the run's config, trains best_epoch + 1 epochs on every item but the
    test item, and writes test ranks that pair with the run's; a refit cannot be validated or
    refit again."""
    run, out = tmp_path / "run", tmp_path / "run-refit"
    assert main(["train", "--dataset", "synthetic", "--model", "sasrec", "--epochs", "3", "--run-dir", str(run),
                 "--no-progress", *SMALL]) == 0
    best = json.loads((run / "test_metrics.json").read_text())["best_epoch"]
    capsys.readouterr()
    assert main(["refit", str(run), "--run-dir", str(out), "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    cfg = load_config(out / "config.yaml")
    assert cfg.train.fit == "train+valid" and cfg.train.epochs == best + 1 and cfg.model.d_model == 16
    assert res["fit"] == "train+valid" and res["best_epoch"] == best
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == best + 1 and "valid/" not in "".join(lines)
    assert load_ranks(out)[2]["fit"] == "train+valid"
    assert main(["compare", str(run), str(out), "--resamples", "100", "--metrics", "MRR"]) == 0
    out_text = capsys.readouterr().out
    assert "fit train+valid, final epoch" in out_text and f"best epoch {best}" in out_text

    # --checkpoint last: a refit's latest checkpoint holds its final weights, the ones it tested;
    # its ranks go beside the run's own, never over them. Without best.json (a refit still
    # running) only --checkpoint last can evaluate it.
    (out / "checkpoints" / "best.json").unlink()
    assert main(["evaluate", "--run", str(out)]) == 1
    assert "best.json: no checkpoint manifest" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(out), "--checkpoint", "last", "--save-ranks"]) == 0
    cap = capsys.readouterr()
    res_last = json.loads(cap.out)
    assert res_last["checkpoint"] == "last" and res_last["epoch"] == best and res_last["epochs_trained"] == best + 1
    assert res_last["NDCG@10"] == pytest.approx(res["NDCG@10"]) and "last checkpoint" in cap.err
    users, last_ranks, meta = load_ranks(out / f"test_ranks_epoch-{best:04d}.npz")
    assert last_ranks.tolist() == load_ranks(out)[1].tolist() and meta["checkpoint"] == "last"
    assert main(["compare", str(out), str(out / f"test_ranks_epoch-{best:04d}.npz"), "--resamples", "100"]) == 0
    assert f"last checkpoint, epoch {best}" in capsys.readouterr().out

    assert main(["evaluate", "--run", str(out), "--stage", "valid"]) == 2
    assert "validation scores mean nothing" in capsys.readouterr().err
    assert main(["refit", str(out), "--run-dir", str(tmp_path / "again")]) == 2
    assert "itself a refit" in capsys.readouterr().err
    assert main(["refit", str(tmp_path), "--run-dir", str(tmp_path / "again")]) == 2  # no run there
    assert main(["refit", str(run), "--run-dir", str(tmp_path / "x"), "--set", "train.fit=train"]) == 2


def test_evaluate_on_the_whole_history(tmp_path, capsys):
    """`evaluate --history-len 0` feeds ELASTIC (chunk positions) each user's whole history, longer
    than max_len, and saves its ranks beside the run's own without touching them; `compare` pairs
    the two and labels the window; `--drop-recent 1` likewise. Learned positions cannot read past
    max_len: refused, in evaluate and before training starts."""
    short = [*SMALL, "--set", "model.max_len=8"]   # histories of up to 29 items before the target
    run = tmp_path / "elastic"
    assert main(["train", "--dataset", "synthetic", "--model", "elastic", "--epochs", "1", "--run-dir", str(run),
                 "--no-progress", "--set", "model.pos_encoding=chunk", "--set", "model.elastic.chunk_align=start",
                 "--set", "model.elastic.chunk_size=4", *short]) == 0
    own = load_ranks(run)[1].copy()
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--history-len", "0", "--save-ranks"]) == 0
    assert json.loads(capsys.readouterr().out)["history"] == "whole history"
    users, ranks, meta = load_ranks(run / "test_ranks_history-all.npz")
    assert meta["history_len"] == 0 and meta["max_len"] == 8 and len(users) == 60
    assert load_ranks(run)[1].tolist() == own.tolist()   # the run's own ranks are untouched
    assert main(["evaluate", "--run", str(run), "--history-len", "8", "--save-ranks", str(tmp_path / "w8.npz")]) == 0
    assert load_ranks(tmp_path / "w8.npz")[1].tolist() == own.tolist()   # the training window: the run's own ranks
    capsys.readouterr()
    assert main(["compare", str(run), str(run / "test_ranks_history-all.npz"), "--resamples", "100"]) == 0
    assert ", whole history, best epoch" in capsys.readouterr().out
    # the same weights without each history's most recent item: a file of its own, labelled
    assert main(["evaluate", "--run", str(run), "--drop-recent", "1", "--save-ranks"]) == 0
    assert json.loads(capsys.readouterr().out)["history"] == "last 8 items, 1 most recent left out"
    users, dropped, meta = load_ranks(run / "test_ranks_drop-1.npz")
    assert meta["drop_recent"] == 1 and len(users) == 60 and dropped.tolist() != own.tolist()
    assert load_ranks(run)[1].tolist() == own.tolist()
    assert main(["compare", str(run), str(run / "test_ranks_drop-1.npz"), "--resamples", "100"]) == 0
    assert ", last 8 items, 1 most recent left out, best epoch" in capsys.readouterr().out
    assert main(["evaluate", "--run", str(run), "--drop-recent", "-1"]) == 2
    assert "drop_recent must be 0 (off) or a positive number" in capsys.readouterr().err

    sasrec = tmp_path / "sasrec"
    assert main(["train", "--dataset", "synthetic", "--model", "sasrec", "--epochs", "1", "--run-dir", str(sasrec),
                 "--no-progress", *short]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(sasrec), "--history-len", "0"]) == 2
    assert "sasrec reads at most 8 (pos_encoding=learned)" in capsys.readouterr().err
    assert main(["train", "--dataset", "synthetic", "--model", "sasrec", "--epochs", "1", "--run-dir",
                 str(tmp_path / "never"), "--no-progress", "--set", "eval.history_len=0", *short]) == 2
    assert "reads at most 8" in capsys.readouterr().err and not (tmp_path / "never" / "checkpoints").exists()
