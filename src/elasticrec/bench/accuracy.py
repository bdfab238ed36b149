"""Accuracy benchmark: one ``elasticrec train`` per (dataset, model, seed) from the presets
``configs/<dataset>/<model>.yaml``, J at a time, then test metrics as mean ± std over seeds
beside published numbers.

    elasticrec bench accuracy --datasets ml-1m,beauty --models sasrec,hstu,elastic --seeds 42,43,44 \\
        --time-budget-s 600 --jobs 4 --out docs/results/accuracy

Every run gets the same wall-clock training budget (``train.time_budget_s``) and, with
``--epochs``, the same epoch cap, on top of its preset's early stopping. Runs live in
``--runs-dir`` (one folder per run, ``<dataset>-<model>-s<seed>``); a finished run (its
``test_metrics.json`` exists) is never run again, so a second invocation only aggregates, and
``--resume`` continues unfinished runs from their last epoch checkpoint (a resumed run gets a
fresh time budget). A (dataset, model) without a preset is skipped with a note. Every other
model is also compared with ``--baseline`` (default sasrec) user by user: a paired bootstrap
interval and sign-flip p-value of the difference in test NDCG@10 (see ``elasticrec compare``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from elasticrec.bench.runs import summarise

# Published full-ranking leave-one-out numbers (HR@10, NDCG@10); see /work/shared/data/README.md.
PUBLISHED = [
    {"dataset": "ml-1m", "label": "SASRec, sampled softmax", "HR@10": 0.2853, "NDCG@10": 0.1603,
     "source": "facebookresearch/generative-recommenders README"},
    {"dataset": "ml-1m", "label": "HSTU", "HR@10": 0.3097, "NDCG@10": 0.1720,
     "source": "facebookresearch/generative-recommenders README"},
    {"dataset": "ml-1m", "label": "HSTU-large", "HR@10": 0.3294, "NDCG@10": 0.1893,
     "source": "facebookresearch/generative-recommenders README"},
    {"dataset": "ml-1m", "label": "gSASRec", "HR@10": 0.3003, "NDCG@10": 0.1726, "source": "asash/gSASRec-pytorch README"},
    {"dataset": "beauty", "label": "SASRec, cross-entropy (RecBole)", "HR@10": 0.0848, "NDCG@10": 0.0432,
     "source": "third-party RecBole run on the S3-Rec file; indicative"},
]


@dataclass(frozen=True)
class BenchDataset:
    preset: str  # configs/<preset>/<model>.yaml and data.name
    overrides: tuple[str, ...] = ()
    about: str = ""
    variant: str | None = None  # configs/<preset>/<variant>/<model>.yaml instead


# Benchmark dataset names: the presets as they are, plus settings that need overrides.
DATASETS: dict[str, BenchDataset] = {
    "ml-1m": BenchDataset("ml-1m", (), "MovieLens-1M, L=200 (preset)"),
    "ml-100k": BenchDataset("ml-100k", (), "MovieLens-100k, L=200 (preset)"),
    "beauty": BenchDataset("beauty", (), "Amazon Beauty, S3-Rec file, L=50"),
    "sports": BenchDataset("sports", (), "Amazon Sports, S3-Rec file, L=50"),
    "yelp": BenchDataset("yelp", (), "Yelp, S3-Rec file, L=50"),
    "lastfm": BenchDataset("lastfm", (), "LastFM, S3-Rec file, L=50"),
    "beauty-bert4rec": BenchDataset("beauty-bert4rec", (), "Amazon Beauty, BERT4Rec pair file, L=50"),
    "ml-1m-1000": BenchDataset("ml-1m", ("model.max_len=1000",),
                               "MovieLens-1M at L=1000: the longest real histories here (41 users with >= 1,000 "
                               "events); the ML-1M presets otherwise"),
    "ml-1m-large": BenchDataset("ml-1m", (), "MovieLens-1M, L=200, 8 layers, cosine scores, output gate "
                                "(configs/ml-1m/large/: HSTU at HSTU-large's size)", variant="large"),
    "ml-1m-tuned": BenchDataset("ml-1m", (), "MovieLens-1M, L=200, 2 layers, cosine scores, output gate, each "
                                "model at the learning rate ML-1M validation picked (configs/ml-1m/tuned/)",
                                variant="tuned"),
    "ml-1m-long": BenchDataset("ml-1m", (), "MovieLens-1M at L=1000 with length-bucketed batches, otherwise "
                               "ml-1m-tuned (configs/ml-1m/long/)", variant="long"),
    "ml-1m-best": BenchDataset("ml-1m", (), "ml-1m-tuned with the learning rate decayed to zero on a cosine "
                               "schedule over the 60 epochs (configs/ml-1m/best/)", variant="best"),
    "sports-tuned": BenchDataset("sports", (), "Amazon Sports, L=50, cosine scores, ELASTIC with the memory off, "
                                 "each model at the learning rate Sports validation picked, 10 epochs "
                                 "(configs/sports/tuned/)", variant="tuned"),
    "sports-sink": BenchDataset("sports", (), "sports-tuned with SASRec given an attention sink, 16 learned "
                                "key/value pairs per layer, like ELASTIC's empty-history dispatchers "
                                "(configs/sports/sink/)", variant="sink"),
    "sports-best": BenchDataset("sports", (), "sports-sink at dropout 0.3, which Sports validation picks for both "
                                "models (configs/sports/best/)", variant="best"),
    "yelp-best": BenchDataset("yelp", (), "Yelp with sports-best's settings: SASRec with 16 learned key/value "
                              "pairs, ELASTIC with the memory off, dropout 0.3, 10 epochs (configs/yelp/best/)",
                              variant="best"),
    "beauty-best": BenchDataset("beauty", (), "Amazon Beauty, L=50, cosine scores, lr 3e-3, 128 wide, 30 epochs on "
                                "a cosine rate schedule, ELASTIC with the memory off (configs/beauty/best/)",
                                variant="best"),
    "synthetic": BenchDataset("synthetic", (), "synthetic long-interest data, L=400 (preset)"),
    "synthetic-4096": BenchDataset(
        "synthetic",
        ("model.max_len=4096", "data.synthetic.n_users=1000", "data.synthetic.min_len=4096",
         "data.synthetic.max_len=4608", "train.batch_size=16", "eval.batch_size=16",
         "model.elastic.chunk_size=64"),
        "synthetic long-interest data at L=4096 (1,000 users with 4,096-4,608 events; batch 16; ELASTIC C=64)"),
}

SMOKE_OVERRIDES = (
    "data.synthetic.n_users=48", "data.synthetic.n_items=40", "data.synthetic.min_len=20",
    "data.synthetic.max_len=70", "data.synthetic.n_clusters=4", "model.max_len=64", "model.d_model=16",
    "model.elastic.chunk_size=16", "model.elastic.memory_n_keys=8", "model.elastic.memory_topk=4",
    "model.elastic.memory_key_dim=16", "train.epochs=1", "train.batch_size=16", "eval.batch_size=64",
)

METRICS = ("HR@10", "NDCG@10", "MRR", "HR@50")


@dataclass
class Job:
    dataset: str
    model: str
    seed: int
    preset: Path
    run_dir: Path
    overrides: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.run_dir.name


def plan(datasets: list[str], models: list[str], seeds: list[int], runs_dir: Path,
         extra: list[str] = ()) -> tuple[list[Job], list[str]]:
    """Jobs with a preset, and one note per skipped (dataset, model)."""
    from elasticrec.cli import preset_path
    from elasticrec.config import ConfigError

    jobs, notes = [], []
    for ds in datasets:
        bd = DATASETS.get(ds)
        if bd is None:
            if not any(preset_path(ds, m) for m in models):
                raise ConfigError(f"--datasets: unknown dataset {ds!r}; choose from {', '.join(DATASETS)} "
                                  f"(or any configs/<dataset>/ folder)")
            bd = BenchDataset(ds)
        for m in models:
            preset = preset_path(bd.preset, m, bd.variant)
            if preset is None:
                notes.append(f"{ds} / {m}: no preset configs/{Path(bd.preset, bd.variant or '', f'{m}.yaml')}; skipped")
                continue
            for s in seeds:
                jobs.append(Job(ds, m, s, preset, runs_dir / f"{ds}-{m}-s{s}", [*bd.overrides, *extra]))
    return jobs, notes


def job_state(job: Job) -> str:
    """finished | unfinished (has a checkpoint to resume) | new."""
    if (job.run_dir / "test_metrics.json").exists():
        return "finished"
    if (job.run_dir / "checkpoints" / "last.json").exists():
        return "unfinished"
    return "new"


def train_command(job: Job, threads: int, time_budget_s: float | None, epochs: int | None, device: str | None,
                  resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "elasticrec", "train", "--run-dir", str(job.run_dir), "--no-progress"]
    if resume:
        return cmd + ["--resume"]
    cmd += ["--config", str(job.preset), "--dataset", DATASETS[job.dataset].preset if job.dataset in DATASETS
            else job.dataset, "--model", job.model, "--set", f"train.seed={job.seed}",
            "--set", f"train.num_threads={threads}"]
    if time_budget_s is not None:
        cmd += ["--set", f"train.time_budget_s={time_budget_s:g}"]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    if device:
        cmd += ["--device", device]
    for o in job.overrides:
        cmd += ["--set", o]
    return cmd


def run_jobs(jobs: list[Job], n_jobs: int, threads: int, time_budget_s=None, epochs=None, device=None,
             resume: bool = False, log=print) -> dict[str, str]:
    """Launch the runs that still need to run, ``n_jobs`` at a time. Returns {run name: outcome}."""
    outcome: dict[str, str] = {}
    todo = []
    for j in jobs:
        st = job_state(j)
        if st == "finished":
            outcome[j.name] = "finished earlier (skipped)"
        elif st == "unfinished" and not resume:
            outcome[j.name] = "unfinished (pass --resume to continue it)"
        else:
            todo.append((j, st == "unfinished"))
    for name, o in outcome.items():
        log(f"[skip] {name}: {o}", flush=True)
    logs = jobs[0].run_dir.parent / "logs" if jobs else None
    running: list[tuple[Job, subprocess.Popen, float]] = []
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    old_handler = _stop_on_sigterm()
    try:
        while todo or running:
            while todo and len(running) < n_jobs:
                j, res = todo.pop(0)
                if not res and j.run_dir.exists():  # a crash before the first checkpoint: start over
                    shutil.rmtree(j.run_dir)
                logs.mkdir(parents=True, exist_ok=True)
                cmd = train_command(j, threads, time_budget_s, epochs, device, res)
                with open(logs / f"{j.name}.log", "a") as f:
                    f.write("$ " + shlex.join(cmd) + "\n")
                    f.flush()
                    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
                running.append((j, p, time.time()))
                log(f"[{'resume' if res else 'start'}] {j.name}", flush=True)
            time.sleep(0.2)
            for item in list(running):
                j, p, t0 = item
                rc = p.poll()
                if rc is None:
                    continue
                running.remove(item)
                outcome[j.name] = "ran" if rc == 0 else f"failed (exit {rc}; see {logs / (j.name + '.log')})"
                log(f"[{'done' if rc == 0 else 'FAIL'}] {j.name} in {time.time() - t0:.0f} s"
                    + ("" if rc == 0 else f": {outcome[j.name]}"), flush=True)
    finally:
        for _, p, _ in running:  # interrupted: stop the children we started (they can be resumed)
            p.terminate()
        for _, p, _ in running:
            p.wait()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    return outcome


def _stop_on_sigterm():
    """SIGTERM (e.g. from ``timeout``) unwinds like Ctrl-C, so the children are stopped too."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


# ----------------------------------------------------------------------------- aggregation
def _mean_std(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def aggregate(jobs: list[Job]) -> tuple[list[dict], list[dict]]:
    """(per-(dataset, model) groups with mean/std over seeds, per-run summaries)."""
    runs, groups = [], {}
    for j in jobs:
        r = summarise(j.run_dir) if j.run_dir.exists() else None
        if r is None:
            continue
        r = {**r, "bench_dataset": j.dataset}
        runs.append(r)
        groups.setdefault((j.dataset, j.model), []).append(r)
    out = []
    for (ds, m), rs in groups.items():
        g = {"dataset": ds, "model": m, "n": len(rs), "seeds": sorted(r["seed"] for r in rs), "L": rs[0]["L"],
             "variant": rs[0]["variant"], "fit": rs[0].get("fit", "train"), "epochs_mean": sum(r["epochs_run"] for r in rs) / len(rs),
             "s_per_epoch_mean": sum(r["train_s_per_epoch"] for r in rs) / len(rs),
             "stop_reasons": sorted({r["stop_reason"].split(":")[0] for r in rs}), "metrics": {}}
        for k in METRICS:
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                g["metrics"][k] = _mean_std(vals)
        out.append(g)
    return out, runs


def paired_against(jobs: list[Job], baseline: str, metric: str = "NDCG@10",
                   n_resamples: int = 10_000) -> tuple[list[dict], list[str]]:
    """Each model against ``baseline`` on each dataset, paired by user: per-user ``metric``
    averaged over the seeds both finished with saved ranks, then a paired bootstrap interval and
    sign-flip p-value (:mod:`elasticrec.evaluate.significance`). Returns (rows, notes)."""
    import numpy as np

    from elasticrec.evaluate.significance import RanksError, load_pair, paired_test, ranks_path, side_values

    by = {(j.dataset, j.model, j.seed): j for j in jobs}
    rows, notes = [], []
    for ds, m in dict.fromkeys((j.dataset, j.model) for j in jobs):
        if m == baseline:
            continue
        ranks_a, ranks_b, seeds = [], [], []
        for s in sorted(j.seed for j in jobs if (j.dataset, j.model) == (ds, m)):
            base, cand = by.get((ds, baseline, s)), by[(ds, m, s)]
            if base is None or not (ranks_path(base.run_dir).exists() and ranks_path(cand.run_dir).exists()):
                continue
            try:
                ra, rb, _, _ = load_pair(base.run_dir, cand.run_dir)
            except RanksError as e:
                notes.append(f"{ds} / {m} seed {s}: not paired with {baseline}: {e}")
                continue
            ranks_a.append(ra)
            ranks_b.append(rb)
            seeds.append(s)
        if seeds:
            xa, xb = side_values(np.stack(ranks_a), metric), side_values(np.stack(ranks_b), metric)
            r = paired_test(xa, xb, metric, n_resamples)
            rows.append({"dataset": ds, "model": m, "baseline": baseline, "seeds": seeds, **r.to_dict()})
    return rows, notes


def _ms(m: dict | None) -> str:
    if not m:
        return ""
    return f"{m['mean']:.4f} ± {m['std']:.4f}" if m["n"] > 1 else f"{m['mean']:.4f}"


def to_markdown(groups: list[dict], meta: dict, notes: list[str], paired: list[dict] = ()) -> str:
    lines = ["# Accuracy: test metrics over seeds", "",
             f"Generated by `elasticrec bench accuracy` on {meta['date']}. Leave-one-out, full ranking over all "
             "items, best-validation checkpoint scored once on test"
             + ("; rows marked [train+valid] are refits (`train.fit=train+valid`: trained on the validation "
                "items too, never validated, final weights scored once on test)"
                if any(g.get("fit", "train") != "train" for g in groups) else "")
             + ". Cells: mean ± sample std over n seeds.",
             "", f"- Command: `{meta['command']}`",
             f"- Machine: {meta['machine']}; PyTorch {meta['torch']}, Python {meta['python']}",
             "- Training budget per run: " + (f"{meta['time_budget_s']:g} s wall clock" if meta["time_budget_s"] else "none")
             + ("" if meta["epochs"] is None else f", at most {meta['epochs']} epochs")
             + f" (plus each preset's early stopping); {meta['jobs']} runs at a time, "
             f"{meta['threads']} torch thread(s) each.",
             "- Rows in *italics* labelled **published** are numbers reported elsewhere, not measured here.", ""]
    head = "| dataset | model | L | n (seeds) | HR@10 | NDCG@10 | MRR | HR@50 | epochs | s/epoch | stopped by |"
    lines += [head, "|---" * (head.count("|") - 1) + "|"]
    for ds in list(dict.fromkeys([g["dataset"] for g in groups] + [p["dataset"] for p in PUBLISHED
                                                                    if p["dataset"] in meta["datasets"]])):
        for g in sorted((g for g in groups if g["dataset"] == ds), key=lambda g: g["model"]):
            mt = g["metrics"]
            model = g["model"] + (f" ({g['variant']})" if g["variant"] else "")
            model += f" [{g['fit']}]" if g.get("fit", "train") != "train" else ""
            lines.append(f"| {ds} | {model} | {g['L']} | {g['n']} ({','.join(map(str, g['seeds']))}) | "
                         f"{_ms(mt.get('HR@10'))} | {_ms(mt.get('NDCG@10'))} | {_ms(mt.get('MRR'))} | "
                         f"{_ms(mt.get('HR@50'))} | {g['epochs_mean']:.1f} | {g['s_per_epoch_mean']:.1f} | "
                         f"{', '.join(g['stop_reasons'])} |")
        for p in PUBLISHED:
            if p["dataset"] == ds:
                lines.append(f"| {ds} | *published: {p['label']}* | | | *{p['HR@10']:.4f}* | *{p['NDCG@10']:.4f}* "
                             f"| | | | | *{p['source']}* |")
    if paired:
        r0 = paired[0]
        lines += ["", f"Paired against {r0['baseline']}, {r0['metric']} (the same test users; each user's value "
                      "averaged over the seeds both models finished; 95% paired-bootstrap interval of the "
                      "difference and two-sided sign-flip p-value, as `elasticrec compare` prints them):", "",
                  f"| dataset | model | seeds | {r0['baseline']} | model | difference | 95% CI | p |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in paired:
            lines.append(f"| {r['dataset']} | {r['model']} | {','.join(map(str, r['seeds']))} | {r['a']:.4f} | "
                         f"{r['b']:.4f} | {r['diff']:+.4f} | [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | "
                         f"{r['p_value']:.4f} |")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datasets", help=f"comma-separated (default ml-1m): {', '.join(DATASETS)}")
    p.add_argument("--models", help="comma-separated registered models (default sasrec,hstu,linrec,elastic)")
    p.add_argument("--seeds", help="comma-separated (default 42,43,44)")
    p.add_argument("--time-budget-s", type=float, help="wall-clock training budget of every run")
    p.add_argument("--epochs", type=int, help="epoch cap of every run (default: the presets')")
    p.add_argument("--jobs", type=int, default=1, help="concurrent training subprocesses")
    p.add_argument("--threads", type=int, help="torch threads per run (default: cores // jobs, at least 1)")
    p.add_argument("--device", help="passed to every run (default: the presets', i.e. auto)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run (repeatable)")
    p.add_argument("--baseline", default="sasrec",
                   help="model every other model is compared with, paired by user (default sasrec; when benchmarked)")
    p.add_argument("--resume", action="store_true", help="continue unfinished runs from their last checkpoint")
    p.add_argument("--runs-dir", help="where run directories go (default runs/accuracy; --smoke: OUT/runs)")
    p.add_argument("--out", help="folder for accuracy.json / accuracy.md (default docs/results/accuracy)")
    p.add_argument("--note", action="append", default=[], help="extra note for the markdown table (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the training commands and exit")
    p.add_argument("--collect-only", action="store_true",
                   help="train nothing: only tabulate the runs of --runs-dir that finished")
    p.add_argument("--smoke", action="store_true",
                   help="tiny CI run: synthetic data, 1 epoch, d=16, L=64; default models sasrec,elastic, seed 42")


def _split(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def run(args) -> int:
    import platform

    import torch

    from elasticrec.config import ConfigError
    from elasticrec.models import list_models

    overrides = list(args.overrides)
    defaults = ("synthetic", "sasrec,elastic", "42") if args.smoke else ("ml-1m", "sasrec,hstu,linrec,elastic", "42,43,44")
    datasets = _split(args.datasets or defaults[0])
    models = _split(args.models or defaults[1])
    try:
        seeds = [int(s) for s in _split(args.seeds or defaults[2])]
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    if args.smoke:
        overrides = [*SMOKE_OVERRIDES, *overrides]
    out = Path(args.out or ("runs/bench-smoke" if args.smoke else "docs/results/accuracy"))
    runs_dir = Path(args.runs_dir) if args.runs_dir else (out / "runs" if args.smoke else Path("runs/accuracy"))
    if args.jobs < 1:
        raise ConfigError("--jobs must be >= 1")
    cores = os.cpu_count() or 1
    threads = args.threads or max(1, cores // args.jobs)
    notes = []
    if args.jobs * threads > cores:
        notes.append(f"{args.jobs} jobs x {threads} threads exceed the {cores} cores: timings are contended")
    known = list_models()
    notes += [f"model {m!r} is not registered in this version; skipped" for m in models if m not in known]
    models = [m for m in models if m in known]
    if not models:
        raise ConfigError(f"--models: no registered model given; choose from {', '.join(known)}")
    jobs, skipped = plan(datasets, models, seeds, runs_dir, overrides)
    notes += skipped
    for n in notes:
        print(f"note: {n}", flush=True)
    if args.dry_run:
        for j in jobs:
            print(shlex.join(train_command(j, threads, args.time_budget_s, args.epochs, args.device,
                                           args.resume and job_state(j) == "unfinished")))
        return 0
    def untrained(why: str) -> dict[str, str]:  # outcome when this invocation trains nothing more
        return {j.name: "finished" if job_state(j) == "finished" else why for j in jobs}

    interrupted = False
    if args.collect_only:
        outcome = untrained("not run (--collect-only)")
    else:
        try:
            outcome = run_jobs(jobs, args.jobs, threads, args.time_budget_s, args.epochs, args.device, args.resume)
        except KeyboardInterrupt:
            print("interrupted: running trainings stopped; run the same command with --resume to continue; "
                  "the tables below hold the runs that finished", file=sys.stderr)
            interrupted = True
            outcome = untrained("interrupted before its test score")
    notes += [f"{name}: {o}" for name, o in outcome.items() if o.startswith(("failed", "unfinished", "not run",
                                                                              "interrupted"))]
    groups, runs = aggregate(jobs)
    paired, pair_notes = paired_against(jobs, args.baseline) if args.baseline in models else ([], [])
    notes += pair_notes
    env = [f"ELASTICREC_DATA={os.environ['ELASTICREC_DATA']}"] if os.environ.get("ELASTICREC_DATA") else []
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"),
            "command": shlex.join([*env, "elasticrec", "bench", "accuracy", *_argv(args)]),
            "machine": (torch.cuda.get_device_name() if (args.device or "").startswith("cuda") and torch.cuda.is_available()
                        else _cpu_name()), "torch": torch.__version__, "python": platform.python_version(),
            "time_budget_s": args.time_budget_s, "epochs": args.epochs, "jobs": args.jobs, "threads": threads,
            "datasets": datasets, "models": models, "seeds": seeds}
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps({"meta": meta, "groups": groups, "runs": runs, "paired": paired,
                                                   "notes": [*args.note, *notes], "published": PUBLISHED},
                                                  indent=2) + "\n")
    md = to_markdown(groups, meta, [*args.note, *notes], paired)
    (out / "accuracy.md").write_text(md)
    print(md)
    print(f"wrote {out / 'accuracy.json'} and {out / 'accuracy.md'}")
    failed = [n for n, o in outcome.items() if o.startswith("failed")]
    return 130 if interrupted else 1 if failed else 0


def _argv(args) -> list[str]:
    parts = ["--smoke"] if args.smoke else []
    for flag in ("datasets", "models", "seeds", "time_budget_s", "epochs", "jobs", "threads", "device", "runs_dir", "out"):
        v = getattr(args, flag)
        if v is not None:
            parts += ["--" + flag.replace("_", "-"), f"{v:g}" if isinstance(v, float) else str(v)]
    for o in args.overrides:
        parts += ["--set", o]
    return parts + (["--resume"] if args.resume else []) + (["--collect-only"] if args.collect_only else [])


def _cpu_name() -> str:
    from elasticrec.bench.efficiency import machine_info

    return f"{machine_info('cpu')['cpu']} ({os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> int:
    from elasticrec.bench.cli import standalone

    return standalone("accuracy", sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
