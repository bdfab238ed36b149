"""Efficiency benchmark: training-step time, last-position inference time, peak memory and
tokens/s of every model as the sequence length L grows (same d, layers, heads for all).

    elasticrec bench efficiency --device cpu --lengths 256,512,1024 --models sasrec,elastic --out docs/efficiency

For each model and L the batch holds ``max(1, batch_tokens // L)`` full-length sequences of
random item ids. A *training step* is forward + loss + backward + AdamW step; the loss is the
sampled softmax with ``--negatives`` uniform negatives shared by the batch (no in-batch
negatives), the same for every model, so that the output layer over ``--n-items`` items does not
dominate time or memory. Models that read timestamps get increasing random ones. *Inference* is ``model.last_hidden`` (the next-item query) under
``torch.no_grad`` in eval mode. Each is warmed up, then timed ``--repeats`` times; the median
is reported.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``
(minus what was allocated before the model was built). On CPU every (model, L) point runs in a
fresh subprocess and reports its peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``)
minus the peak after the imports and one tiny step of the same model; inference runs before training so its peak is read
first. Both include weights and (for training) AdamW state.

Time limit: a point is a ``timeout`` when the warm-up (inference and training) already used up
``--time-limit-s``, or when its subprocess is still running ``--time-limit-s`` + 60 s after it
started; otherwise timed repeats stop once the limit is reached (at least one is taken).
A model stops at the first L where it runs out of memory (``OOM``), times out or fails
(``error``); larger L are recorded as ``skipped``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_LENGTHS = "256,512,1024,2048,4096,8192,16384,32768"
DEFAULT_MODELS = "sasrec,sasrec-explicit,hstu,linrec,elastic"
REFERENCE = "elastic"
BASELINES = ("sasrec", "sasrec-explicit")
ROW_KEYS = ("model", "L", "batch", "tokens", "status", "train_ms", "train_tokens_per_s", "infer_ms",
            "infer_tokens_per_s", "peak_train_mib", "peak_infer_mib", "repeats", "note")
FAILED = ("OOM", "timeout", "error")


@dataclass
class PointSpec:
    """One (model, L) measurement."""

    model: str
    L: int
    batch: int
    d_model: int = 64
    layers: int = 2
    heads: int = 2
    n_items: int = 10_000
    negatives: int = 256
    device: str = "cpu"
    amp: str = "off"  # off | bf16
    warmup: int = 1
    repeats: int = 3
    time_limit_s: float = 60.0
    threads: int = 1
    mem_limit_gb: float | None = None  # CPU subprocess: address-space cap above the post-import size
    seed: int = 0
    overrides: list[str] = field(default_factory=list)


def point_config(spec: PointSpec):
    """The experiment config of one point: the model section plus the benchmark's loss."""
    from elasticrec.config import load_config

    base = [f"model.name={spec.model}", f"model.max_len={spec.L}", f"model.d_model={spec.d_model}",
            f"model.n_layers={spec.layers}", f"model.n_heads={spec.heads}", "train.loss=sampled",
            "train.in_batch_negatives=false", f"train.n_negatives={spec.negatives}"]
    return load_config(None, base + list(spec.overrides))


def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg
                                           or "defaultcpuallocator" in msg)


def _error_note(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 160 characters), for a row's note."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def build_point(spec: PointSpec, device, fused: bool | None = None):
    """(cfg, model, opt, x, y, ts) of one point: the model of the point's config on ``device``,
    the trainer's optimizer (fused AdamW on a GPU; ``fused`` as in ``build_optimizer``), random
    items and targets [batch, L], and increasing timestamps for models that read them (HSTU's
    time bias; else None)."""
    import torch

    from elasticrec.models import build_model
    from elasticrec.train.trainer import build_optimizer

    cfg = point_config(spec)
    torch.manual_seed(spec.seed)
    model = build_model(cfg.model, spec.n_items).to(device)
    opt = build_optimizer(model, cfg, fused)
    x = torch.randint(1, spec.n_items + 1, (spec.batch, spec.L), device=device)
    y = torch.randint(1, spec.n_items + 1, (spec.batch, spec.L), device=device)
    ts = None
    if getattr(model, "uses_timestamps", False):
        ts = torch.randint(1, 86_400, (spec.batch, spec.L), device=device).cumsum(1) + 10**9
    return cfg, model, opt, x, y, ts


def train_step(model, opt, cfg, x, y, ts, amp=contextlib.nullcontext()) -> None:
    """One training step as benchmarked: forward and loss (under ``amp``), backward, AdamW."""
    from elasticrec.train.losses import next_item_loss

    with amp:
        h = model(x, ts)
        loss = next_item_loss(model, h, y, cfg.train, None, reduction="mean")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def measure_point(spec: PointSpec, cpu_peak_mib=None) -> dict:
    """Measure one point in this process. ``cpu_peak_mib()`` (subprocess mode) reads the CPU peak."""
    import torch

    row = {k: None for k in ROW_KEYS}
    row.update(model=spec.model, L=spec.L, batch=spec.batch, tokens=spec.batch * spec.L, status="ok", note="")
    device = torch.device(spec.device)
    cuda = device.type == "cuda"
    t0 = time.perf_counter()

    def elapsed() -> float:
        return time.perf_counter() - t0

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def timed(fn) -> float:
        sync()
        s = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - s

    model = opt = x = y = None
    try:
        if cuda:
            torch.cuda.empty_cache()
            mem0 = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        cfg, model, opt, x, y, ts = build_point(spec, device)
        amp = torch.autocast(device.type, dtype=torch.bfloat16) if spec.amp == "bf16" else contextlib.nullcontext()

        def infer():
            with torch.no_grad(), amp:
                model.last_hidden(x, ts)

        def train():
            train_step(model, opt, cfg, x, y, ts, amp)

        # --- inference first (its CPU peak is read before training raises it)
        model.eval()
        for _ in range(spec.warmup):
            timed(infer)
        times = [timed(infer)]
        while len(times) < spec.repeats and elapsed() < 0.25 * spec.time_limit_s:
            times.append(timed(infer))
        row["infer_ms"] = 1e3 * statistics.median(times)
        row["infer_tokens_per_s"] = row["tokens"] / (row["infer_ms"] / 1e3)
        if cuda:
            row["peak_infer_mib"] = (torch.cuda.max_memory_allocated(device) - mem0) / 2**20
            torch.cuda.reset_peak_memory_stats(device)
        elif cpu_peak_mib is not None:
            row["peak_infer_mib"] = cpu_peak_mib()
        # --- training
        model.train()
        w = 0.0
        for _ in range(spec.warmup):
            w = timed(train)
        if elapsed() > spec.time_limit_s:
            row.update(status="timeout", note=f"warm-up training step {w:.1f} s; point over {spec.time_limit_s:g} s")
            return row
        times = [timed(train)]
        while len(times) < spec.repeats and elapsed() < spec.time_limit_s:
            times.append(timed(train))
        row["repeats"] = len(times)
        row["train_ms"] = 1e3 * statistics.median(times)
        row["train_tokens_per_s"] = row["tokens"] / (row["train_ms"] / 1e3)
        if cuda:
            row["peak_train_mib"] = (torch.cuda.max_memory_allocated(device) - mem0) / 2**20
        elif cpu_peak_mib is not None:
            row["peak_train_mib"] = cpu_peak_mib()
    except Exception as e:  # OOM / model errors become rows, not tracebacks
        if _is_oom(e):
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            row.update(status="OOM", note=msg.split("DefaultCPUAllocator: ")[-1][:100])
        else:
            row.update(status="error", note=_error_note(e))
    finally:
        del model, opt, x, y
        late = release_memory(cuda)
        if late:
            row.update(status="error", note=late)
    return row


def release_memory(cuda: bool) -> str | None:
    """Free the point's memory. A CUDA error can surface only here (a device-side assert is
    reported at the next call: HSTU at L = 32,768 on an H200, 2026-12-04, ended the whole sweep
    with no output written); it comes back as the row's error note instead of a traceback."""
    import torch

    gc.collect()
    if not cuda:
        return None
    try:
        torch.cuda.empty_cache()
    except Exception as e:  # noqa: BLE001  any CUDA error: the sweep records it and goes on
        return _error_note(e)
    return None


# ----------------------------------------------------------------------------- subprocess mode
def _child(spec_json: str) -> None:
    """Entry of the per-point subprocess: prints one ``RESULT {json}`` line."""
    import resource

    spec = PointSpec(**json.loads(spec_json))
    import torch

    import elasticrec.models  # noqa: F401  (imports are part of the baseline)
    import elasticrec.train.losses  # noqa: F401

    torch.set_num_threads(spec.threads)
    # one tiny step of the same model first, so library start-up pages (autograd, AdamW, kernels)
    # count in the baseline and not in the point's peak
    measure_point(PointSpec(**{**asdict(spec), "L": 32, "batch": 1, "warmup": 0, "repeats": 1, "time_limit_s": 1e9}))
    if spec.mem_limit_gb:
        vm = _vm_size_bytes()
        limit = vm + int(spec.mem_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    def peak_mib() -> float:
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024

    row = measure_point(spec, cpu_peak_mib=peak_mib if spec.device == "cpu" else None)
    print("RESULT " + json.dumps(row), flush=True)


def _vm_size_bytes() -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def run_point_subprocess(spec: PointSpec, grace_s: float = 60.0) -> dict:
    """Measure one point in a fresh interpreter (own peak RSS; a hang or kill cannot stop the sweep)."""
    row = {k: None for k in ROW_KEYS}
    row.update(model=spec.model, L=spec.L, batch=spec.batch, tokens=spec.batch * spec.L, note="")
    env = dict(os.environ, OMP_NUM_THREADS=str(spec.threads), MKL_NUM_THREADS=str(spec.threads))
    cmd = [sys.executable, "-m", "elasticrec.bench.efficiency", "--child", json.dumps(asdict(spec))]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=spec.time_limit_s + grace_s)
    except subprocess.TimeoutExpired:
        row.update(status="timeout", note=f"killed after {spec.time_limit_s + grace_s:g} s")
        return row
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [""]
    if p.returncode in (-9, 137) or "memory" in tail[0].lower():
        row.update(status="OOM", note=f"subprocess killed (exit {p.returncode}) {tail[0][:100]}".strip())
    else:
        row.update(status="error", note=f"exit {p.returncode}: {tail[0][:160]}")
    return row


# ----------------------------------------------------------------------------- sweep
def resolve_models(names: list[str] | None, explicit: bool) -> tuple[list[str], list[str]]:
    """(models to run, notes). Names not in the registry are skipped with a note (e.g. a model that a
    later version adds); none left at all is an error that lists the registered models."""
    from elasticrec.config import ConfigError
    from elasticrec.models import list_models

    known = list_models()
    if names is None:
        names = DEFAULT_MODELS.split(",")
    missing = [n for n in names if n not in known]
    notes = [f"model {n!r} is not registered in this version (registered: {', '.join(known)}); skipped"
             for n in missing]
    models = [n for n in names if n in known]
    if not models:
        raise ConfigError(f"--models: no registered model among {', '.join(names)}; choose from {', '.join(known)}")
    if explicit:
        for n in notes:
            print(f"warning: {n}", file=sys.stderr)
    return models, notes


def run_sweep(models: list[str], lengths: list[int], batch_tokens: int, isolate: bool = True,
              log=print, **spec_kwargs) -> list[dict]:
    """Measure every (model, L); a model stops at its first OOM / timeout / error. Ctrl-C (SIGINT)
    stops the sweep: the points not measured are reported ``skipped`` and the rows are returned."""
    rows = []
    interrupted = None
    for m in models:
        stopped = interrupted
        for L in lengths:
            spec = PointSpec(model=m, L=L, batch=max(1, batch_tokens // L), **spec_kwargs)
            row = None
            if not stopped:
                try:
                    row = run_point_subprocess(spec) if isolate else measure_point(spec)
                except KeyboardInterrupt:
                    stopped = interrupted = "interrupted (SIGINT) before this point finished"
                else:
                    if row["status"] in FAILED:
                        stopped = f"{row['status']} at L={L}"
            if row is None:
                row = {k: None for k in ROW_KEYS}
                row.update(model=m, L=L, batch=spec.batch, tokens=spec.batch * L, status="skipped", note=stopped)
            rows.append(row)
            log(_fmt_row(row), flush=True)
    return rows


def _fmt_row(r: dict) -> str:
    def f(v, spec):
        return "-" if v is None else format(v, spec)

    return (f"{r['model']:>16} L={r['L']:>6} B={r['batch']:>4} {r['status']:>7}  train {f(r['train_ms'], '.1f')} ms"
            f"  infer {f(r['infer_ms'], '.1f')} ms  peak {f(r['peak_train_mib'], '.0f')}/{f(r['peak_infer_mib'], '.0f')} MiB"
            f"  {r.get('note') or ''}")


# ----------------------------------------------------------------------------- analysis
def _ok(rows: list[dict], model: str) -> dict[int, dict]:
    return {r["L"]: r for r in rows if r["model"] == model and r["status"] == "ok"}


def _status(rows: list[dict], model: str) -> dict[int, str]:
    return {r["L"]: r["status"] for r in rows if r["model"] == model}


METRICS = {"memory": "peak_train_mib", "train": "train_ms", "infer": "infer_ms"}


def ratios(rows: list[dict], reference: str = REFERENCE, baselines=BASELINES) -> list[dict]:
    """Reference / baseline at each L for memory, train time and inference time (< 1: reference better)."""
    out = []
    ref = _ok(rows, reference)
    for b in baselines:
        base, bstat = _ok(rows, b), _status(rows, b)
        if not bstat:
            continue
        for L in sorted(set(ref) | set(bstat)):
            rec = {"baseline": b, "L": L}
            for name, key in METRICS.items():
                r, s = ref.get(L, {}).get(key), base.get(L, {}).get(key)
                if r is not None and s:
                    rec[name] = r / s
                elif r is not None and L in bstat:
                    rec[name] = f"baseline {bstat[L]}"
                else:
                    rec[name] = None
            out.append(rec)
    return out


def crossovers(rows: list[dict], reference: str = REFERENCE, baselines=BASELINES) -> list[dict]:
    """Smallest L from which on the reference beats the baseline (lower value, or baseline failed)."""
    out = []
    ref = _ok(rows, reference)
    for b in baselines:
        base, bstat = _ok(rows, b), _status(rows, b)
        if not bstat or not ref:
            continue
        for name, key in METRICS.items():
            common = sorted(L for L in ref if L in bstat and ref[L].get(key) is not None)
            wins = [L for L in common if L not in base or base[L].get(key) is None or ref[L][key] < base[L][key]]
            cross = None
            for i, L in enumerate(common):  # first L after which the reference wins at every measured L
                if all(c in wins for c in common[i:]):
                    cross = L
                    break
            out.append({"baseline": b, "metric": name, "crossover_L": cross, "measured_from": min(common, default=None),
                        "measured_up_to": max(common, default=None)})
    return out


# ----------------------------------------------------------------------------- outputs
def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows (Linux-first)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def machine_info(device: str) -> dict:
    import torch

    info = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "device": device, "date": time.strftime("%Y-%m-%d %H:%M")}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def write_outputs(rows: list[dict], meta: dict, out: Path, md_path: Path, notes: list[str] = ()) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "efficiency.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ROW_KEYS), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    rat, cross = ratios(rows), crossovers(rows)
    plots, plot_note = plot(rows, out)
    result = {"meta": meta, "rows": rows, "ratios": rat, "crossovers": cross, "notes": list(notes)}
    (out / "efficiency.json").write_text(json.dumps(result, indent=2) + "\n")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(to_markdown(rows, meta, rat, cross, [*notes, *([plot_note] if plot_note else [])],
                                   [os.path.relpath(p, md_path.parent) for p in plots]))
    return result


def plot(rows: list[dict], out: Path) -> tuple[list[Path], str]:
    """Log-log time and memory vs L, one line per model (skipped when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "plots skipped: matplotlib is not installed (pip install matplotlib)"
    models = list(dict.fromkeys(r["model"] for r in rows))
    paths = []
    for fname, panels in (("time.png", [("train_ms", "training step (ms)"), ("infer_ms", "last_hidden inference (ms)")]),
                          ("memory.png", [("peak_train_mib", "peak memory, training (MiB)"),
                                          ("peak_infer_mib", "peak memory, inference (MiB)")])):
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4))
        for ax, (key, label) in zip(axes, panels):
            for m in models:
                pts = sorted((r["L"], r[key]) for r in rows if r["model"] == m and r["status"] == "ok" and r[key])
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=m)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length L")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_lines():
                ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        paths.append(out / fname)
    return paths, ""


def _num(v, spec=".1f") -> str:
    return "" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def to_markdown(rows, meta, rat, cross, notes=(), plots=()) -> str:
    a = meta.get("args", {})
    hw = meta.get("gpu") or meta.get("cpu")
    lines = [
        "# Efficiency: time and memory vs sequence length",
        "",
        f"Generated by `elasticrec bench efficiency` on {meta.get('date')}; rerun the command to regenerate "
        f"this page and `{Path(a.get('out') or 'efficiency').name}/` (CSV, JSON, PNG).",
        "",
        f"- Machine: {hw} ({meta.get('cpu_count')} CPU cores visible), device `{meta.get('device')}`, "
        f"{a.get('threads')} torch thread(s), autocast: {a.get('amp')}",
        f"- PyTorch {meta.get('torch')}, Python {meta.get('python')}",
        f"- Command: `{meta.get('command')}`",
        f"- Setup: d={a.get('d_model')}, {a.get('layers')} layers, {a.get('heads')} heads for every model; "
        f"batch = max(1, {a.get('batch_tokens')} // L) sequences of length L; {a.get('n_items'):,} items; "
        f"sampled softmax with {a.get('negatives')} shared uniform negatives (no in-batch negatives); "
        f"{a.get('warmup')} warm-up + median of up to {a.get('repeats')} timed repeats; "
        f"time limit {a.get('time_limit_s')} s per point"
        + (f"; CPU memory cap {a.get('mem_limit_gb'):g} GiB per point (allocations beyond it are reported as OOM)"
           if a.get("mem_limit_gb") else "") + f". Extra settings: {' '.join(a.get('set') or []) or 'none'}.",
        "- Training step = forward + loss + backward + AdamW step; inference = `last_hidden` (eval mode, no grad).",
        "- Peak memory: " + ("`torch.cuda.max_memory_allocated` after a reset, minus memory allocated before the model "
                             "was built (weights, AdamW state and activations included)."
                             if str(meta.get("device", "")).startswith("cuda") else
                             "peak RSS (`getrusage(RUSAGE_SELF).ru_maxrss`) of a fresh subprocess per point, minus "
                             "its peak after imports and one tiny warm-up step of the same model (weights, AdamW state and activations included); "
                             "inference is measured before training in the same process."),
        "- `OOM` / `timeout` / `error`: the model stopped at that L; larger L are `skipped`.",
    ]
    for n in notes:
        lines.append(f"- Note: {n}")
    lines += ["", "## Measurements", "",
              "| model | L | batch | train step (ms) | train tokens/s | last_hidden (ms) | peak train (MiB) | "
              "peak inference (MiB) | status |", "|---" * 9 + "|"]
    for r in rows:
        status = r["status"] if r["status"] == "ok" else f"**{r['status']}** {r.get('note') or ''}".strip()
        lines.append(f"| {r['model']} | {r['L']} | {r['batch']} | {_num(r['train_ms'])} | {_num(r['train_tokens_per_s'], ',.0f')} | "
                     f"{_num(r['infer_ms'], '.2f')} | {_num(r['peak_train_mib'], ',.0f')} | {_num(r['peak_infer_mib'], ',.0f')} | {status} |")
    if rat:
        lines += ["", f"## {REFERENCE} / baseline ratios (< 1: {REFERENCE} uses less memory / time)", "",
                  "| baseline | L | memory ratio | train-time ratio | inference-time ratio |", "|---" * 5 + "|"]
        for r in rat:
            lines.append(f"| {r['baseline']} | {r['L']} | {_num(r['memory'], '.2f')} | {_num(r['train'], '.2f')} | "
                         f"{_num(r['infer'], '.2f')} |")
    if cross:
        lines += ["", "## Crossover", "",
                  f"Smallest measured L from which {REFERENCE} is better at every larger measured L "
                  "(lower value, or the baseline failed):", ""]
        for c in cross:
            what = {"memory": "uses less peak training memory", "train": "trains faster",
                    "infer": "answers `last_hidden` faster"}[c["metric"]]
            if c["crossover_L"] is None:
                where = f"nowhere up to L = {c['measured_up_to']} (no crossover)"
            elif c["crossover_L"] == c.get("measured_from"):
                where = f"at every measured L (crossover at or below L = {c['crossover_L']})"
            else:
                where = f"from L = {c['crossover_L']}"
            lines.append(f"- vs `{c['baseline']}`: {REFERENCE} {what} {where}")
    if plots:
        lines += ["", "## Plots (log-log)", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    lines += ["", "## Reproduce", "", "CPU (this page's settings: see the command above). GPU, e.g. one H100, bf16 autocast:", "",
              "```bash",
              "elasticrec bench efficiency --device cuda --amp bf16 --lengths 256,512,1024,2048,4096,8192,16384,32768 \\",
              "    --models sasrec,sasrec-explicit,hstu,elastic --d-model 64 --layers 2 --heads 2 --batch-tokens 32768 \\",
              "    --time-limit-s 120 --out docs/efficiency-cuda    # writes docs/efficiency-cuda.md",
              "# the same through the script: python benchmarks/efficiency.py --device cuda --amp bf16 ...",
              "```", "",
              "On CUDA every point runs in the benchmark process (peak memory from the CUDA allocator); pass "
              "`--isolate` to use one subprocess per point there too.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--lengths", default="256,512,1024,2048,4096,8192", help=f"comma-separated L (e.g. {DEFAULT_LENGTHS})")
    p.add_argument("--models", help=f"comma-separated registered models (default: those of {DEFAULT_MODELS} that exist)")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--batch-tokens", type=int, default=32768, help="tokens per batch: batch = max(1, this // L)")
    p.add_argument("--n-items", type=int, default=10_000)
    p.add_argument("--negatives", type=int, default=256, help="uniform negatives of the sampled softmax")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--time-limit-s", type=float, default=60.0, help="wall-clock limit per (model, L) point")
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto", help="auto: bf16 autocast on CUDA")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per point")
    p.add_argument("--mem-limit-gb", type=float, help="CPU: cap each point's address space at this much above "
                   "its post-import size (allocations beyond it count as OOM)")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="one subprocess per point (default: on for CPU, off for CUDA)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="model/loss config override for every model, e.g. --set model.elastic.memory=true")
    p.add_argument("--note", action="append", default=[], help="extra note for the markdown page (repeatable)")
    p.add_argument("--smoke", action="store_true", help="tiny CI run: L=32,64, d=16, 1 layer, 256 tokens per batch, "
                   "1 repeat, in one process; default --out runs/bench-smoke/efficiency")
    p.add_argument("--out", help="folder for CSV/JSON/PNG (default docs/efficiency)")
    p.add_argument("--md", help="markdown page (default: OUT.md, i.e. docs/efficiency.md)")


def _command(args) -> str:
    parts = ["elasticrec", "bench", "efficiency", "--device", args.device, "--lengths", args.lengths]
    if args.smoke:
        parts.append("--smoke")
    if args.models:
        parts += ["--models", args.models]
    for flag in ("d_model", "layers", "heads", "batch_tokens", "n_items", "negatives", "warmup", "repeats",
                 "time_limit_s", "amp", "threads", "mem_limit_gb"):
        v = getattr(args, flag)
        if v is not None:
            parts += ["--" + flag.replace("_", "-"), f"{v:g}" if isinstance(v, float) else str(v)]
    if args.isolate is not None:
        parts.append("--isolate" if args.isolate else "--no-isolate")
    for o in args.overrides:
        parts += ["--set", o]
    parts += ["--out", args.out]
    if args.md:
        parts += ["--md", args.md]
    return shlex.join(parts)


SMOKE = {"lengths": "32,64", "d_model": 16, "layers": 1, "heads": 2, "batch_tokens": 256, "n_items": 200,
         "negatives": 16, "warmup": 1, "repeats": 1, "time_limit_s": 60.0}


def run(args) -> int:
    from elasticrec.config import ConfigError

    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
        if args.isolate is None:  # one process: quick; the subprocess path has its own test
            args.isolate = False
    args.out = args.out or ("runs/bench-smoke/efficiency" if args.smoke else "docs/efficiency")

    try:
        lengths = sorted({int(v) for v in args.lengths.split(",") if v.strip()})
    except ValueError:
        raise ConfigError(f"--lengths: expected comma-separated integers, got {args.lengths!r}") from None
    if not lengths or min(lengths) < 1:
        raise ConfigError("--lengths: need at least one positive length")
    names = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    models, notes = resolve_models(names, explicit=names is not None)
    cuda = args.device.startswith("cuda")
    if cuda:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"--device {args.device}: CUDA is not available here")
    amp = "bf16" if args.amp == "bf16" or (args.amp == "auto" and cuda) else "off"
    point_config(PointSpec(model=models[0], L=lengths[0], batch=1, overrides=args.overrides))  # validate --set early
    isolate = (not cuda) if args.isolate is None else args.isolate
    rows = run_sweep(models, lengths, args.batch_tokens, isolate=isolate, d_model=args.d_model, layers=args.layers,
                     heads=args.heads, n_items=args.n_items, negatives=args.negatives, device=args.device, amp=amp,
                     warmup=args.warmup, repeats=args.repeats, time_limit_s=args.time_limit_s, threads=args.threads,
                     mem_limit_gb=args.mem_limit_gb, overrides=list(args.overrides))
    if not isolate and not cuda:
        notes.append("CPU points ran in one process (--no-isolate): peak memory not measured")
    meta = machine_info(args.device)
    meta["command"] = _command(args)
    meta["args"] = {**{k: v for k, v in vars(args).items() if k not in ("func", "overrides", "note")},
                    "set": list(args.overrides), "amp": amp, "isolate": isolate}
    out = Path(args.out)
    md = Path(args.md) if args.md else out.with_name(out.name + ".md")
    write_outputs(rows, meta, out, md, [*args.note, *notes])
    print(f"wrote {out}/efficiency.csv, efficiency.json, plots; {md}")
    errors = [f"{r['model']} L={r['L']}: {r['note']}" for r in rows if r["status"] == "error"]
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1])
        return 0
    from elasticrec.bench.cli import standalone

    return standalone("efficiency", sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
