"""Small shared helpers: atomic file writes, content hashing, seeding, device choice."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np


def fsync_file(path: str | Path) -> None:
    """Flush a file's contents to disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | Path) -> None:
    """Persist a directory's entries (e.g. a rename into it); best effort on platforms without it."""
    with contextlib.suppress(OSError):
        dfd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


# a temporary older than this is a killed writer's: no write of ours takes a day
STALE_TEMP_AGE_S = 24 * 3600.0


def sweep_stale(directory: str | Path, pattern: str, max_age_s: float = STALE_TEMP_AGE_S) -> int:
    """Remove the entries of ``directory`` matching ``pattern`` (files or folders) that have not
    been modified for ``max_age_s`` seconds: the temporaries a writer leaves when it is killed
    before its own clean-up runs. Returns how many were removed; never raises."""
    removed, now = 0, time.time()
    with contextlib.suppress(OSError):
        for p in Path(directory).glob(pattern):
            with contextlib.suppress(OSError):
                if now - p.lstat().st_mtime < max_age_s:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed += 1
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it into place.

    On any exception the temporary file is removed and ``path`` is left untouched, so a crash
    never leaves a half-written cache or checkpoint under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent, f".{glob.escape(path.name)}.*.tmp")  # a killed writer's leftovers
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fsync_file(tmp_path)
        os.replace(tmp_path, path)
        fsync_dir(path.parent)  # persist the rename itself
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)


def file_digest(path: str | Path, algo: str = "sha256", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def seed_everything(seed: int, deterministic: bool = False) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


# oneDNN (PyTorch's bf16 matmuls on CPU) caches a primitive per distinct shape, 1,024 by default,
# some of them megabytes. The loss sees a different number of valid rows in every batch, so bf16
# training on CPU grew by about 0.2 GiB per ML-100k epoch and reached 12 GiB on ML-1M; 64 entries
# hold the model's fixed shapes and keep the process flat (no slower in a 30-step check).
ONEDNN_CACHE_CAPACITY = "64"


def limit_onednn_cache() -> None:
    """Cap oneDNN's primitive cache (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``) unless the user set it.
    Read when oneDNN makes its first primitive, so call it before the first bf16 CPU step."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_CAPACITY)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has bf16 instructions on this CPU (AVX512-BF16 or AMX). Without them bf16
    matmuls are emulated: a 2-layer ML-1M epoch took 464 s in bf16 against 52 s in fp32 on a
    2-core AVX2-only AMD EPYC VM."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: assume the best
        return True


def resolve_device(name: str = "auto"):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return dev
