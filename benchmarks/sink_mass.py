"""How much attention a trained model gives to keys that are not the user's items.

SASRec with ``model.sasrec.null_kv = n`` has n learned key/value pairs that every position
attends to beside its history (an attention sink). ELASTIC's distribution softmax runs over the
k dispatchers and the items of the position's own chunk; for a history that fits in one chunk the
dispatchers hold only their learned empty-history entries, so they are the same kind of sink.
This loads a finished run's best checkpoint, feeds each evaluation user's history as evaluation
does (last ``max_len`` items, left-padded), and reports, for the position that makes the
prediction (the last one), the softmax weight on the learned pairs (SASRec) or on the dispatchers
(ELASTIC, end-aligned, explicit distribution): per layer, averaged over heads and users, overall
and in buckets of history length. Writes ``<out>.md`` and ``<out>.json``.

    python benchmarks/sink_mass.py --run runs/sports-sasrec-null16-s42 --out docs/sink_mass
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from elasticrec.models.layers import dispatcher


def last_position_null_mass(attn, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Weight [B, H] that the last position's softmax puts on ``attn``'s learned pairs, given the
    layer input ``x`` [B, L, D] and ``valid`` [B, L] (None: no padding)."""
    q, k, _ = attn.project(x)
    ql = q[:, :, -1].float()                                                  # [B, H, dh]
    hist = torch.einsum("bhd,bhld->bhl", ql, k.float())
    if valid is not None:
        hist = hist.masked_fill(~valid[:, None, :], float("-inf"))
    null = torch.einsum("bhd,hnd->bhn", ql, attn.null_k.float())
    p = torch.softmax(torch.cat([null, hist], -1) / math.sqrt(attn.dh), -1)
    return p[..., : attn.null_kv].sum(-1)


class Recorder:
    """Collects, per forward, one [B] weight per layer (heads averaged): on SASRec's learned pairs
    or on ELASTIC's dispatchers, at the last position. Use as a context manager around forwards."""

    def __init__(self, model):
        self.model, self.per_layer, self._undo = model, [], []
        name = model.cfg.name
        if name in ("sasrec", "sasrec-explicit"):
            if model.cfg.sasrec.null_kv < 1:
                raise ValueError("a SASRec model needs model.sasrec.null_kv >= 1")
            self.kind = "learned pairs"
        elif name == "elastic":
            e = model.cfg.elastic
            if e.chunk_align != "end" or e.distribute != "explicit":
                raise ValueError("an ELASTIC model needs chunk_align=end and distribute=explicit")
            self.kind = "dispatchers"
        else:
            raise ValueError(f"sink_mass reads sasrec (null_kv >= 1) or elastic, not {name!r}")

    def __enter__(self):
        if self.kind == "learned pairs":
            for blk in self.model.blocks:
                h = blk.attn.register_forward_pre_hook(
                    lambda mod, args: self.per_layer.append(last_position_null_mass(mod, *args).mean(-1)))
                self._undo.append(h.remove)
        else:
            original = dispatcher.distribution_weights

            def weights(q, keys, dbias, local, scale, acc):
                a = original(q, keys, dbias, local, scale, acc)
                # the last grid position is the last item (end-aligned): its weight on the k dispatchers
                self.per_layer.append(a[:, :, -1, -1, : keys[0].shape[-2]].sum(-1).mean(-1))
                return a

            # the explicit distribution looks this up at call time, so its forward records as it runs
            dispatcher.distribution_weights = weights
            self._undo.append(lambda: setattr(dispatcher, "distribution_weights", original))
        return self

    def __exit__(self, *exc):
        for undo in self._undo:
            undo()

    def take(self) -> torch.Tensor:
        """The weights of the forward just run, [layers, B]."""
        out, self.per_layer = torch.stack(self.per_layer, 0), []
        return out


def measure(run: Path, stage: str, edges: list[int], batch: int) -> tuple[list[dict], dict]:
    from elasticrec.config import load_config
    from elasticrec.data import load_dataset
    from elasticrec.evaluate.ranking import build_eval_batch
    from elasticrec.evaluate.significance import length_groups
    from elasticrec.models import build_model
    from elasticrec.train.checkpoint import load_best

    cfg = load_config(run / "config.yaml")
    data = load_dataset(cfg.data)
    model = build_model(cfg.model, data.n_items)
    rec = Recorder(model)          # checks the model kind before the checkpoint is read
    info = load_best(run / "checkpoints", model)
    model.eval()
    users = data.eval_users(stage)
    mass, lengths = [], []
    with torch.no_grad(), rec:
        for s in range(0, len(users), batch):
            inputs, _, _, _ = build_eval_batch(data, users[s:s + batch], stage, cfg.model.max_len)
            model.encode(torch.from_numpy(inputs))
            mass.append(rec.take())                                           # [layers, B]
            lengths.append((inputs > 0).sum(1))
    mass_np, n = torch.cat(mass, 1).numpy(), np.concatenate(lengths)
    rows = []
    for label, sel in length_groups(n, edges):
        rows.append({"history": label, "users": int(sel.sum()),
                     **{f"layer {i}": float(mass_np[i, sel].mean()) if sel.any() else float("nan")
                        for i in range(len(mass_np))}})
    rows.append({"history": "all", "users": int(len(n)),
                 **{f"layer {i}": float(mass_np[i].mean()) for i in range(len(mass_np))}})
    meta = {"run": str(run), "dataset": cfg.data.name, "model": cfg.model.name, "weight_on": rec.kind,
            "stage": stage, "best_epoch": info.get("epoch"), "max_len": cfg.model.max_len}
    return rows, meta


def to_markdown(rows: list[dict], meta: dict) -> str:
    layers = [c for c in rows[0] if c.startswith("layer ")]
    lines = [f"# Attention weight on {meta['model']}'s {meta['weight_on']}", "",
             f"Generated by `{meta['command']}` on {meta['date']} (PyTorch {meta['torch']}, Python "
             f"{meta['python']}, CPU). Run `{meta['run']}` ({meta['dataset']}, {meta['model']}, best "
             f"epoch {meta['best_epoch']}), {meta['stage']} histories (last {meta['max_len']} items).", "",
             f"Softmax weight of the last position (the one that predicts) on the {meta['weight_on']}, "
             "averaged over heads and users; the rest goes to the user's own items read exactly.", "",
             "| history items | users | " + " | ".join(layers) + " |",
             "|---|---|" + "---|" * len(layers)]
    for r in rows:
        lines.append(f"| {r['history']} | {r['users']} | " + " | ".join(f"{r[c]:.3f}" for c in layers) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True,
                    help="a finished SASRec run with model.sasrec.null_kv >= 1, or an ELASTIC run")
    ap.add_argument("--stage", default="test", choices=["valid", "test"])
    ap.add_argument("--edges", default="8,16,32", help="history-length bucket edges")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, help="output stem: writes <out>.md and <out>.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    edges = [int(e) for e in args.edges.split(",") if e.strip()]
    rows, meta = measure(Path(args.run), args.stage, edges, args.batch)
    meta.update(command="python benchmarks/sink_mass.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                date=time.strftime("%Y-%m-%d"), torch=torch.__version__, python=platform.python_version())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    table = to_markdown(rows, meta)
    out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
