"""Summaries of run directories written by ``elasticrec train`` (test metrics, epochs, speed).

    python benchmarks/collect_runs.py RUNS_ROOT [--json out.json] [--md out.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

TEST_KEYS = ("HR@1", "HR@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20", "HR@50", "MRR")


def elastic_variant(cfg: dict) -> str:
    """Short label of an ELASTIC run's settings (empty for other models)."""
    if cfg["model"]["name"] != "elastic":
        return ""
    e = cfg["model"].get("elastic", {})
    v = f"k={e['n_dispatchers']} C={e['chunk_size']} IMR={'on' if e['memory'] else 'off'}"
    if not e.get("use_local", True):
        v += " no-local"
    if e["memory"] and e.get("memory_query_norm") != "layernorm":
        v += f" {e['memory_query_norm']}"
    return v


def summarise(run: Path) -> dict | None:
    """One row per finished run (``test_metrics.json`` present), else None."""
    run = Path(run)
    tm = run / "test_metrics.json"
    if not tm.exists():
        return None
    test = json.loads(tm.read_text())
    mpath = run / "metrics.jsonl"
    lines = [json.loads(ln) for ln in mpath.read_text().splitlines() if ln.strip()] if mpath.exists() else []
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    ep_times = [ln["epoch_time_s"] for ln in lines if "epoch_time_s" in ln]
    return {
        "run": run.name, "dataset": cfg["data"]["name"], "model": cfg["model"]["name"], "variant": elastic_variant(cfg),
        "L": cfg["model"]["max_len"], "d": cfg["model"]["d_model"], "loss": cfg["train"]["loss"],
        "seed": cfg["train"]["seed"], "epochs_run": len(lines), "best_epoch": test.get("best_epoch"),
        "train_s_per_epoch": sum(ep_times) / max(1, len(ep_times)),
        "stop_reason": test.get("stop_reason", ""), "protocol": test.get("protocol"),
        "valid_NDCG@10": test.get("valid_NDCG@10"), "fit": test.get("fit", "train"),
        **{k: test[k] for k in TEST_KEYS if k in test},
        "last_memory_frac_used": next((v for k, v in (lines[-1] if lines else {}).items() if k.endswith("frac_used")), None),
    }


def collect(root: Path) -> list[dict]:
    return [r for p in sorted(Path(root).iterdir()) if p.is_dir() and (r := summarise(p))]


def _f(v, spec=".4f") -> str:
    return "" if v is None else format(v, spec)


def to_markdown(rows: list[dict]) -> str:
    """One line per run (see :mod:`elasticrec.bench.accuracy` for the per-seed aggregate)."""
    head = "| dataset | model | variant | L | epochs (best) | s/epoch | valid NDCG@10 | HR@10 | NDCG@10 | MRR | HR@50 |"
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["model"] != "sasrec", r["variant"])):
        out.append(f"| {r['dataset']} | {r['model']} | {r['variant']} | {r['L']} | {r['epochs_run']} ({r['best_epoch']}) | "
                   f"{r['train_s_per_epoch']:.1f} | {_f(r.get('valid_NDCG@10'))} | {_f(r.get('HR@10'))} | "
                   f"{_f(r.get('NDCG@10'))} | {_f(r.get('MRR'))} | {_f(r.get('HR@50'))} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="folder whose subfolders are run directories")
    ap.add_argument("--json")
    ap.add_argument("--md")
    a = ap.parse_args(argv)
    rows = collect(Path(a.root))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    md = to_markdown(rows)
    if a.md:
        Path(a.md).write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
