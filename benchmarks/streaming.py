"""ELASTIC streaming state vs full re-encoding, per new event, as the history grows.

For each history length L: prefill a constant-size state from L random events (one chunked
pass), then time ``model.update`` for ``--events`` further events one by one (batch 1, round-robin
over the lengths; median, p99, min, mean; chunk closes, which re-pack the dispatchers incl. the
memory lookup, land in the tail), and time the alternative, re-encoding the whole history with
``model.last_hidden`` (median of a few runs; once one run exceeds ``--reencode-limit-s`` the
longer lengths are skipped and marked).
Also records the state bytes per user and checks that the streamed hidden state equals the full
forward's. A second table times batched updates (B users at once). Writes ``<out>.md``,
``<out>.json`` and (with matplotlib) ``<out>.png``.

    python benchmarks/streaming.py --out docs/streaming
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from elasticrec.bench.efficiency import cpu_name
from elasticrec.config import ElasticConfig, ModelConfig
from elasticrec.models import build_model


def build(args):
    e = ElasticConfig(n_dispatchers=args.k, chunk_size=args.chunk, chunk_align="start",
                      memory=args.memory, memory_n_keys=args.memory_n_keys)
    cfg = ModelConfig(name="elastic", max_len=args.max_len, d_model=args.d_model,
                      n_layers=args.layers, n_heads=args.heads, dropout=0.0,
                      pos_encoding=args.pos, elastic=e)
    torch.manual_seed(args.seed)
    return build_model(cfg, n_items=args.n_items).eval(), cfg


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


@torch.no_grad()
def run_all(model, args) -> list[dict]:
    """Prefill one state per length, then time the updates ROUND-ROBIN over the lengths (so load
    changes on a shared machine hit every length alike), then the full re-encodes."""
    hists, states, rows = {}, {}, {}
    for L in args.lengths:
        g = torch.Generator().manual_seed(args.seed + L)
        hists[L] = torch.randint(1, args.n_items + 1, (1, L + args.warmup + args.events), generator=g)
        t0 = time.perf_counter()
        states[L] = model.prefill(model.init_state(1), hists[L][:, :L])
        rows[L] = {"L": L, "events_timed": args.events, "prefill_s": time.perf_counter() - t0,
                   "state_bytes_per_user": model.state_nbytes(states[L])}
    lat = {L: [] for L in args.lengths}
    for i in range(args.warmup + args.events):
        for L in args.lengths:
            t0 = time.perf_counter()
            states[L] = model.update(states[L], hists[L][:, L + i])
            if i >= args.warmup:
                lat[L].append(time.perf_counter() - t0)
    reencode = True
    for L in args.lengths:
        r, xs = rows[L], lat[L]
        assert model.state_nbytes(states[L]) == r["state_bytes_per_user"]
        r.update(update_median_ms=1e3 * statistics.median(xs), update_p99_ms=1e3 * pct(xs, 0.99),
                 update_mean_ms=1e3 * statistics.fmean(xs), update_min_ms=1e3 * min(xs))
        if not reencode:
            r["reencode_median_ms"] = None
            r["reencode_skipped"] = f"a previous length exceeded {args.reencode_limit_s} s per run"
            print(json.dumps(r), flush=True)
            continue
        full = hists[L]  # the same history the state has seen (L + warm-up + timed events)
        times = []
        while len(times) < args.reencode_reps:
            t0 = time.perf_counter()
            h = model.last_hidden(full)
            times.append(time.perf_counter() - t0)
            if sum(times) > args.reencode_limit_s:
                break
        r["reencode_median_ms"] = 1e3 * statistics.median(times)
        r["reencode_runs"] = len(times)
        r["max_abs_diff_stream_vs_full"] = float((h - model.state_hidden(states[L])).abs().max())
        r["speedup"] = r["reencode_median_ms"] / r["update_median_ms"]
        r["reencode_over_limit"] = min(times) > args.reencode_limit_s
        reencode = not r["reencode_over_limit"]
        print(json.dumps(r), flush=True)
    return [rows[L] for L in args.lengths]


@torch.no_grad()
def run_batched(model, args) -> list[dict]:
    """Per-call and per-user update latency when B users (history ``--batch-L``) are updated
    together, one event each."""
    out = []
    L, n = args.batch_L, args.batch_events
    for B in args.batch_sizes:
        g = torch.Generator().manual_seed(args.seed + B)
        hist = torch.randint(1, args.n_items + 1, (B, L + n + args.warmup), generator=g)
        state = model.prefill(model.init_state(B), hist[:, :L])
        lat = []
        for i in range(args.warmup + n):
            t0 = time.perf_counter()
            state = model.update(state, hist[:, L + i])
            if i >= args.warmup:
                lat.append(time.perf_counter() - t0)
        med = statistics.median(lat)
        out.append({"B": B, "L": L, "events_timed": n, "call_median_ms": 1e3 * med,
                    "call_p99_ms": 1e3 * pct(lat, 0.99), "per_user_median_ms": 1e3 * med / B,
                    "state_bytes_per_user": model.state_nbytes(state) / B})
        print(json.dumps(out[-1]), flush=True)
    return out


def fmt(x, spec=".2f"):
    return "—" if x is None else format(x, spec)


def write_md(path: Path, meta: dict, rows: list[dict], batched: list[dict]) -> None:
    a = meta["args"]
    imr = f"on ({a['memory_n_keys'] ** 2} slots)" if a["memory"] else "off"
    lines = [
        "# Streaming state vs full re-encoding (ELASTIC, CPU)",
        "",
        "Per new event: `model.update(state, item)` on a constant-size state (prefilled from L",
        "events) versus re-encoding the whole history with `model.last_hidden` (chunked forward,",
        "O(L)). Batch 1, eval mode, "
        f"{a['threads']} thread(s). Model: d={a['d_model']}, {a['layers']} layers, {a['heads']} heads, "
        f"k={a['k']}, C={a['chunk']}, IMR {imr}, "
        f"pos `{a['pos']}`, chunk_align `start`, {a['n_items']} items, random weights and items",
        f"(timing does not depend on training). Update latency over {a['events']} events per length after",
        f"a {a['warmup']}-event warm-up, timed round-robin over all lengths (so load changes on the",
        "shared machine hit every length alike); chunk closes (every C-th event: fold + re-pack +",
        "memory lookup) make the p99. Re-encode: the whole history the state has seen (L + warm-up",
        "+ timed events). `max |diff|`: streamed hidden state vs that full forward's last hidden",
        "state (fp32).",
        "",
        "| history L | update median (ms) | update p99 (ms) | update min (ms) | state / user (KiB) "
        "| re-encode (ms) | re-encode / update | prefill (s) | max \\|diff\\| |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        reenc = fmt(r["reencode_median_ms"], ".1f")
        if r["reencode_median_ms"] is None:
            reenc = "skipped (limit)"
        lines.append(
            f"| {r['L']:,} | {r['update_median_ms']:.3f} | {r['update_p99_ms']:.3f} | "
            f"{r['update_min_ms']:.3f} | "
            f"{r['state_bytes_per_user'] / 1024:.1f} | {reenc} | "
            f"{fmt(r.get('speedup'), '.0f') + 'x' if r.get('speedup') else '—'} | {r['prefill_s']:.3f} | "
            f"{fmt(r.get('max_abs_diff_stream_vs_full'), '.1e')} |")
    if batched:
        lines += [
            "",
            f"Batched updates (B users, history {batched[0]['L']}, one event each per call, "
            f"{batched[0]['events_timed']} calls):",
            "",
            "| B | call median (ms) | call p99 (ms) | per user (ms) |",
            "|---:|---:|---:|---:|",
        ]
        lines += [f"| {b['B']} | {b['call_median_ms']:.3f} | {b['call_p99_ms']:.3f} | "
                  f"{b['per_user_median_ms']:.4f} |" for b in batched]
    lines += [
        "",
        "Reading: the state (per layer: LSE sums of closed and open chunk, open-chunk dispatcher",
        "keys/values, C local key/value slots; plus the hidden state) has the same size at every L,",
        "and the update cost does not grow with L; re-encoding grows linearly. At batch 1 with d=64",
        "an update is a few hundred tiny tensor ops, so its time is framework overhead, which a",
        "loaded machine inflates (the minimum is the closest to an idle machine's cost).",
        "",
        f"Machine: {meta['cpu']} ({meta['logical_cpus']} logical CPUs, shared with other jobs"
        f"; load average at start {meta['loadavg']}), {meta['platform']}.",
        f"Versions: Python {meta['python']}, torch {meta['torch']}. Total run time {meta['total_s']:.0f} s.",
        "",
        f"Command: `{meta['command']}`",
        "",
        "Raw numbers: `streaming.json`" + (", plot: `streaming.png`." if meta.get("plot") else "."),
        "",
    ]
    path.write_text("\n".join(lines))


def plot(path: Path, rows: list[dict]) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    Ls = [r["L"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(Ls, [r["update_median_ms"] for r in rows], "o-", label="streaming update (median)")
    ax.plot(Ls, [r["update_p99_ms"] for r in rows], "o--", label="streaming update (p99)")
    re = [(r["L"], r["reencode_median_ms"]) for r in rows if r["reencode_median_ms"] is not None]
    if re:
        ax.plot(*zip(*re), "s-", label="full re-encode (median)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("history length L (events)")
    ax.set_ylabel("time per new event (ms)")
    ax.set_title("ELASTIC: per-event cost, CPU, 1 thread")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[100, 300, 1000, 3000, 10000, 32000])
    p.add_argument("--events", type=int, default=256, help="timed updates per length")
    p.add_argument("--warmup", type=int, default=16)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--memory-n-keys", type=int, default=256)
    p.add_argument("--pos", default="learned-start", choices=["learned-start", "chunk", "none"])
    p.add_argument("--max-len", type=int, default=200, help="learned-start positions clamp here")
    p.add_argument("--n-items", type=int, default=10000)
    p.add_argument("--reencode-reps", type=int, default=5)
    p.add_argument("--reencode-limit-s", type=float, default=10.0)
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 16, 256],
                   help="batched-update table (empty: skip)")
    p.add_argument("--batch-L", type=int, default=300)
    p.add_argument("--batch-events", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/streaming", help="output path prefix (.md/.json/.png)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    model, _ = build(args)
    la = Path("/proc/loadavg")
    loadavg = " ".join(la.read_text().split()[:3]) if la.exists() else "?"
    rows = run_all(model, args)
    batched = run_batched(model, args) if args.batch_sizes else []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"args": vars(args), "cpu": cpu_name(), "logical_cpus": os.cpu_count(),
            "loadavg": loadavg, "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__,
            "command": "python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])),
            "total_s": time.perf_counter() - t_start}
    meta["plot"] = (not args.no_plot) and plot(out.with_suffix(".png"), rows)
    blob = {"meta": meta, "rows": rows, "batched": batched}
    out.with_suffix(".json").write_text(json.dumps(blob, indent=2) + "\n")
    write_md(out.with_suffix(".md"), meta, rows, batched)
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
