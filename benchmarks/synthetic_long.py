"""ELASTIC vs SASRec on synthetic long-interest data at a long window (default L = 2048).

Each model is trained in its own subprocess (so peak RSS is its own) for a fixed number of
epochs with the same data, protocol and optimiser, then evaluated with full ranking. Prints a
markdown table: time per training epoch, tokens/s, peak RSS (CPU) or CUDA max allocated, and
validation/test HR@10 / NDCG@10.

    python benchmarks/synthetic_long.py --max-len 2048 --epochs 3 --out docs/results/synthetic_long
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import tempfile
import sys
import time
from pathlib import Path


def child(args) -> None:
    import torch

    from elasticrec.config import load_config
    from elasticrec.train.trainer import Trainer

    over = [
        "data.name=synthetic", f"data.synthetic.n_users={args.users}", f"data.synthetic.n_items={args.items}",
        f"data.synthetic.min_len={args.max_len}", f"data.synthetic.max_len={args.max_len + 200}",
        f"data.synthetic.n_clusters={args.clusters}", f"data.synthetic.seed={args.seed}",
        f"model.name={args.model}", f"model.max_len={args.max_len}", "model.d_model=64", "model.n_layers=2",
        "model.n_heads=2", "model.dropout=0.1", f"train.epochs={args.epochs}", f"train.batch_size={args.batch}",
        "train.lr=0.001", "train.progress=false", f"train.device={args.device}", f"train.patience={args.epochs}",
        f"run_dir={args.run_dir}", "model.elastic.chunk_size=64", "model.elastic.n_dispatchers=16",
        f"model.elastic.memory={'true' if args.memory else 'false'}",
    ]
    if args.threads:
        over.append(f"train.num_threads={args.threads}")
    cfg = load_config(None, over)
    t0 = time.time()
    tr = Trainer(cfg)
    res = tr.fit()
    lines = [json.loads(ln) for ln in (Path(args.run_dir) / "metrics.jsonl").read_text().splitlines()]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    out = {
        "model": args.model + ("+IMR" if args.memory and args.model == "elastic" else ""),
        "L": args.max_len, "epochs": len(lines),
        "s_per_epoch": sum(ln["epoch_time_s"] for ln in lines) / len(lines),
        "tokens_per_s": sum(ln["tokens_per_s"] for ln in lines) / len(lines),
        "peak_rss_mib": peak,
        "cuda_max_mem_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "valid_NDCG@10": lines[-1]["valid/NDCG@10"], "HR@10": res["HR@10"], "NDCG@10": res["NDCG@10"],
        "total_s": time.time() - t0,
    }
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--users", type=int, default=256)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--clusters", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--models", default="sasrec,sasrec-explicit,elastic,elastic+imr")
    ap.add_argument("--out", default="docs/results/synthetic_long")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.models.split(","):
        model, memory = spec.replace("+imr", ""), spec.endswith("+imr")
        run_dir = Path(tempfile.mkdtemp(prefix="elasticrec-bench-")) / spec  # checkpoints stay out of docs/
        cmd = [sys.executable, __file__, "--child", "--model", model, "--run-dir", str(run_dir),
               "--max-len", str(args.max_len), "--users", str(args.users), "--items", str(args.items),
               "--clusters", str(args.clusters), "--epochs", str(args.epochs), "--batch", str(args.batch),
               "--seed", str(args.seed), "--device", args.device, "--threads", str(args.threads)]
        if memory:
            cmd.append("--memory")
        print("$", " ".join(cmd), flush=True)
        p = subprocess.run(cmd, capture_output=True, text=True)
        res = next((json.loads(ln[7:]) for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if res is None:
            tail = (p.stderr or p.stdout)[-400:].strip().replace("\n", " ")
            res = {"model": spec, "L": args.max_len, "error": "OOM" if "memory" in tail.lower() else tail}
        rows.append(res)
        print(json.dumps(res), flush=True)
    import torch

    meta = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d")}
    (out / f"synthetic_L{args.max_len}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    head = "| model | L | epochs | s/epoch | tokens/s | peak RSS MiB | valid NDCG@10 | test HR@10 | test NDCG@10 |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['L']} | failed: {r['error'][:60]} | | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['L']} | {r['epochs']} | {r['s_per_epoch']:.1f} | {r['tokens_per_s']:.0f} | "
                     f"{r['peak_rss_mib']:.0f} | {r['valid_NDCG@10']:.4f} | {r['HR@10']:.4f} | {r['NDCG@10']:.4f} |")
    md = "\n".join(lines) + "\n"
    (out / f"synthetic_L{args.max_len}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
