"""Load test of ``elasticrec serve``: N requests from C concurrent clients against a real server.

    ELASTICREC_DATA=/work/shared/data python benchmarks/serve_load.py            # trains ML-100k SASRec
    python benchmarks/serve_load.py --run runs/my-run --requests 2000 --concurrency 8

Without ``--run`` a small SASRec is trained first (ML-100k if it is found under
``$ELASTICREC_DATA``, else the synthetic generator; ``--train-seconds`` bounds it). The server is
started as its own process (``python -m elasticrec serve``, one uvicorn worker, ``--server-threads``
torch threads); the clients are asyncio tasks sharing one HTTP connection pool. The request mix is
``--events-frac`` of ``POST /users/{id}/events`` (with ``k``: each returns the new top-k) over a
pool of ``--users`` users, the rest ``POST /recommend`` with a real dataset history (last 1..max_len
items of a random user). Prints a table and writes JSON plus the "Load benchmark" section of
docs/serving.md. Not a unit test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- serve_load:begin -->", "<!-- serve_load:end -->"


def train_small_run(out: Path, seconds: float) -> Path:
    from elasticrec.config import load_config
    from elasticrec.train import train

    data_root = os.environ.get("ELASTICREC_DATA")
    have_ml100k = bool(data_root) and any((Path(data_root) / "ml-100k" / f).exists()
                                          for f in ("ml-100k.inter", "u.data"))
    data = ["data.name=ml-100k"] if have_ml100k else [
        "data.name=synthetic", "data.synthetic.n_users=1000", "data.synthetic.n_items=1000"]
    cfg = load_config(None, data + [
        "model.name=sasrec", "model.max_len=50", "model.d_model=64", "model.dropout=0.2",
        "train.epochs=50", "train.batch_size=128", "train.progress=false", "train.device=cpu",
        f"train.time_budget_s={seconds}", "train.num_threads=1", f"run_dir={out}"])
    run_dir, res = train(cfg)
    print(f"trained {cfg.data.name} sasrec in <= {seconds:.0f}s: test HR@10 {res['HR@10']:.4f}")
    return Path(run_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int, threads: int, max_users: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "elasticrec", "serve", "--run", str(run), "--port", str(port),
           "--max-users", str(max_users), "--log-level", "warning"]
    return subprocess.Popen(cmd, env=env)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> dict:
    import httpx

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}")
        try:
            return httpx.get(url + "/health", timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"server not healthy after {timeout:.0f}s")


def make_requests(rec, n: int, events_frac: float, n_users: int, k: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    data, raw = rec.data, rec.item_raw
    pop = rec.popularity[1:].numpy().astype(np.float64)
    pop = np.where(np.isfinite(pop), pop, 0) + 1.0
    reqs = []
    for _ in range(n):
        if rng.random() < events_frac:
            item = raw[1 + rng.choice(len(pop), p=pop / pop.sum())]
            reqs.append(("events", f"/users/load-{rng.integers(n_users)}/events", {"item": item, "k": k}))
        else:
            seq = data.sequence(int(rng.integers(data.n_users)))
            L = int(rng.integers(1, min(len(seq), rec.max_len) + 1))
            reqs.append(("recommend", "/recommend", {"history": raw[seq[-L:]].tolist(), "k": k}))
    return reqs


async def fire(url: str, reqs: list[tuple], concurrency: int) -> tuple[list, float]:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for r in reqs:
        queue.put_nowait(r)
    results = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def worker():
            while True:
                try:
                    kind, path, body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t0 = time.perf_counter()
                try:
                    r = await client.post(path, json=body)
                    ok = r.status_code == 200 and len(r.json().get("items") or
                                                      (r.json().get("recommendation") or {}).get("items", [])) > 0
                    status = r.status_code
                except httpx.HTTPError as e:
                    ok, status = False, type(e).__name__
                results.append((kind, time.perf_counter() - t0, ok, status))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return results, wall


def summarise(results: list, wall: float) -> dict:
    out = {}
    for kind in ("all", "recommend", "events"):
        rows = [r for r in results if kind == "all" or r[0] == kind]
        lat = np.array([r[1] for r in rows]) * 1e3
        out[kind] = {
            "requests": len(rows), "errors": int(sum(not r[2] for r in rows)),
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean()),
            "throughput_rps": len(rows) / wall,
        }
    out["all"]["wall_s"] = wall
    out["error_statuses"] = sorted({str(r[3]) for r in results if not r[2]})
    return out


def machine_info(threads: int) -> dict:
    import fastapi
    import httpx
    import torch
    import uvicorn

    from elasticrec.bench.efficiency import cpu_name

    return {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__,
            "httpx": httpx.__version__, "server_torch_threads": threads, "platform": platform.platform(),
            "load_avg_1min_at_end": os.getloadavg()[0]}


def markdown(res: dict) -> str:
    a = res["args"]
    lines = [BEGIN, "",
             f"Command: `{res['command']}`  ",
             f"Run: {res['run']['model']} on {res['run']['dataset']} ({res['run']['n_items']:,} items, "
             f"max_len {res['run']['max_len']}); {a['requests']:,} requests from {a['concurrency']} "
             f"concurrent clients, {a['events_frac']:.0%} `POST /users/{{id}}/events` (k={a['k']}, "
             f"{a['users']} users) and the rest `POST /recommend` (k={a['k']}, real histories of 1..max_len items).  ",
             f"Machine: {res['machine']['cpu']} ({res['machine']['cpu_count']} cores, shared with other "
             f"jobs; 1-min load average {res['machine']['load_avg_1min_at_end']:.1f} at the end; the clients run on "
             f"the same cores), server with {res['machine']['server_torch_threads']} torch thread(s), one uvicorn "
             f"process; Python {res['machine']['python']}, torch {res['machine']['torch']}, fastapi "
             f"{res['machine']['fastapi']}, uvicorn {res['machine']['uvicorn']}, httpx {res['machine']['httpx']}.  ",
             f"Date: {res['date']}", "",
             "| requests | n | errors | p50 ms | p95 ms | p99 ms | mean ms | throughput req/s |",
             "|---|---|---|---|---|---|---|---|"]
    for kind in ("all", "recommend", "events"):
        s = res["summary"][kind]
        lines.append(f"| {kind} | {s['requests']:,} | {s['errors']} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | "
                     f"{s['p99_ms']:.1f} | {s['mean_ms']:.1f} | {s['throughput_rps']:.0f} |")
    lines += ["", f"Server after the run: {res['health_after']['users_held']} users held, "
                  f"{res['health_after']['users_evicted']} evicted. Raw numbers: "
                  f"[{res['json_name']}]({res['json_name']}).", "", END]
    return "\n".join(lines)


def update_doc(doc: Path, section: str) -> None:
    text = doc.read_text() if doc.exists() else ""
    if BEGIN in text and END in text:
        pre, rest = text.split(BEGIN, 1)
        post = rest.split(END, 1)[1]
        text = pre + section + post
    else:
        text = text.rstrip() + "\n\n## Load benchmark\n\n" + section + "\n"
    doc.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="run directory (default: train a small SASRec first)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--events-frac", type=float, default=0.5)
    p.add_argument("--users", type=int, default=500, help="distinct users of the events requests")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--warmup", type=int, default=50, help="requests sent (and not measured) first")
    p.add_argument("--server-threads", type=int, default=1)
    p.add_argument("--train-seconds", type=float, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=str(ROOT / "docs" / "serving_load.json"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "serving.md"), help="'' to skip")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from elasticrec.serving import load_run

    tmp = None
    run = Path(args.run) if args.run else None
    if run is None:
        tmp = tempfile.TemporaryDirectory(prefix="serve_load-")
        run = train_small_run(Path(tmp.name) / "run", args.train_seconds)
    rec = load_run(run)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(run, port, args.server_threads, max_users=max(args.users, 1))
    try:
        health = wait_healthy(url, proc)
        warm = make_requests(rec, args.warmup, args.events_frac, args.users, args.k, args.seed + 1)
        asyncio.run(fire(url, warm, args.concurrency))
        reqs = make_requests(rec, args.requests, args.events_frac, args.users, args.k, args.seed)
        results, wall = asyncio.run(fire(url, reqs, args.concurrency))
        import httpx

        health_after = httpx.get(url + "/health", timeout=5).json()
    finally:
        proc.terminate()
        proc.wait(10)
    summary = summarise(results, wall)
    cfg_name = json.loads((run / "data.json").read_text()).get("name", "?") if (run / "data.json").exists() else "?"
    res = {
        "command": " ".join(
            ([f"ELASTICREC_DATA={os.environ['ELASTICREC_DATA']}"] if os.environ.get("ELASTICREC_DATA") and not args.run else [])
            + ["python benchmarks/serve_load.py"] + list(argv if argv is not None else sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"), "args": vars(args),
        "run": {"model": health["model"], "dataset": cfg_name, "n_items": health["n_items"],
                "max_len": health["max_len"], "path": str(run) if args.run else "(trained by the script)"},
        "machine": machine_info(args.server_threads), "summary": summary, "health_after": health_after,
        "json_name": Path(args.json).name,
    }
    print(f"{'requests':<10} {'n':>6} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for kind in ("all", "recommend", "events"):
        s = summary[kind]
        print(f"{kind:<10} {s['requests']:>6} {s['errors']:>6} {s['p50_ms']:>8.1f} {s['p95_ms']:>8.1f} "
              f"{s['p99_ms']:>8.1f} {s['throughput_rps']:>8.0f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    if args.doc:
        update_doc(Path(args.doc), markdown(res))
    if tmp is not None:
        tmp.cleanup()
    return 1 if summary["all"]["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
