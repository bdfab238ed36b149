"""``elasticrec recommend`` and ``elasticrec serve`` (hooked into :mod:`elasticrec.cli`)."""

from __future__ import annotations

import argparse
import json
import sys


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory written by `elasticrec train`")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--data-path", help="dataset location, if it moved since training")
    p.add_argument("--unknown", default="skip", choices=["skip", "error"],
                   help="unknown item ids: skip and report them (default) or reject the request")


def add_subcommands(sub) -> None:
    r = sub.add_parser("recommend", help="top-k items for a history or a dataset user")
    _add_run_args(r)
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--history", help="comma-separated raw item ids, oldest first (e.g. 12,7,33)")
    g.add_argument("--user", help="raw id of a dataset user: uses the user's full known history")
    r.add_argument("--k", type=_positive_int, default=10, help="number of items (default 10)")
    r.add_argument("--keep-history", action="store_true", help="allow items of the history in the result")
    r.add_argument("--json", action="store_true", help="print the full result as JSON")
    r.set_defaults(func=cmd_recommend)

    s = sub.add_parser("serve", help="HTTP service (FastAPI + uvicorn); OpenAPI docs at /docs")
    _add_run_args(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-users", type=_positive_int, default=100_000,
                   help="users whose state the server holds (least recently used evicted)")
    s.add_argument("--max-seen", type=_positive_int, default=None,
                   help="seen items kept per user for exclusion (default max(1024, max_len))")
    s.add_argument("--no-dataset-seed", action="store_true",
                   help="start every user's server state empty, even for dataset users")
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=cmd_serve)


def _fail(msg: str) -> int:
    print(f"elasticrec: error: {msg}", file=sys.stderr)
    return 1


def cmd_recommend(args) -> int:
    from elasticrec.serving import ServingError, load_run

    try:
        if args.history is not None:
            history = [t.strip() for t in args.history.split(",") if t.strip()]
            if not history:
                return _fail("--history is empty; give comma-separated item ids, e.g. --history 12,7,33")
        rec = load_run(args.run, device=args.device, checkpoint=args.checkpoint, data_path=args.data_path)
        exclude = not args.keep_history
        if args.user is not None:
            res = rec.recommend_user(args.user, args.k, exclude_history=exclude)
        else:
            res, = rec.recommend([history], args.k, exclude_history=exclude, unknown=args.unknown)
            if not res.history_len:
                return _fail(f"no valid items in --history: none of {', '.join(history[:10])} is in "
                             f"the catalogue of {rec.n_items} items")
    except ServingError as e:
        return _fail(str(e))
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    notes = []
    if res.skipped_unknown:
        notes.append(f"skipped {len(res.skipped_unknown)} unknown item(s): {', '.join(res.skipped_unknown[:10])}")
    if res.truncated:
        notes.append(f"history of {res.history_len} items truncated to the last {res.used_len} (max_len)")
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    print(f"{'rank':>4}  {'item':<16} score")
    for i, (item, score) in enumerate(res.items, 1):
        print(f"{i:>4}  {item:<16} {score:.4f}")
    return 0


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from elasticrec.serving.app import create_app
    except ModuleNotFoundError as e:
        return _fail(f"`elasticrec serve` needs {e.name}: pip install 'elasticrec[serve]'")
    from elasticrec.serving import ServingError, load_run

    try:
        rec = load_run(args.run, device=args.device, checkpoint=args.checkpoint, data_path=args.data_path)
        app = create_app(rec, max_users=args.max_users, max_seen=args.max_seen, unknown=args.unknown,
                         seed_from_dataset=not args.no_dataset_seed)
    except ServingError as e:
        return _fail(str(e))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
    return 0
