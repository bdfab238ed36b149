"""The training loop: one run = one run directory.

``<run_dir>/config.yaml``       resolved configuration
``<run_dir>/data.json``         dataset statistics
``<run_dir>/metrics.jsonl``     one line per epoch: loss, speed, validation metrics, diagnostics
``<run_dir>/test_metrics.json`` test metrics of the best-validation checkpoint, scored once
``<run_dir>/test_ranks.npz``    each test user's 0-based rank of its held-out item (for
                                ``elasticrec compare``: paired tests between runs)
``<run_dir>/valid_ranks.npz``   the same for the validation item, same weights (not for a refit,
                                which trains on it); ``elasticrec compare --stage-gap`` needs both
``<run_dir>/checkpoints/``      see :mod:`elasticrec.train.checkpoint`

Model selection and early stopping use the validation item only; the test item is scored once,
at the end, with the best weights. A refit (``train.fit=train+valid``) also trains on the
validation item, so it never validates: it runs exactly ``train.epochs`` epochs (a train run's
best epoch count, see ``elasticrec refit``) and tests the final weights. Each epoch's shuffling and dropout are seeded from
(seed, epoch), so a run resumed from an epoch checkpoint replays exactly what an uninterrupted
run would have done. A run stopped inside an epoch (``time_budget_s``, ``max_steps``) checkpoints
its place in that epoch (batch index, loss so far, RNG state); ``--resume`` finishes the same
epoch from the next batch, so training is again identical to an uninterrupted run. The one
difference: the stopped run validated its mid-epoch weights (a run must end with a best
checkpoint), and that snapshot stays a candidate for best-validation selection; a mid-epoch
validation never counts towards early-stopping patience.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from elasticrec.config import ConfigError, ExperimentConfig, save_config
from elasticrec.evaluate import Evaluator
from elasticrec.evaluate.significance import ranks_meta, ranks_path, save_ranks
from elasticrec.models import build_model
from elasticrec.train import distributed as dist
from elasticrec.train.batches import TrainSequences
from elasticrec.train.checkpoint import load_best, load_checkpoint, save_best, save_checkpoint
from elasticrec.train.losses import next_item_loss
from elasticrec.utils import (atomic_write_json, cpu_has_native_bf16, limit_onednn_cache, resolve_device,
                              seed_everything)


class TrainingError(RuntimeError):
    pass


def default_run_dir(cfg: ExperimentConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.data.name}-{cfg.model.name}-{stamp}"


def build_optimizer(model, cfg: ExperimentConfig, fused: bool | None = None):
    """AdamW over the model's parameter groups. ``fused=None``: the fused kernel when every
    parameter is on a GPU (one launch per step instead of several per parameter, which is what
    makes small models launch-bound; same update rule, same state_dict), the per-parameter loop
    otherwise (what every CPU run so far used). ``True`` forces the fused kernel (CPU too)."""
    t = cfg.train
    groups = model.param_groups(t.lr, t.weight_decay)
    if fused is None:
        fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay,
                             fused=fused or None)


def build_scheduler(opt, cfg: ExperimentConfig, total_steps: int):
    t = cfg.train

    def factor(step: int) -> float:
        if t.warmup_steps and step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.schedule == "cosine":
            prog = (step - t.warmup_steps) / max(1, total_steps - t.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@dataclass
class TrainState:
    epoch: int = 0  # next epoch to run
    step: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    batch: int = 0  # batches of `epoch` already trained (non-zero only after a mid-epoch stop)
    batch_loss_sum: float = 0.0  # their summed per-batch losses, so the epoch's mean loss is whole


class Trainer:
    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path | None = None, resume: bool = False,
                 data=None):
        self.cfg = cfg
        t = cfg.train
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        seed_everything(t.seed, t.deterministic)
        self.dist = dist.setup(t.device)
        self.device = resolve_device(t.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if data is None:
            from elasticrec.data import load_dataset

            data = load_dataset(cfg.data)
        self.data = data
        self.model = build_model(cfg.model, self.data.n_items).to(self.device)
        self.net = self.model  # what the training step calls: the model, or its DDP wrapper
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.seqs = TrainSequences(self.data, cfg.model.max_len, t.windows, t.fit)
        if t.bucket_pool < 1:
            raise ConfigError(f"train.bucket_pool must be >= 1 (batches sorted together), got {t.bucket_pool}")
        # bucketed batches hold from a few to L target tokens per row: dividing each step's loss by
        # its own token count would weigh a token of a short-history batch far above one of a long-
        # history batch. Divide by the epoch's mean tokens per batch instead, so every token weighs
        # the same, as it does (in expectation) in shuffled batches.
        self.tokens_per_batch = None
        if t.batching == "bucketed":
            n_targets = float(self.seqs.window_lengths(self.seqs.sample_users, self.seqs.sample_ends).sum())
            self.tokens_per_batch = n_targets / math.ceil(len(self.seqs) / t.batch_size)
        self.refit = t.fit != "train"  # the validation item is a training target: never validate
        # models that read timestamps get them when the data has them (else they run without)
        self.use_timestamps = self.model.uses_timestamps and self.data.timestamps is not None
        if self.model.uses_timestamps and not self.use_timestamps and self.dist.is_main:
            warnings.warn(f"dataset {cfg.data.name!r} has no timestamps: model {cfg.model.name!r} "
                          "runs without its time features", stacklevel=2)
        self.evaluator = Evaluator(self.data, cfg.eval, cfg.model.max_len, self.device)
        self.evaluator.check_model(self.model, "test", self.data.eval_users("test"))   # fail now, not after an epoch
        self.steps_per_epoch = math.ceil(len(self.seqs) / t.batch_size)
        self.opt = build_optimizer(self.model, cfg)
        self.sched = build_scheduler(self.opt, cfg, self.steps_per_epoch * t.epochs)
        self.run_dir = Path(run_dir or cfg.run_dir or default_run_dir(cfg))
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.state = TrainState()
        self._stop_rng = self._stop_cuda_rng = None  # RNG state at a mid-epoch stop
        self.amp = (t.amp == "bf16") or (t.amp == "auto" and self.device.type == "cuda")
        if self.amp and self.device.type == "cpu":
            limit_onednn_cache()  # else its per-shape cache grows with every batch's row count
            if not cpu_has_native_bf16() and self.dist.is_main:
                warnings.warn("train.amp=bf16 on a CPU without native bf16 (AVX512-BF16 or AMX): "
                              "bf16 matmuls are emulated, about 9x slower than fp32 on a 2-core AVX2 "
                              "EPYC; --set train.amp=off is faster here", stacklevel=2)
        counts = torch.from_numpy(self.data.item_counts(t.fit).astype(np.float64) + 1.0)
        self.log_q = (counts / counts.sum()).log().float().to(self.device)
        self.main = self.dist.is_main  # only rank 0 writes the run directory
        if resume:
            self._resume()
        elif (self.run_dir / "metrics.jsonl").exists():
            raise TrainingError(f"{self.run_dir} already holds a run; use --resume or another --run-dir")
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            atomic_write_json(self.run_dir / "data.json", {**self.data.stats(), "meta": _jsonable(self.data.meta)})
        dist.barrier(self.dist)

    # ------------------------------------------------------------------ checkpointing
    def _state_dict(self) -> dict:
        s = self.state
        return {
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "epoch": s.epoch, "step": s.step, "best": s.best, "best_epoch": s.best_epoch,
            "bad_epochs": s.bad_epochs, "batch": s.batch, "batch_loss_sum": s.batch_loss_sum,
            "torch_rng": self._stop_rng if s.batch else torch.get_rng_state(),
            **({"cuda_rng": self._stop_cuda_rng} if s.batch and self._stop_cuda_rng is not None else {}),
        }

    def _resume(self) -> None:
        if not (self.ckpt_dir / "last.json").exists():
            raise TrainingError(f"--resume: no checkpoint in {self.ckpt_dir}")
        _, st = load_checkpoint(self.ckpt_dir, self.model, map_location=self.device)
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.state = TrainState(st["epoch"], st["step"], st["best"], st["best_epoch"], st["bad_epochs"],
                                st.get("batch", 0), st.get("batch_loss_sum", 0.0))
        if self.state.batch:  # mid-epoch checkpoint: continue the dropout stream where it stopped
            self._stop_rng, self._stop_cuda_rng = st["torch_rng"], st.get("cuda_rng")
        # drop metric lines of epochs that ran after the checkpoint (the interrupted one)
        mpath = self.run_dir / "metrics.jsonl"
        if mpath.exists() and self.dist.is_main:
            lines = [ln for ln in mpath.read_text().splitlines()
                     if ln.strip() and json.loads(ln).get("epoch", -1) < self.state.epoch]
            mpath.write_text("".join(ln + "\n" for ln in lines))

    def _log(self, rec: dict) -> None:
        if not self.main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        t, s = self.cfg.train, self.state
        t_start = time.time()
        stop_reason = "epochs"
        while s.epoch < t.epochs:
            ep_stats = self._train_epoch(s.epoch, t_start)
            partial = "partial_epoch" in ep_stats  # stopped before the epoch's last batch
            rec = {"epoch": s.epoch, "step": s.step, **ep_stats}
            last = s.epoch + 1 == t.epochs or ep_stats.get("stopped")
            if self.refit:  # no selection: the final weights are the ones tested
                if last and self.main:
                    save_best(self.ckpt_dir, self.model, {"epoch": s.epoch, "fit": t.fit,
                                                          **({"partial_epoch": True} if partial else {})})
            # the last epoch is always validated, so a best checkpoint exists to test
            elif (s.epoch + 1) % t.eval_every == 0 or last:
                val = self.evaluate("valid")
                rec.update({f"valid/{k}": v for k, v in val.items()})
                score = val[self.cfg.eval.select_metric]
                if score > s.best:
                    s.best, s.best_epoch = score, s.epoch
                    if not partial:
                        s.bad_epochs = 0
                    if self.main:
                        save_best(self.ckpt_dir, self.model, {"epoch": s.epoch, self.cfg.eval.select_metric: score,
                                                              **({"partial_epoch": True} if partial else {})})
                elif not partial:
                    s.bad_epochs += 1
            rec.update(self.model.extra_metrics(reset=True))
            self._log(rec)
            ran = s.epoch  # the epoch just trained, whole or (partial) up to s.batch
            if not partial:
                s.epoch += 1
            if self.main:
                save_checkpoint(self.ckpt_dir, ran, self.model, self._state_dict())
            dist.barrier(self.dist)
            if ep_stats.get("stopped"):
                stop_reason = ep_stats["stopped"]
                break
            if s.bad_epochs >= t.patience and not self.refit:
                stop_reason = f"early stop: no {self.cfg.eval.select_metric} gain in {t.patience} evals"
                break
        return self.test(stop_reason)

    def _train_epoch(self, epoch: int, t_start: float) -> dict:
        t, s = self.cfg.train, self.state
        self.model.train()
        rng = np.random.default_rng([t.seed, epoch])
        start = s.batch  # > 0: finishing an epoch that a budget / max_steps stop interrupted
        if start:
            torch.set_rng_state(self._stop_rng)
            if self._stop_cuda_rng is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(self._stop_cuda_rng, self.device)
        else:
            torch.manual_seed(t.seed * 100003 + epoch)
        tot, n, tokens, t0 = s.batch_loss_sum, start, 0, time.time()
        bar = _progress(self.steps_per_epoch, f"epoch {epoch}", t.progress and self.main)
        bar.update(start)
        stopped = None
        world = self.dist.world
        batches = self.seqs.epoch_batches(t.batch_size, rng, self.dist.rank, world,
                                          t.bucket_pool if t.batching == "bucketed" else None)
        pending = None  # (this step's mean loss, still on the device; its step number)
        for users, ends in itertools.islice(batches, start, None):
            if not len(users):  # short last global batch: this rank runs one masked sample
                users, ends = self.seqs.users[:1], None
            width = None if t.batching == "padded" else self.seqs.width(users, ends)
            inputs, targets = self.seqs.batch(users, ends, width)
            if ends is None:
                targets[:] = 0
            n_tok = dist.all_sum(torch.tensor([float((targets > 0).sum())]), self.dist)[0]  # counted on the host
            x = torch.from_numpy(inputs).to(self.device, non_blocking=True)
            y = torch.from_numpy(targets).to(self.device, non_blocking=True)
            ts = None
            if self.use_timestamps:
                ts = torch.from_numpy(self.seqs.batch_timestamps(users, ends, width))
                ts = ts.to(self.device, non_blocking=True)
            ctx = torch.autocast("cuda" if self.device.type == "cuda" else "cpu", dtype=torch.bfloat16) \
                if self.amp else contextlib.nullcontext()
            with ctx:
                h = self.net(x) if ts is None else self.net(x, ts)
                loss_sum = next_item_loss(self.model, h, y, t, self.log_q, reduction="sum")
            # mean over the *global* batch's target tokens (DDP averages gradients over ranks)
            norm = n_tok.clamp(min=1.0) if self.tokens_per_batch is None else self.tokens_per_batch
            loss = loss_sum * world / norm
            global_sum = dist.all_sum(loss_sum.detach().float().reshape(1), self.dist)[0]
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.opt.step()
            self.sched.step()
            # read the previous step's loss only now: reading this one would make the host wait
            # for its forward pass before queuing the backward (a GPU sync every step)
            tot += self._settle(pending, epoch)
            pending = (global_sum / n_tok.clamp(min=1.0), s.step)
            s.step += 1
            n += 1
            tokens += int(n_tok)
            bar.update(1)
            bar.set_postfix(loss=f"{tot / max(1, n - 1):.4f}", tok_s=f"{tokens / max(1e-9, time.time() - t0):.0f}")
            if t.max_steps is not None and s.step >= t.max_steps:
                stopped = f"max_steps={t.max_steps}"
                break
            if t.time_budget_s is not None:  # ranks agree, so none waits in a collective
                over = torch.tensor([float(time.time() - t_start > t.time_budget_s)])
                if dist.all_sum(over, self.dist).item() > 0:
                    stopped = f"time_budget_s={t.time_budget_s}"
                    break
        tot += self._settle(pending, epoch)
        bar.close()
        dt = time.time() - t0
        out = {"loss": tot / max(1, n), "epoch_time_s": dt, "tokens_per_s": tokens / max(dt, 1e-9),
               "lr": self.sched.get_last_lr()[0]}
        if self.device.type == "cuda":
            out["cuda_max_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        if start:
            out["resumed_at_batch"] = start  # epoch_time_s / tokens_per_s cover this process's part
        s.batch, s.batch_loss_sum = 0, 0.0
        if stopped:
            out["stopped"] = stopped
            if n < self.steps_per_epoch:
                out["partial_epoch"] = n / self.steps_per_epoch
                s.batch, s.batch_loss_sum = n, tot
                self._stop_rng = torch.get_rng_state()
                self._stop_cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return out

    def _settle(self, pending: tuple[torch.Tensor, int] | None, epoch: int) -> float:
        """The loss of a step already queued, as a float (0.0 for none); a non-finite one stops
        training before any checkpoint holds its weights."""
        if pending is None:
            return 0.0
        value = pending[0].item()
        if not math.isfinite(value):
            raise TrainingError(
                f"non-finite loss ({value}) at epoch {epoch}, step {pending[1]}; the last good "
                f"checkpoint is kept in {self.ckpt_dir} (lower the learning rate or enable grad_clip)")
        return value

    def ranks(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """(users, 0-based target ranks); with several processes each scores a shard, merged here."""
        users = self.data.eval_users(stage)[self.dist.rank::self.dist.world]
        ranks = self.evaluator.ranks(self.model, stage, users)
        merged = dist.gather_concat(np.stack([users, ranks], axis=1).astype(np.int64), self.dist)  # one collective
        return merged[:, 0], merged[:, 1]

    def evaluate(self, stage: str) -> dict:
        """Full-ranking metrics of every user with a ``stage`` target."""
        return self.evaluator.summarize(self.ranks(stage)[1])

    def test(self, stop_reason: str = "") -> dict:
        """Score the test item once, with the best-validation weights (a refit: the final ones);
        save metrics and per-user ranks (of the validation item too, except for a refit)."""
        info = load_best(self.ckpt_dir, self.model, map_location=self.device)
        if not self.refit:  # the validation ranks of the tested weights, for compare --stage-gap
            self._rank_and_save("valid", info["epoch"])
        res = self.evaluator.summarize(self._rank_and_save("test", info["epoch"]))
        res.update({"best_epoch": info["epoch"], f"valid_{self.cfg.eval.select_metric}": info.get(self.cfg.eval.select_metric),
                    "stop_reason": stop_reason, "model": self.cfg.model.name, "dataset": self.cfg.data.name,
                    "fit": self.cfg.train.fit})
        if self.main:
            atomic_write_json(self.run_dir / "test_metrics.json", res)
        return res

    def _rank_and_save(self, stage: str, epoch: int) -> np.ndarray:
        """Every user's rank of its ``stage`` item under the loaded weights, saved to
        ``<run>/<stage>_ranks.npz`` by the main process."""
        users, ranks = self.ranks(stage)
        if self.main:
            meta = ranks_meta(self.cfg, self.data, stage, self.evaluator.label, epoch)
            save_ranks(ranks_path(self.run_dir, stage), users, ranks, meta)
        return ranks


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def train(cfg: ExperimentConfig, run_dir: str | Path | None = None, resume: bool = False) -> tuple[Path, dict]:
    trainer = Trainer(cfg, run_dir, resume)
    try:
        res = trainer.fit()
        # every rank has finished (rank 0 writes the last files after the final gather) before
        # any tears the process group down: a gloo rank that still talks to a peer whose group
        # is already destroyed can abort ("terminate called without an active exception")
        dist.barrier(trainer.dist)
    finally:
        dist.cleanup(trainer.dist)
    return trainer.run_dir, res
