"""Benchmarks: efficiency (time / memory vs sequence length) and accuracy (multi-seed runs).

``elasticrec bench efficiency`` and ``elasticrec bench accuracy`` (see :mod:`elasticrec.bench.cli`);
``benchmarks/efficiency.py`` and ``benchmarks/accuracy.py`` are thin wrappers around the same code.
"""
