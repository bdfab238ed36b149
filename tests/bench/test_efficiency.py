import csv
import json

import pytest

from elasticrec.bench import efficiency as eff
from elasticrec.cli import main

TINY = dict(d_model=16, layers=1, heads=2, n_items=200, negatives=16, warmup=1, repeats=2, time_limit_s=60.0)


def test_measure_point_rows_have_every_key():
    # a generous limit: on a loaded machine the 60 s of TINY can run out and the row reads "timeout"
    row = eff.measure_point(eff.PointSpec(model="elastic", L=64, batch=2, **{**TINY, "time_limit_s": 600.0}))
    assert set(row) == set(eff.ROW_KEYS)
    assert row["status"] == "ok", row
    assert row["train_ms"] > 0 and row["infer_ms"] > 0 and row["repeats"] >= 1
    assert row["tokens"] == 128 and row["train_tokens_per_s"] == pytest.approx(128 / (row["train_ms"] / 1e3))


def test_sweep_records_timeout_and_skips_larger_lengths():
    rows = eff.run_sweep(["sasrec"], [32, 64, 128], batch_tokens=128, isolate=False, log=lambda *a, **k: None,
                         **{**TINY, "time_limit_s": 0.0})
    assert [r["status"] for r in rows] == ["timeout", "skipped", "skipped"]
    assert [r["batch"] for r in rows] == [4, 2, 1]
    assert rows[1]["note"] == "timeout at L=32"


def test_interrupt_keeps_the_measured_points_and_skips_the_rest(monkeypatch):
    real = eff.measure_point

    def measure(spec):
        if spec.model == "sasrec" and spec.L == 64:
            raise KeyboardInterrupt  # what `timeout -s INT` delivers mid-sweep
        return real(spec)

    monkeypatch.setattr(eff, "measure_point", measure)
    rows = eff.run_sweep(["elastic", "sasrec", "linrec"], [32, 64], batch_tokens=64, isolate=False,
                         log=lambda *a, **k: None, **TINY)
    assert [(r["model"], r["L"], r["status"]) for r in rows] == [
        ("elastic", 32, "ok"), ("elastic", 64, "ok"), ("sasrec", 32, "ok"),
        ("sasrec", 64, "skipped"), ("linrec", 32, "skipped"), ("linrec", 64, "skipped")]
    assert all("interrupted" in r["note"] for r in rows[3:])


def test_oom_is_a_row_not_a_traceback(monkeypatch):
    import elasticrec.models

    def boom(*a, **k):
        raise MemoryError("no room")

    monkeypatch.setattr(elasticrec.models, "build_model", boom)
    row = eff.measure_point(eff.PointSpec(model="sasrec", L=16, batch=1, **TINY))
    assert row["status"] == "OOM" and "no room" in row["note"]


def test_subprocess_point_reports_cpu_peak_memory():
    row = eff.run_point_subprocess(eff.PointSpec(model="sasrec", L=64, batch=4, **TINY))
    assert row["status"] == "ok", row
    assert row["peak_train_mib"] is not None and row["peak_train_mib"] >= 0
    assert row["peak_infer_mib"] is not None


def _row(model, L, train, infer, mem, status="ok"):
    r = {k: None for k in eff.ROW_KEYS}
    r.update(model=model, L=L, batch=1, tokens=L, status=status, note="")
    if status == "ok":
        r.update(train_ms=train, infer_ms=infer, peak_train_mib=mem, peak_infer_mib=mem / 2,
                 train_tokens_per_s=L / train * 1e3, infer_tokens_per_s=L / infer * 1e3, repeats=3)
    return r


def test_ratios_and_crossover():
    rows = [_row("sasrec", 256, 10, 1, 100), _row("sasrec", 512, 20, 2, 300), _row("sasrec", 1024, 0, 0, 0, "OOM"),
            _row("elastic", 256, 20, 3, 150), _row("elastic", 512, 15, 3, 200), _row("elastic", 1024, 30, 6, 400)]
    rat = {(r["baseline"], r["L"]): r for r in eff.ratios(rows)}
    assert rat[("sasrec", 256)]["train"] == pytest.approx(2.0)
    assert rat[("sasrec", 512)]["memory"] == pytest.approx(2 / 3)
    assert rat[("sasrec", 1024)]["train"] == "baseline OOM"
    cross = {c["metric"]: c["crossover_L"] for c in eff.crossovers(rows)}
    assert cross == {"train": 512, "memory": 512, "infer": 1024}


def test_cli_writes_csv_json_markdown_and_plots(tmp_path):
    out = tmp_path / "eff"
    rc = main(["bench", "efficiency", "--smoke", "--models", "sasrec,elastic,no-such-model", "--out", str(out)])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "efficiency.csv")))
    assert [(r["model"], r["L"]) for r in rows] == [("sasrec", "32"), ("sasrec", "64"), ("elastic", "32"), ("elastic", "64")]
    res = json.loads((out / "efficiency.json").read_text())
    assert res["meta"]["command"].startswith("elasticrec bench efficiency") and "--smoke" in res["meta"]["command"]
    assert all(r["status"] == "ok" for r in res["rows"])
    assert any("no-such-model" in n for n in res["notes"])
    md = (tmp_path / "eff.md").read_text()
    assert "| sasrec | 64 |" in md and "Crossover" in md and res["meta"]["torch"] in md
    pytest.importorskip("matplotlib")
    assert (out / "time.png").stat().st_size > 0 and (out / "memory.png").stat().st_size > 0
    assert "eff/time.png" in md


def test_bad_lengths_are_a_clear_error(capsys):
    assert main(["bench", "efficiency", "--lengths", "256,abc"]) == 2
    assert "--lengths" in capsys.readouterr().err


def test_default_models_are_the_registered_ones():
    from elasticrec.models import list_models

    models, notes = eff.resolve_models(None, explicit=False)
    assert models == [m for m in eff.DEFAULT_MODELS.split(",") if m in list_models()]
    assert {"sasrec", "sasrec-explicit", "elastic"} <= set(models)
    assert len(notes) == len(eff.DEFAULT_MODELS.split(",")) - len(models)


def test_cpu_name_reads_cpuinfo_and_falls_back(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\n")
    real_path = eff.Path
    monkeypatch.setattr(eff, "Path", lambda p: fake if p == "/proc/cpuinfo" else real_path(p))
    assert eff.cpu_name() == "Test CPU 9000"
    assert eff.machine_info("cpu")["cpu"] == "Test CPU 9000"
    monkeypatch.setattr(eff, "Path", lambda p: tmp_path / "missing")
    assert isinstance(eff.cpu_name(), str) and eff.cpu_name()


def test_late_cuda_error_becomes_a_note(monkeypatch):
    """A device-side assert surfaces at the next CUDA call, here the memory release after a
    point; it must become the row's error, not a traceback that loses the whole sweep."""
    import torch

    def boom():
        raise RuntimeError("CUDA error: device-side assert triggered\nmore lines")

    monkeypatch.setattr(torch.cuda, "empty_cache", boom)
    assert eff.release_memory(cuda=False) is None
    assert eff.release_memory(cuda=True) == "RuntimeError: CUDA error: device-side assert triggered"
