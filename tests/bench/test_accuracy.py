import json

import pytest

from elasticrec.bench import accuracy as acc
from elasticrec.bench.runs import summarise
from elasticrec.cli import main


def test_two_seeds_end_to_end_then_second_invocation_skips(tmp_path, capsys):
    argv = ["bench", "accuracy", "--smoke", "--models", "sasrec", "--seeds", "1,2", "--jobs", "2",
            "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs")]
    assert main(argv) == 0
    res = json.loads((tmp_path / "out" / "accuracy.json").read_text())
    (g,) = res["groups"]
    assert (g["dataset"], g["model"], g["n"], g["seeds"]) == ("synthetic", "sasrec", 2, [1, 2])
    vals = [r["NDCG@10"] for r in res["runs"]]
    assert g["metrics"]["NDCG@10"]["mean"] == pytest.approx(sum(vals) / 2)
    assert g["metrics"]["NDCG@10"]["std"] == pytest.approx(abs(vals[0] - vals[1]) / 2 ** 0.5)
    md = (tmp_path / "out" / "accuracy.md").read_text()
    assert "published" in md and "| synthetic | sasrec | 64 | 2 (1,2) |" in md and " ± " in md
    assert (tmp_path / "runs" / "logs" / "synthetic-sasrec-s1.log").exists()
    capsys.readouterr()

    mtimes = {p: p.stat().st_mtime for p in (tmp_path / "runs").glob("*/test_metrics.json")}
    assert main(argv) == 0  # resumable: finished runs are not run again
    out = capsys.readouterr().out
    assert out.count("finished earlier (skipped)") == 2 and "[start]" not in out
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes
    assert json.loads((tmp_path / "out" / "accuracy.json").read_text())["groups"][0]["n"] == 2


def test_collect_only_tabulates_finished_runs_and_trains_nothing(tmp_path, capsys):
    base = ["bench", "accuracy", "--smoke", "--models", "sasrec", "--runs-dir", str(tmp_path / "runs")]
    assert main([*base, "--seeds", "1", "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main([*base, "--seeds", "1,2", "--collect-only", "--out", str(tmp_path / "b")]) == 0
    assert "[start]" not in capsys.readouterr().out
    assert not (tmp_path / "runs" / "synthetic-sasrec-s2").exists()
    res = json.loads((tmp_path / "b" / "accuracy.json").read_text())
    assert [r["seed"] for r in res["runs"]] == [1] and res["groups"][0]["n"] == 1
    assert "synthetic-sasrec-s2: not run (--collect-only)" in res["notes"]
    assert "--collect-only" in res["meta"]["command"]


def test_interrupted_benchmark_still_writes_the_finished_runs(tmp_path, monkeypatch):
    real = acc.run_jobs

    def interrupted(jobs, n_jobs, threads, *a, **k):  # the first run finishes, then SIGTERM arrives
        real(jobs[:1], n_jobs, threads, *a, log=lambda *x, **y: None)
        raise KeyboardInterrupt

    monkeypatch.setattr(acc, "run_jobs", interrupted)
    argv = ["bench", "accuracy", "--smoke", "--models", "sasrec", "--seeds", "1,2",
            "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert main(argv) == 130
    res = json.loads((tmp_path / "out" / "accuracy.json").read_text())
    assert [r["seed"] for r in res["runs"]] == [1]
    assert "synthetic-sasrec-s2: interrupted before its test score" in res["notes"]


def test_unfinished_runs_wait_for_resume_and_missing_presets_are_noted(tmp_path):
    jobs, notes = acc.plan(["synthetic"], ["sasrec", "sasrec-explicit"], [7], tmp_path)
    assert [j.name for j in jobs] == ["synthetic-sasrec-s7"]
    assert notes == ["synthetic / sasrec-explicit: no preset configs/synthetic/sasrec-explicit.yaml; skipped"]
    (jobs[0].run_dir / "checkpoints").mkdir(parents=True)
    (jobs[0].run_dir / "checkpoints" / "last.json").write_text("{}")
    assert acc.job_state(jobs[0]) == "unfinished"
    outcome = acc.run_jobs(jobs, 1, 1, log=lambda *a, **k: None)
    assert outcome == {"synthetic-sasrec-s7": "unfinished (pass --resume to continue it)"}
    cmd = acc.train_command(jobs[0], 1, 60, None, None, resume=True)
    assert cmd[-1] == "--resume" and str(jobs[0].run_dir) in cmd


def test_ml1m_at_l1000_uses_the_ml1m_presets():
    (job,), _ = acc.plan(["ml-1m-1000"], ["hstu"], [42], acc.Path("runs"))
    cmd = " ".join(acc.train_command(job, 1, 300, None, "cuda", resume=False))
    assert "configs/ml-1m/hstu.yaml" in cmd and "--dataset ml-1m " in cmd and "model.max_len=1000" in cmd
    assert job.name == "ml-1m-1000-hstu-s42"


def test_ml1m_large_uses_the_variant_presets():
    jobs, notes = acc.plan(["ml-1m-large"], ["elastic", "hstu", "linrec"], [42], acc.Path("runs"))
    assert [j.name for j in jobs] == ["ml-1m-large-elastic-s42", "ml-1m-large-hstu-s42"]
    assert notes == ["ml-1m-large / linrec: no preset configs/ml-1m/large/linrec.yaml; skipped"]
    cmd = " ".join(acc.train_command(jobs[1], 1, 300, None, "cuda", resume=False))
    assert "configs/ml-1m/large/hstu.yaml" in cmd and "--dataset ml-1m " in cmd


def test_sports_tuned_uses_each_models_chosen_rate():
    jobs, _ = acc.plan(["sports-tuned"], ["elastic", "sasrec"], [42], acc.Path("runs"))
    assert [j.name for j in jobs] == ["sports-tuned-elastic-s42", "sports-tuned-sasrec-s42"]
    assert "configs/sports/tuned/sasrec.yaml" in " ".join(acc.train_command(jobs[1], 1, 300, None, None, resume=False))


def test_sports_sink_gives_sasrec_the_learned_pairs():
    jobs, _ = acc.plan(["sports-sink"], ["elastic", "sasrec"], [42], acc.Path("runs"))
    assert [j.name for j in jobs] == ["sports-sink-elastic-s42", "sports-sink-sasrec-s42"]
    assert "configs/sports/sink/sasrec.yaml" in " ".join(acc.train_command(jobs[1], 1, 300, None, None, resume=False))
    # what the two presets resolve to: tests/test_config.py::test_variant_presets_reproduce_the_recorded_runs


@pytest.mark.parametrize("dataset", ["sports", "yelp", "beauty", "ml-1m"])
def test_best_variant_runs_each_models_strongest_preset(dataset):
    jobs, notes = acc.plan([f"{dataset}-best"], ["elastic", "sasrec", "hstu"], [42], acc.Path("runs"))
    assert [j.name for j in jobs] == [f"{dataset}-best-elastic-s42", f"{dataset}-best-sasrec-s42"]
    assert notes == [f"{dataset}-best / hstu: no preset configs/{dataset}/best/hstu.yaml; skipped"]
    cmd = " ".join(acc.train_command(jobs[1], 1, 300, None, None, resume=False))
    assert f"configs/{dataset}/best/sasrec.yaml" in cmd and f"--dataset {dataset} " in cmd


def test_ml1m_tuned_uses_each_models_chosen_rate():
    jobs, notes = acc.plan(["ml-1m-tuned"], ["elastic", "sasrec", "hstu"], [42], acc.Path("runs"))
    assert [j.name for j in jobs] == ["ml-1m-tuned-elastic-s42", "ml-1m-tuned-sasrec-s42"]
    assert notes == ["ml-1m-tuned / hstu: no preset configs/ml-1m/tuned/hstu.yaml; skipped"]
    assert "configs/ml-1m/tuned/elastic.yaml" in " ".join(acc.train_command(jobs[0], 1, 300, None, None, resume=False))
    jobs, _ = acc.plan(["ml-1m-long"], ["elastic", "sasrec"], [42], acc.Path("runs"))
    assert [j.name for j in jobs] == ["ml-1m-long-elastic-s42", "ml-1m-long-sasrec-s42"]
    assert "configs/ml-1m/long/sasrec.yaml" in " ".join(acc.train_command(jobs[1], 1, 300, None, None, resume=False))


def test_long_synthetic_dataset_and_commands():
    (job,), _ = acc.plan(["synthetic-4096"], ["elastic"], [42], acc.Path("runs"))
    cmd = " ".join(acc.train_command(job, 2, 300, 5, "cuda", resume=False))
    for part in ("model.max_len=4096", "data.synthetic.min_len=4096", "train.time_budget_s=300", "--epochs 5",
                 "train.num_threads=2", "train.seed=42", "--device cuda", "configs/synthetic/elastic.yaml"):
        assert part in cmd


def test_unknown_dataset_is_a_clear_error(capsys):
    assert main(["bench", "accuracy", "--datasets", "nope", "--models", "sasrec", "--dry-run"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err


def test_markdown_puts_published_numbers_beside_measured_ones():
    g = {"dataset": "ml-1m", "model": "sasrec", "n": 3, "seeds": [42, 43, 44], "L": 200, "variant": "",
         "epochs_mean": 100.0, "s_per_epoch_mean": 3.0, "stop_reasons": ["early stop"],
         "metrics": {"HR@10": {"mean": 0.29, "std": 0.004, "n": 3}, "NDCG@10": {"mean": 0.16, "std": 0.002, "n": 3}}}
    meta = {"date": "d", "command": "c", "machine": "m", "torch": "t", "python": "p", "time_budget_s": 600,
            "epochs": None, "jobs": 1, "threads": 1, "datasets": ["ml-1m"]}
    md = acc.to_markdown([g], meta, [])
    assert "| ml-1m | sasrec | 200 | 3 (42,43,44) | 0.2900 ± 0.0040 | 0.1600 ± 0.0020 |" in md
    assert "*published: SASRec, sampled softmax*" in md and "*0.2853*" in md and "*0.1893*" in md
    assert "refit" not in md
    md = acc.to_markdown([g, {**g, "model": "hstu", "fit": "train+valid"}], meta, [])
    assert "| ml-1m | hstu [train+valid] | 200 |" in md and "| ml-1m | sasrec | 200 |" in md
    assert "rows marked [train+valid] are refits" in md


def test_refit_runs_are_labelled_in_the_benchmark_rows(tmp_path):
    argv = ["bench", "accuracy", "--smoke", "--models", "sasrec", "--seeds", "1", "--out", str(tmp_path / "out"),
            "--runs-dir", str(tmp_path / "runs"), "--set", "train.fit=train+valid"]
    assert main(argv) == 0
    res = json.loads((tmp_path / "out" / "accuracy.json").read_text())
    assert res["runs"][0]["fit"] == "train+valid" and res["runs"][0]["valid_NDCG@10"] is None
    assert "sasrec [train+valid]" in (tmp_path / "out" / "accuracy.md").read_text()


def test_collect_runs_script_is_a_wrapper(tmp_path):
    from pathlib import Path

    src = (Path(__file__).resolve().parents[2] / "benchmarks" / "collect_runs.py").read_text()
    assert "from elasticrec.bench.runs import main" in src
    (tmp_path / "not-a-run").mkdir()
    assert summarise(tmp_path / "not-a-run") is None


def test_models_are_paired_with_the_baseline_user_by_user(tmp_path):
    """Each non-baseline model gets a paired row: per-user NDCG@10 averaged over the seeds both
    finished, so its difference is that of the two groups' mean test NDCG@10."""
    from elasticrec.evaluate.significance import load_ranks, per_user

    argv = ["bench", "accuracy", "--smoke", "--models", "sasrec,elastic", "--seeds", "1,2", "--jobs", "2",
            "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs")]
    assert main(argv) == 0
    res = json.loads((tmp_path / "out" / "accuracy.json").read_text())
    (row,) = res["paired"]
    assert (row["dataset"], row["model"], row["baseline"], row["seeds"]) == ("synthetic", "elastic", "sasrec", [1, 2])
    means = {g["model"]: g["metrics"]["NDCG@10"]["mean"] for g in res["groups"]}
    assert row["a"] == pytest.approx(means["sasrec"]) and row["b"] == pytest.approx(means["elastic"])
    assert row["ci_low"] <= row["diff"] <= row["ci_high"] and 0 < row["p_value"] <= 1
    assert row["n_users"] == 48
    ranks = [load_ranks(tmp_path / "runs" / f"synthetic-elastic-s{s}")[1] for s in (1, 2)]
    assert row["b"] == pytest.approx(sum(per_user(r, "NDCG@10").mean() for r in ranks) / 2)
    md = (tmp_path / "out" / "accuracy.md").read_text()
    assert "Paired against sasrec, NDCG@10" in md and "| synthetic | elastic | 1,2 |" in md
    # without the baseline among the models there is nothing to pair
    assert main([*argv[:4], "elastic", *argv[5:], "--collect-only"]) == 0
    assert json.loads((tmp_path / "out" / "accuracy.json").read_text())["paired"] == []
