"""What ``train.batching`` saves: columns per training epoch under each batching mode.

A training step's cost grows with the batch's width (the columns every row is padded to): about
linearly for ELASTIC, the FFN and the loss, and quadratically for exact attention. This counts,
for each dataset and window L, the columns an epoch feeds the model (sum over batches of rows x
width) and the quadratic attention term (rows x width^2), averaged over three epochs of the real
batch sampler (``TrainSequences.epoch_batches``, batch 128, ``train.windows=last``). No model is
run; measured epoch times of real trainings are in docs/results.md.

    ELASTICREC_DATA=../shared/data python benchmarks/batching.py [--datasets ml-1m,lastfm] \\
        [--lens 50,200,1000] [--out docs/batching.md]
"""

from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path

import numpy as np


def epoch_cost(seqs, batch_size: int, batching: str, pool: int, epochs: int = 3) -> tuple[float, float]:
    cols = quad = 0.0
    for e in range(epochs):
        rng = np.random.default_rng([0, e])
        for users, ends in seqs.epoch_batches(batch_size, rng, bucket_pool=pool if batching == "bucketed" else None):
            w = seqs.max_len if batching == "padded" else seqs.width(users, ends)
            cols += len(users) * w
            quad += len(users) * w * w
    return cols / epochs, quad / epochs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="ml-1m,lastfm,beauty,sports")
    ap.add_argument("--lens", default="50,200,1000")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--out", default="docs/batching.md")
    args = ap.parse_args(argv)

    from elasticrec.config import DataConfig
    from elasticrec.data import load_dataset
    from elasticrec.train.batches import TrainSequences

    modes = [("padded", 0), ("trimmed", 0), ("bucketed", 4), ("bucketed", 16), ("bucketed", 64)]
    rows = []
    for name in args.datasets.split(","):
        data = load_dataset(DataConfig(name=name))
        for L in (int(x) for x in args.lens.split(",")):
            seqs = TrainSequences(data, L)
            items = float(seqs.window_lengths(seqs.users).sum())
            base = epoch_cost(seqs, args.batch_size, "padded", 0)
            for mode, pool in modes:
                cols, quad = epoch_cost(seqs, args.batch_size, mode, pool)
                rows.append((name, L, mode if not pool else f"{mode}, pool {pool}", items, cols, cols / base[0],
                             quad / base[1]))
                print(rows[-1], flush=True)

    import torch

    lines = ["# Training columns per epoch under each `train.batching` mode", "",
             f"Machine: {platform.machine()}, {platform.system()}; Python {platform.python_version()}, "
             f"torch {torch.__version__}, numpy {np.__version__}. Date {datetime.date.today()}.", "",
             f"Command: `python benchmarks/batching.py --datasets {args.datasets} --lens {args.lens}`", "",
             "Counted, not timed: the real batch sampler (`train.windows=last`, batch "
             f"{args.batch_size}, three epochs averaged). *items* = input items of the epoch (no "
             "padding); *columns* = rows x width summed over batches; the last two columns are "
             "relative to `padded`: the linear cost (ELASTIC, FFN, loss) and the quadratic term of "
             "exact attention (rows x width^2). Measured epoch times: docs/results.md, "
             "\"A 1,000-item window on ML-1M\".", "",
             "| dataset | L | batching | items | columns | linear cost | attention cost |",
             "|---|---|---|---|---|---|---|"]
    for name, L, mode, items, cols, rel, relq in rows:
        lines.append(f"| {name} | {L} | {mode} | {items:,.0f} | {cols:,.0f} | {rel:.3f} | {relq:.3f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
