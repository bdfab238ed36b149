"""Summarise run directories (test_metrics.json + metrics.jsonl) as JSON and a markdown table.

    python benchmarks/collect_runs.py RUNS_ROOT [--json out.json] [--md out.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def summarise(run: Path) -> dict | None:
    tm = run / "test_metrics.json"
    if not tm.exists():
        return None
    test = json.loads(tm.read_text())
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    ep_times = [ln["epoch_time_s"] for ln in lines if "epoch_time_s" in ln]
    e = cfg["model"].get("elastic", {})
    variant = ""
    if cfg["model"]["name"] == "elastic":
        variant = f"k={e['n_dispatchers']} C={e['chunk_size']} IMR={'on' if e['memory'] else 'off'}" + \
                  ("" if e.get("use_local", True) else " no-local") + \
                  (f" {e['memory_query_norm']}" if e["memory"] and e.get("memory_query_norm") != "layernorm" else "")
    return {
        "run": run.name, "dataset": cfg["data"]["name"], "model": cfg["model"]["name"], "variant": variant,
        "L": cfg["model"]["max_len"], "d": cfg["model"]["d_model"], "loss": cfg["train"]["loss"],
        "epochs_run": len(lines), "best_epoch": test.get("best_epoch"),
        "train_s_per_epoch": sum(ep_times) / max(1, len(ep_times)),
        "stop_reason": test.get("stop_reason", ""), "protocol": test.get("protocol"),
        "valid_NDCG@10": test.get("valid_NDCG@10"),
        **{k: test[k] for k in ("HR@1", "HR@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20", "HR@50", "MRR") if k in test},
        "last_memory_frac_used": next((v for k, v in lines[-1].items() if k.endswith("frac_used")), None),
    }


def to_markdown(rows: list[dict]) -> str:
    head = "| dataset | model | variant | L | epochs (best) | s/epoch | valid NDCG@10 | HR@10 | NDCG@10 | MRR | HR@50 |"
    out = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["model"] != "sasrec", r["variant"])):
        out.append(f"| {r['dataset']} | {r['model']} | {r['variant']} | {r['L']} | {r['epochs_run']} ({r['best_epoch']}) | "
                   f"{r['train_s_per_epoch']:.1f} | {r['valid_NDCG@10']:.4f} | {r['HR@10']:.4f} | {r['NDCG@10']:.4f} | "
                   f"{r['MRR']:.4f} | {r.get('HR@50', float('nan')):.4f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--json")
    ap.add_argument("--md")
    a = ap.parse_args()
    rows = [r for p in sorted(Path(a.root).iterdir()) if p.is_dir() and (r := summarise(p))]
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    md = to_markdown(rows)
    if a.md:
        Path(a.md).write_text(md)
    print(md)


if __name__ == "__main__":
    main()
