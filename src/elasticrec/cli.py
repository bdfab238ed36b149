"""Command-line interface: ``elasticrec train | refit | evaluate | compare | data stats | models``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from elasticrec.config import ConfigError, ExperimentConfig, load_config, merge, parse_override

PACKAGE_ROOT = Path(__file__).resolve().parent


def preset_path(dataset: str, model: str, variant: str | None = None) -> Path | None:
    """``configs/<dataset>/[<variant>/]<model>.yaml`` from the working directory or the source checkout."""
    for root in (Path.cwd() / "configs", PACKAGE_ROOT.parent.parent / "configs"):
        p = root / dataset / (variant or "") / f"{model}.yaml"
        if p.exists():
            return p
    return None


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (default: configs/<dataset>/<model>.yaml if present)")
    p.add_argument("--dataset", help="dataset preset name (ml-1m, ml-100k, beauty, synthetic, custom, ...)")
    p.add_argument("--data-path", help="dataset file or directory (default: $ELASTICREC_DATA, then the user cache dir)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set train.lr=5e-4 --set model.max_len=200 (repeatable)")


def resolve_config(args) -> ExperimentConfig:
    dataset = getattr(args, "dataset", None)
    model = getattr(args, "model", None)
    cfg_path = args.config
    if cfg_path is None and dataset:
        cfg_path = preset_path(dataset, model or "sasrec")
    cfg = load_config(cfg_path)
    top: dict = {}
    if dataset:
        top.setdefault("data", {})["name"] = dataset
    if model:
        top.setdefault("model", {})["name"] = model
    if args.data_path:
        top.setdefault("data", {})["path"] = args.data_path
    for k in ("epochs", "device", "batch_size", "lr"):
        v = getattr(args, k, None)
        if v is not None:
            top.setdefault("train", {})[k] = v
    if getattr(args, "max_len", None) is not None:
        top.setdefault("model", {})["max_len"] = args.max_len
    cfg = merge(cfg, top)
    for o in args.overrides:
        cfg = merge(cfg, parse_override(o))
    validate_names(cfg)
    return cfg


def validate_names(cfg: ExperimentConfig) -> None:
    """Reject unknown model / dataset names up front, listing the valid choices."""
    from elasticrec.data import DATASETS
    from elasticrec.models import list_models

    if cfg.model.name not in list_models():
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r}; choose one of {', '.join(list_models())}")
    if cfg.data.name not in DATASETS:
        raise ConfigError(f"data.name: unknown dataset {cfg.data.name!r}; choose one of {', '.join(DATASETS)}")


# what `train --resume` may change in a run's saved configuration (the rest would make the
# continued run a different experiment)
RESUME_KEYS = ("train.epochs", "train.patience", "train.time_budget_s", "train.num_threads",
               "train.device")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_config(args) -> ExperimentConfig:
    """The run's saved configuration, plus the few changes a resumed run accepts (--epochs,
    --device and --set on RESUME_KEYS); anything else is rejected, never silently ignored."""
    fixed = {"--config": args.config, "--dataset": args.dataset, "--model": args.model,
             "--data-path": args.data_path, "--batch-size": args.batch_size, "--lr": args.lr,
             "--max-len": args.max_len}
    bad = [k for k, v in fixed.items() if v is not None]
    if bad:
        raise ConfigError(f"--resume continues the run with its saved config.yaml; {', '.join(bad)} "
                          f"cannot change (allowed: --epochs, --device, --set on {', '.join(RESUME_KEYS)})")
    change: dict = {}
    if args.epochs is not None:
        change["train.epochs"] = args.epochs
    if args.device is not None:
        change["train.device"] = args.device
    for o in args.overrides:
        change.update(_flat(parse_override(o)))
    bad = sorted(set(change) - set(RESUME_KEYS))
    if bad:
        raise ConfigError(f"--resume: {', '.join(bad)} cannot change in a resumed run; "
                          f"allowed: {', '.join(RESUME_KEYS)}")
    cfg = load_config(Path(args.run_dir) / "config.yaml")
    for key, value in change.items():
        section, name = key.split(".")
        cfg = merge(cfg, {section: {name: value}})
    return cfg


def cmd_train(args) -> int:
    from elasticrec.train import train

    if args.resume and not args.run_dir:
        raise ConfigError("--resume needs --run-dir DIR of the interrupted run")
    # a resumed run continues with its own configuration (and the changes resume_config allows)
    cfg = resume_config(args) if args.resume else resolve_config(args)
    if args.no_progress:
        cfg = merge(cfg, {"train": {"progress": False}})
    run_dir, res = train(cfg, args.run_dir, resume=args.resume)
    _print_run(run_dir, res)
    return 0


def _print_run(run_dir, res: dict, keys: tuple[str, ...] = ("HR@10", "NDCG@10", "MRR", "best")) -> None:
    """What `train` and `refit` print when a run ends: its directory and headline test metrics."""
    print(f"run directory: {run_dir}")
    print(json.dumps({k: v for k, v in res.items() if k.startswith(keys)}, indent=2))


def refit_config(args) -> tuple[ExperimentConfig, Path]:
    """A train run's configuration turned into its refit: ``train.fit=train+valid`` for the run's
    best epoch count (``--epochs`` to override), no time budget, and the run directory."""
    run = Path(args.run)
    cfg = load_config(run / "config.yaml")
    if cfg.train.fit != "train":
        raise ConfigError(f"{run} is itself a refit (train.fit={cfg.train.fit}); refit the train run it came from")
    epochs = args.epochs
    if epochs is None:
        # a finished run's test_metrics.json, else the best checkpoint's manifest
        for name, key in (("test_metrics.json", "best_epoch"), ("checkpoints/best.json", "epoch")):
            if (run / name).exists():
                try:
                    epochs = int(json.loads((run / name).read_text())[key]) + 1
                except (ValueError, KeyError, TypeError) as e:
                    raise ConfigError(f"{run / name}: no best epoch in it ({type(e).__name__}: {e})") from None
                break
        else:
            raise ConfigError(f"{run}: neither test_metrics.json nor checkpoints/best.json; give --epochs N")
    change: dict = {"train": {"fit": "train+valid", "epochs": epochs, "time_budget_s": None}, "run_dir": None}
    if args.data_path:
        change["data"] = {"path": args.data_path}
    if args.device:
        change["train"]["device"] = args.device
    if args.no_progress:
        change["train"]["progress"] = False
    cfg = merge(cfg, change)
    for o in args.overrides:
        cfg = merge(cfg, parse_override(o))
    if cfg.train.fit != "train+valid":
        raise ConfigError("refit: train.fit cannot be overridden (a refit trains on train+valid)")
    out = Path(args.run_dir) if args.run_dir else Path("runs") / f"{run.resolve().name}-refit"
    return cfg, out


def cmd_refit(args) -> int:
    from elasticrec.train import train

    cfg, out = refit_config(args)
    print(f"refit of {args.run}: {cfg.model.name} on {cfg.data.name}, train+valid, {cfg.train.epochs} epochs, "
          f"run directory {out}", file=sys.stderr)
    run_dir, res = train(cfg, out, resume=args.resume)
    _print_run(run_dir, res, ("HR@10", "NDCG@10", "MRR", "best", "fit"))
    return 0


def cmd_evaluate(args) -> int:
    import torch

    from elasticrec.data import load_dataset
    from elasticrec.evaluate import Evaluator
    from elasticrec.evaluate.significance import ranks_meta, ranks_path, save_ranks
    from elasticrec.models import build_model
    from elasticrec.train.checkpoint import load_best, load_last_weights
    from elasticrec.utils import resolve_device

    run = Path(args.run)
    cfg = load_config(run / "config.yaml")
    for o in args.overrides:
        cfg = merge(cfg, parse_override(o))
    if args.data_path:
        cfg = merge(cfg, {"data": {"path": args.data_path}})
    if args.protocol:
        cfg = merge(cfg, {"eval": {"protocol": args.protocol}})
    if args.history_len is not None:
        cfg = merge(cfg, {"eval": {"history_len": args.history_len}})
    if args.drop_recent is not None:
        cfg = merge(cfg, {"eval": {"drop_recent": args.drop_recent}})
    if args.stage == "valid" and cfg.train.fit != "train":
        raise ConfigError(f"{run} trained on the validation items (train.fit={cfg.train.fit}): "
                          "its validation scores mean nothing; evaluate --stage test")
    device = resolve_device(args.device)
    data = load_dataset(cfg.data)
    model = build_model(cfg.model, data.n_items).to(device)
    last = args.checkpoint == "last"   # e.g. a refit still running, or a point on a training curve
    if last:
        info = load_last_weights(run / "checkpoints", model, map_location=device)
        part = " (stopped mid-epoch)" if info.get("partial_epoch") else ""
        print(f"{run}: last checkpoint, epoch {info['epoch']}{part}, {info['epochs_trained']} whole epochs trained"
              + ("" if cfg.train.fit != "train" else "; not the best-validation weights, so its test score is "
                 "not a model-selection result"), file=sys.stderr)
    else:
        info = load_best(run / "checkpoints", model, map_location=device)
    ev = Evaluator(data, cfg.eval, cfg.model.max_len, device)
    users = data.eval_users(args.stage)
    with torch.no_grad():
        ranks = ev.ranks(model, args.stage, users)
    res = ev.summarize(ranks)
    if args.save_ranks is not None:
        # a checkpoint or history window the run did not test never writes over the run's own ranks
        tags = ([f"epoch-{info['epoch']:04d}"] if last else []) + (
            [f"history-{ev.window or 'all'}"] if ev.window != cfg.model.max_len else []) + (
            [f"drop-{cfg.eval.drop_recent}"] if cfg.eval.drop_recent else [])
        out = (Path(args.save_ranks) if args.save_ranks else ranks_path(run, args.stage) if not tags
               else run / f"{args.stage}_ranks_{'_'.join(tags)}.npz")
        meta = ranks_meta(cfg, data, args.stage, ev.label, info.get("epoch"))
        if last:
            meta.update(checkpoint="last", epochs_trained=info["epochs_trained"])
        save_ranks(out, users, ranks, meta)
        print(f"ranks of {len(users)} users written to {out}", file=sys.stderr)
    if last:
        res.update(checkpoint="last", **info)   # epoch, epochs_trained (, partial_epoch)
    res["history"] = ev.history
    print(json.dumps(res, indent=2))
    return 0


def cmd_compare(args) -> int:
    from elasticrec.evaluate.significance import (compare_by_length, compare_groups, compare_stages,
                                                  format_length_table, format_stage_table, format_table,
                                                  length_groups, load_sides, paired_results, run_dataset,
                                                  transition_groups)

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    edges = _length_edges(args.by_length) if args.by_length else None
    runs_a, runs_b = _run_list(args.a), _run_list(args.b)
    users, ra, rb, metas_a, metas_b = load_sides(runs_a, runs_b, args.stage)
    ma, mb = metas_a[0], metas_b[0]
    stats = (args.resamples, args.confidence, args.seed)
    results = paired_results(ra, rb, metrics, *stats)
    by_length, by_step = [], []
    data = run_dataset(runs_a[0], ma, args.data_path) if edges or args.by_transition else None
    if edges:
        hist = data.history_lengths(args.stage)[users]
        by_length = compare_by_length(ra, rb, hist, edges, metrics, *stats)
    if args.by_transition:
        seen = data.seen_transitions(args.stage)[users]
        by_step = compare_groups(ra, rb, transition_groups(seen, length_groups(hist, edges) if edges else None),
                                 metrics, *stats)
    stage_gap = compare_stages(runs_a, runs_b, metrics, *stats) if args.stage_gap else []
    if args.json:
        out = {"a": ma, "b": mb, "runs_a": runs_a, "runs_b": runs_b, "results": [r.to_dict() for r in results]}
        if edges:
            out["by_length"] = [{"history": label, **r.to_dict()} for label, r in by_length]
        if by_step:
            out["by_transition"] = [{"group": label, **r.to_dict()} for label, r in by_step]
        if stage_gap:  # a = test gap, b = valid gap, diff = valid - test
            out["stage_gap"] = [{"metric": r.metric, "n_users": r.n_users, "valid_gap": r.b, "test_gap": r.a,
                                 "diff": r.diff, "ci_low": r.ci_low, "ci_high": r.ci_high, "p_value": r.p_value}
                                for r in stage_gap]
        print(json.dumps(out, indent=2))
    else:
        print(format_table(results, _ranks_label(runs_a, ma), _ranks_label(runs_b, mb), args.confidence))
        if by_length:
            print(format_length_table(by_length, args.confidence))
        if by_step:
            print(format_length_table(by_step, args.confidence, "By the step to the target (seen: the "
                                      "last history item -> target pair occurs in the training data):", "group"))
        if stage_gap:
            print(format_stage_table(stage_gap, args.confidence))
    return 0


def _length_edges(text: str) -> list[int]:
    from elasticrec.evaluate.significance import length_buckets

    try:
        edges = [int(e) for e in text.split(",") if e.strip()]
    except ValueError:
        raise ConfigError(f"--by-length {text!r}: comma-separated integers expected") from None
    try:
        length_buckets(edges)
    except ValueError as e:
        raise ConfigError(f"--by-length {text!r}: {e}") from None
    return edges


def _run_list(text: str) -> list[str]:
    return [r for r in text.split(",") if r]


def _ranks_label(runs: list[str], meta: dict) -> str:
    from elasticrec.evaluate.ranking import history_label

    what = ", ".join(str(meta.get(k, "?")) for k in ("model", "dataset", "stage", "protocol"))
    if meta.get("fit", "train") != "train":
        what += f", fit {meta['fit']}"
    h, drop = meta.get("history_len", meta.get("max_len")), meta.get("drop_recent", 0)
    if h != meta.get("max_len") or drop:
        what += f", {history_label(h or None, drop)}"
    if meta.get("checkpoint") == "last":
        which = "last checkpoint, epoch"
    else:  # a refit has no best epoch: it tests the weights of its final epoch
        which = "best epoch" if meta.get("fit", "train") == "train" else "final epoch"
    if len(runs) > 1:
        return f"{', '.join(runs)} (mean of {len(runs)} runs per user; first: {what}, {which} {meta.get('epoch', '?')})"
    return f"{runs[0]} ({what}, {which} {meta.get('epoch', '?')})"


def cmd_data_stats(args) -> int:
    from elasticrec.data import load_dataset

    cfg = resolve_config(args)
    stats = load_dataset(cfg.data).stats()
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        for k, v in stats.items():
            print(f"{k:>14}: {v:,.2f}" if isinstance(v, float) else f"{k:>14}: {v:,}" if isinstance(v, int) else f"{k:>14}: {v}")
    return 0


def cmd_models(args) -> int:
    from elasticrec.models import list_models

    print("\n".join(list_models()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from elasticrec import __version__

    p = argparse.ArgumentParser(
        prog="elasticrec", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Long-sequence sequential recommendation: ELASTIC and its baselines (SASRec, HSTU, "
                    "LinRec) trained and evaluated with full ranking in one harness.",
        epilog="examples:\n"
               "  elasticrec train --dataset ml-1m --model elastic      # preset configs/ml-1m/elastic.yaml\n"
               "  elasticrec train --dataset lastfm --model sasrec --set train.seed=43\n"
               "  elasticrec compare runs/A runs/B                      # paired test of two runs\n"
               "  elasticrec <command> --help                           # the options of one command")
    p.add_argument("--version", action="version", version=f"elasticrec {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and evaluate it (valid per epoch, test once at the end)")
    _add_common(t)
    t.add_argument("--model", help="model name (see `elasticrec models`)")
    t.add_argument("--epochs", type=int, help="= --set train.epochs=N (maximum; early stopping may end sooner)")
    t.add_argument("--batch-size", type=int, help="= --set train.batch_size=N (sequences per step)")
    t.add_argument("--lr", type=float, help="= --set train.lr=X")
    t.add_argument("--max-len", type=int, help="= --set model.max_len=L (history window fed to the model)")
    t.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    t.add_argument("--run-dir", help="run directory (default runs/<dataset>-<model>-<time>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("refit", help="retrain a finished run on train + validation items for its best epoch count, "
                                     "test once",
                       description="Model selection picks the epoch count on the validation items; a refit then "
                                   "trains the same configuration again on every item but the test item, for "
                                   "that many epochs, and scores the test item once with the final weights. "
                                   "Its test ranks pair with the original run's in `elasticrec compare`.")
    r.add_argument("run", help="run directory written by `elasticrec train` (config.yaml, best epoch)")
    r.add_argument("--epochs", type=int, help="epochs to train (default: the run's best epoch + 1)")
    r.add_argument("--run-dir", help="output run directory (default runs/<run name>-refit)")
    r.add_argument("--resume", action="store_true", help="continue an interrupted refit in --run-dir")
    r.add_argument("--data-path", help="dataset location, if not where the run found it")
    r.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override config fields, e.g. --set train.num_threads=1 --set train.seed=43")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_refit)

    e = sub.add_parser("evaluate", help="evaluate a run's best checkpoint")
    e.add_argument("--run", required=True, help="run directory written by `elasticrec train`")
    e.add_argument("--stage", default="test", choices=["valid", "test"])
    e.add_argument("--protocol", choices=["full", "sampled"], help="default: the run's (full ranking)")
    e.add_argument("--data-path")
    e.add_argument("--device", default="auto")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    e.add_argument("--checkpoint", default="best", choices=["best", "last"],
                   help="best: the weights the run tests (best validation; a refit's final ones); last: the "
                        "latest checkpoint, e.g. of a run still training")
    e.add_argument("--history-len", type=int, metavar="N",
                   help="history items fed to the model per user (eval.history_len): default model.max_len, the "
                        "training window; 0 = the whole history (needs a model whose positions allow it, e.g. "
                        "ELASTIC with pos_encoding chunk)")
    e.add_argument("--drop-recent", type=int, metavar="N",
                   help="leave each user's N most recent history items out of the model's input (eval.drop_recent; "
                        "they stay excluded from the ranking; at least the oldest item is fed): how much do the "
                        "scores rest on the latest items?")
    e.add_argument("--save-ranks", nargs="?", const="", metavar="FILE",
                   help="also write each user's rank (default FILE: <run>/<stage>_ranks.npz; with --checkpoint last "
                        "<run>/<stage>_ranks_epoch-NNNN.npz; with --history-len <run>/<stage>_ranks_history-N.npz, "
                        "N = all for 0; with --drop-recent N ..._drop-N.npz), for `elasticrec compare`")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("compare", help="paired significance test of two runs on the same users",
                       description="Paired bootstrap confidence interval and sign-flip randomization test of "
                                   "B - A on per-user metrics. A and B are run directories (their "
                                   "<stage>_ranks.npz) or ranks files.")
    c.add_argument("a", help="run directory or ranks file (baseline); several, comma-separated (e.g. seeds), "
                             "are averaged per user")
    c.add_argument("b", help="run directory or ranks file (candidate); several, comma-separated, as for A")
    c.add_argument("--stage", default="test", choices=["valid", "test"])
    c.add_argument("--metrics", default="HR@10,NDCG@10,MRR", help="comma-separated HR@K, NDCG@K, MRR")
    c.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples and sign flips")
    c.add_argument("--confidence", type=float, default=0.95)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--by-length", metavar="EDGES",
                   help="also compare inside buckets of the users' history length, e.g. 16,50 for "
                        "0-15, 16-49 and >=50 items before the target (reads the dataset of run A)")
    c.add_argument("--by-transition", action="store_true",
                   help="also compare the users whose target follows their last history item as two "
                        "consecutive items of some training history do ('seen step') apart from the rest "
                        "('new step'); inside each --by-length bucket when given (reads the dataset of run A)")
    c.add_argument("--data-path", help="dataset location for --by-length / --by-transition, if not where run A "
                                       "found it")
    c.add_argument("--stage-gap", action="store_true",
                   help="also test whether B - A differs between the validation and the test item "
                        "(does validation predict test?); every run needs valid_ranks.npz (written by "
                        "training; older runs: `evaluate --stage valid --save-ranks`) and test_ranks.npz")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=cmd_compare)

    d = sub.add_parser("data", help="dataset utilities")
    dsub = d.add_subparsers(dest="data_command", required=True)
    ds = dsub.add_parser("stats", help="users, items, interactions, length percentiles")
    _add_common(ds)
    ds.add_argument("--json", action="store_true", help="print JSON")
    ds.set_defaults(func=cmd_data_stats)

    m = sub.add_parser("models", help="list registered models")
    m.set_defaults(func=cmd_models)

    for module in ("elasticrec.serving.cli", "elasticrec.bench.cli"):  # optional command groups
        try:
            mod = __import__(module, fromlist=["add_subcommands"])
        except ModuleNotFoundError as e:
            if e.name is None or not module.startswith(e.name):
                raise
            continue
        mod.add_subcommands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"elasticrec: config error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # known user-facing errors get one clear line
        from elasticrec.evaluate.significance import RanksError
        from elasticrec.train.checkpoint import CheckpointError
        from elasticrec.train.trainer import TrainingError

        known = (CheckpointError, TrainingError, RanksError)
        try:
            from elasticrec.data import DataError
            known = known + (DataError,)
        except ImportError:
            pass
        if isinstance(e, known):
            print(f"elasticrec: error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    raise SystemExit(main())
