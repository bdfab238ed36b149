"""bf16 autocast on CPU (``train.amp=bf16``) against fp32: one full training step (forward,
full-softmax cross-entropy, backward, Adam) of the ML-1M presets at their batch shape (128 x 200,
3,416 items), for 2 and 8 layers and 1 or more threads. On CPUs with AMX or AVX512-BF16 the
matrix products run in bf16; elsewhere autocast can be slower than fp32.

Time is the median of ``--repeats`` steps after one warm-up step, on random items. Writes
``<out>.md`` and ``<out>.json``.

    python benchmarks/amp_cpu.py --out docs/amp_cpu
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from elasticrec.bench.efficiency import cpu_name
from elasticrec.config import load_config
from elasticrec.models.base import build_model
from elasticrec.train.losses import next_item_loss

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS = 3416  # ML-1M after preprocessing
# the best ML-1M settings of docs/results.md (cosine scores, HSTU's gate)
SETTINGS = {
    "elastic": ["model.elastic.memory=false", "model.elastic.dispatcher_bias=items",
                "model.elastic.output_gate=true"],
    "sasrec": ["model.sasrec.output_gate=true"],
}
COMMON = ["model.score=cosine", "train.temperature=0.05"]


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith("amx") or f == "avx512_bf16")


def step_time(model_name: str, layers: int, amp: bool, threads: int, repeats: int,
              batch: int, length: int) -> float:
    torch.set_num_threads(threads)
    cfg = load_config(ROOT / "configs" / "ml-1m" / f"{model_name}.yaml",
                      COMMON + SETTINGS[model_name] + [f"model.n_layers={layers}"])
    torch.manual_seed(0)
    model = build_model(cfg.model, N_ITEMS)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randint(1, N_ITEMS + 1, (batch, length))
    y = torch.randint(1, N_ITEMS + 1, (batch, length))
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        with ctx():
            h = model(x)
            loss = next_item_loss(model, h, y, cfg.train, None, reduction="sum") / (y > 0).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="elastic,sasrec")
    p.add_argument("--layers", default="2,8")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--length", type=int, default=200)
    p.add_argument("--out", default="docs/amp_cpu")
    a = p.parse_args(argv)
    rows = []
    for threads in [int(t) for t in a.threads.split(",")]:
        for m in a.models.split(","):
            for layers in [int(v) for v in a.layers.split(",")]:
                fp32 = step_time(m, layers, False, threads, a.repeats, a.batch, a.length)
                bf16 = step_time(m, layers, True, threads, a.repeats, a.batch, a.length)
                rows.append({"model": m, "layers": layers, "threads": threads, "fp32_s": fp32,
                             "bf16_s": bf16, "speedup": fp32 / bf16})
                print(f"{m:8s} {layers} layers {threads} thread(s): fp32 {fp32:.3f} s, "
                      f"bf16 {bf16:.3f} s, x{fp32 / bf16:.2f}", flush=True)
    meta = {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(),
            "batch": a.batch, "length": a.length, "n_items": N_ITEMS, "repeats": a.repeats,
            "command": "python benchmarks/amp_cpu.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# bf16 autocast on CPU against fp32: one training step", "",
             f"Machine: {meta['cpu']} ({meta['cpu_count']} cores; bf16 flags: "
             f"{', '.join(meta['cpu_flags']) or 'none'}), PyTorch {meta['torch']}, Python {meta['python']}.",
             f"Step: forward, full-softmax cross-entropy over {N_ITEMS} items, backward and Adam, "
             f"batch {a.batch} x {a.length} (the ML-1M presets), random items, median of {a.repeats} "
             "steps after a warm-up. Settings: cosine scores, HSTU's gate; ELASTIC with IMR off and "
             "`dispatcher_bias=items` (the best ML-1M rows of results.md).", "",
             f"Command: `{meta['command']}`", "",
             "| model | layers | threads | fp32 s/step | bf16 s/step | speed-up |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['layers']} | {r['threads']} | {r['fp32_s']:.3f} | {r['bf16_s']:.3f} "
              f"| {r['speedup']:.2f}x |" for r in rows]
    lines += ["", "`--set train.amp=bf16` turns this on for `elasticrec train` on CPU (the default, "
              "`auto`, uses bf16 on CUDA only). Accuracy in bf16 is checked in results.md "
              "(ML-1M, 8 layers), not here."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
