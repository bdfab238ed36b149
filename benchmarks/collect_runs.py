"""Summarise run directories (test_metrics.json + metrics.jsonl) as JSON and a markdown table.

    python benchmarks/collect_runs.py RUNS_ROOT [--json out.json] [--md out.md]

The code lives in :mod:`elasticrec.bench.runs`; ``elasticrec bench accuracy`` aggregates the
same summaries over seeds.
"""

from elasticrec.bench.runs import main

if __name__ == "__main__":
    raise SystemExit(main())
