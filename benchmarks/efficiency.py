"""Time and memory vs sequence length for every model: the same as ``elasticrec bench efficiency``.

    python benchmarks/efficiency.py --device cpu --lengths 256,512,1024 --out docs/efficiency
    python benchmarks/efficiency.py --device cuda --amp bf16 --lengths 256,512,...,32768 --out docs/efficiency-cuda

See ``python benchmarks/efficiency.py --help`` and docs/efficiency.md.
"""

from elasticrec.bench.efficiency import main

if __name__ == "__main__":
    raise SystemExit(main())
