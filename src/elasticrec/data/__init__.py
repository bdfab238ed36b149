"""Data layer: presets, readers, preprocessing, processed-array cache, synthetic generator.

Public API::

    load_dataset(cfg: DataConfig, *, mmap=False, use_cache=True) -> SequenceData
    dataset_stats(cfg: DataConfig) -> dict
    resolve_data_path(cfg: DataConfig) -> Path
    DATASETS: dict[str, DatasetPreset]
    DataError(ValueError)
"""

from __future__ import annotations

import time

from ..config import DataConfig
from . import cache
from .errors import DataError
from .preprocess import PreprocessOptions, preprocess
from .readers import FORMATS, Interactions, read_interactions
from .registry import (DATASETS, DatasetPreset, effective_options, find_source, get_preset,
                       resolve_data_path)
from .sequences import SequenceData
from .synthetic import generate_synthetic


def load_dataset(cfg: DataConfig | None = None, *, mmap: bool = False, use_cache: bool = True
                 ) -> SequenceData:
    """Find, read, preprocess and cache the dataset described by ``cfg``.

    ``mmap=True`` returns read-only memory-mapped ``items``/``offsets``/``timestamps`` from the
    cache (for datasets larger than RAM); the default loads them into memory.
    ``meta`` carries name, format, source path and sha256, options, ``cache_dir``,
    ``cache_hit`` and ``load_seconds``.
    """
    cfg = cfg or DataConfig()
    t0 = time.perf_counter()
    if cfg.name == "synthetic" or (cfg.format or "").lower() == "synthetic":
        data = generate_synthetic(cfg.synthetic)
        data.meta["load_seconds"] = time.perf_counter() - t0
        return data
    preset = get_preset(cfg.name)
    src, fmt = find_source(cfg, preset)
    opts = effective_options(cfg, preset)
    reader_opts = {"user_col": cfg.user_col, "item_col": cfg.item_col, "time_col": cfg.time_col,
                   "rating_col": cfg.rating_col, "sep": cfg.sep}
    if fmt not in ("table", "recbole-inter"):
        reader_opts = {}
    root = cache.default_cache_root(cfg.cache_dir)
    digest = cache.source_digest(src, root if use_cache else None)
    key = cache.cache_key({"source_sha256": digest, "format": fmt, "options": opts.as_dict(),
                           "reader": reader_opts, "name": cfg.name})
    d = cache.entry_dir(root, cfg.name, key)
    if use_cache:
        data = cache.load(d, mmap=mmap)
        if data is not None:
            data.meta["cache_hit"] = True
            data.meta["load_seconds"] = time.perf_counter() - t0
            return data
    inter = read_interactions(src, fmt, **reader_opts)
    meta = {"name": cfg.name, "format": fmt, "source": str(src), "source_sha256": digest,
            "reader_options": reader_opts, "cache_key": key}
    data = preprocess(inter, opts, meta)
    if use_cache:
        cache.save(d, data)
        if mmap:
            data = cache.read_entry(d, mmap=True)
        data.meta["cache_dir"] = str(d)
    data.meta["cache_hit"] = False
    data.meta["load_seconds"] = time.perf_counter() - t0
    return data


def dataset_stats(cfg: DataConfig | None = None) -> dict:
    return load_dataset(cfg).stats()


__all__ = ["DATASETS", "DataError", "DatasetPreset", "FORMATS", "Interactions",
           "PreprocessOptions", "SequenceData", "dataset_stats", "find_source",
           "generate_synthetic", "get_preset", "load_dataset", "preprocess", "read_interactions",
           "resolve_data_path"]
