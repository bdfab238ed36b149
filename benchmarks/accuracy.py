"""Multi-seed accuracy runs from the presets: the same as ``elasticrec bench accuracy``.

    python benchmarks/accuracy.py --datasets ml-1m,beauty --models sasrec,elastic --seeds 42,43,44 \\
        --time-budget-s 600 --jobs 4 --out docs/results/accuracy
    python benchmarks/accuracy.py --smoke            # tiny CI run

See ``python benchmarks/accuracy.py --help``.
"""

from elasticrec.bench.accuracy import main

if __name__ == "__main__":
    raise SystemExit(main())
