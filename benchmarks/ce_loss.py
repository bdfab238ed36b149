"""Full-softmax cross-entropy: block-wise (``train.ce_impl=chunked``) against ``F.cross_entropy``
on the whole logits matrix (``plain``), forward + backward, at batch shapes of our presets; and
the 128-negative sampled softmax: negatives shared by the batch, drawn per position (block-wise
against the whole table, ``train.negatives_per=position``), and per position by gathering
[tokens, 128, d] item rows (the path the library takes for large catalogues).

Each (shape, impl) cell runs in a fresh process so that its peak resident memory is its own:
"extra peak" is the peak RSS minus the RSS after the inputs were built. Time is the minimum of
``--repeats`` forward + backward passes. Writes ``<out>.md`` and ``<out>.json``.

    python benchmarks/ce_loss.py --out docs/ce_loss
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

NEGATIVES = 128  # generative-recommenders' ML-1M setting
IMPLS = ("plain", "chunked", "sampled-batch", "sampled-position", "sampled-gather")
# (label, target tokens per batch, catalogue size): batch x valid positions of the presets
SHAPES = [
    ("ML-1M, batch 128 x 200", 25600, 3416),
    ("Beauty, batch 256 x 50", 12800, 12101),
    ("Beauty (BERT4Rec file), batch 256 x 50", 12800, 54542),
    ("100k-item catalogue, batch 64 x 100", 6400, 100000),
]


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cell(n_tok: int, n_items: int, impl: str, repeats: int, threads: int, d: int = 64) -> dict:
    import torch

    from elasticrec.config import TrainConfig
    from elasticrec.train.losses import next_item_loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    h = torch.randn(n_tok, d, requires_grad=True)
    emb = torch.nn.Embedding(n_items + 1, d)
    tgt = torch.randint(1, n_items + 1, (n_tok,))

    class Head:  # the two methods of a model that the loss uses
        def output_embeddings(self):
            return emb.weight

        def output_queries(self, q):
            return q

    from elasticrec.train import losses

    sampled = dict(loss="sampled", n_negatives=NEGATIVES, in_batch_negatives=False)
    if impl.startswith("sampled-"):
        cfg = TrainConfig(**sampled, negatives_per="batch" if impl == "sampled-batch" else "position")
        # force one path of the per-position loss (the library picks by catalogue size)
        losses.BLOCKWISE_ITEMS_PER_NEGATIVE = 0 if impl == "sampled-gather" else 10**9
    else:
        cfg = TrainConfig(ce_impl=impl)

    base = _rss_mib()
    times = []
    for _ in range(repeats):
        h.grad, emb.weight.grad = None, None
        t0 = time.perf_counter()
        next_item_loss(Head(), h, tgt, cfg).backward()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"tokens": n_tok, "items": n_items, "impl": impl, "time_s": min(times),
            "extra_peak_mib": peak - base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/ce_loss")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", help="tokens:items,... instead of the preset shapes")
    ap.add_argument("--cell", nargs=3, help=argparse.SUPPRESS)  # tokens items impl (child process)
    a = ap.parse_args()
    if a.cell:
        print(json.dumps(cell(int(a.cell[0]), int(a.cell[1]), a.cell[2], a.repeats, a.threads)))
        return
    import torch

    shapes = SHAPES
    if a.shapes:
        shapes = [(f"{t} x {n}", int(t), int(n)) for t, n in (x.split(":") for x in a.shapes.split(","))]
    rows = []
    for label, n_tok, n_items in shapes:
        res = {}
        for impl in IMPLS:
            out = subprocess.run([sys.executable, __file__, "--cell", str(n_tok), str(n_items), impl,
                                  "--repeats", str(a.repeats), "--threads", str(a.threads)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                res[impl] = {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
            else:
                res[impl] = json.loads(out.stdout.strip().splitlines()[-1])
            print(label, impl, res[impl], flush=True)
        rows.append({"shape": label, "tokens": n_tok, "items": n_items, **res})

    def fmt(r, key, f):
        return f(r[key]) if key in r else r.get("error", "?")

    from elasticrec.bench.efficiency import machine_info

    machine = (f"{machine_info('cpu')['cpu']}, {a.threads} thread(s), PyTorch "
               f"{torch.__version__}, Python {platform.python_version()}, fp32, d=64")
    lines = [
        "# Full-softmax cross-entropy: block-wise vs whole logits matrix (CPU)", "",
        f"Machine: {machine}. Command: `python benchmarks/ce_loss.py --out {a.out} --threads {a.threads}`.", "",
        "Forward + backward of the training loss for one batch (minimum of "
        f"{a.repeats}); extra peak = peak resident memory minus memory after building the inputs, "
        "each cell in its own process.", "",
        "| shape | tokens | items | plain s | chunked s | speed-up | plain extra peak MiB | "
        "chunked extra peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, c = r["plain"], r["chunked"]
        speed = f"{p['time_s'] / c['time_s']:.1f}x" if "time_s" in p and "time_s" in c else ""
        lines.append(f"| {r['shape']} | {r['tokens']} | {r['items']} | {fmt(p, 'time_s', '{:.2f}'.format)} | "
                     f"{fmt(c, 'time_s', '{:.2f}'.format)} | {speed} | "
                     f"{fmt(p, 'extra_peak_mib', '{:.0f}'.format)} | {fmt(c, 'extra_peak_mib', '{:.0f}'.format)} |")
    lines += [
        "", f"## Sampled softmax, {NEGATIVES} uniform negatives", "",
        "Same shapes and measurement. *shared*: one draw per batch (`train.loss=sampled "
        f"train.n_negatives={NEGATIVES} train.in_batch_negatives=false`); *per position*: a draw for "
        "every position (`train.negatives_per=position`), computed block-wise against the whole "
        "table; *gathered*: the same loss computed by gathering each position's negative item rows. "
        "The library takes the block-wise path up to 64 items per negative (8,192 items at 128 "
        "negatives) and gathers beyond (`BLOCKWISE_ITEMS_PER_NEGATIVE` in train/losses.py).",
        "", "| shape | shared s | per position s | gathered s | shared MiB | per position MiB | gathered MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["sampled-batch"], r["sampled-position"], r["sampled-gather"]]
        lines.append(f"| {r['shape']} | " + " | ".join(fmt(c, "time_s", "{:.2f}".format) for c in cells) + " | "
                     + " | ".join(fmt(c, "extra_peak_mib", "{:.0f}".format) for c in cells) + " |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".md").write_text("\n".join(lines) + "\n")
    Path(a.out + ".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
