"""On-disk cache of processed datasets: ``.npy`` arrays + a JSON manifest, written atomically.

Layout: ``<root>/<name>-<key>/{items,offsets,item_raw_ids,user_raw_ids[,timestamps]}.npy`` and
``manifest.json`` (per-file sha256 and size, ``n_items``, ``meta``). ``<root>`` is
``DataConfig.cache_dir`` or ``platformdirs.user_cache_dir("elasticrec")/processed``.

The key hashes the source content digest (sha256), the reader format, every preprocessing
option and :data:`CACHE_VERSION`; change any and a new entry is built.

Writes go to a fresh temporary directory beside the entry which is renamed into place, so
readers never see a half-written entry and two processes racing simply both produce a valid
entry (the loser discards its copy). Every load checks sizes and sha256 against the manifest;
a damaged entry gives a warning and is rebuilt.

Source digests are memoised in ``<root>/.digests/`` keyed by path, size and mtime, so a cached
load does not re-hash a large source file.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..utils import atomic_write_json, file_digest, fsync_dir, fsync_file, sweep_stale
from .sequences import SequenceData

# Bump whenever readers/preprocessing change what they produce for the same input.
CACHE_VERSION = "1"
MANIFEST = "manifest.json"
_ARRAYS = ("items", "offsets", "item_raw_ids", "user_raw_ids", "timestamps")


def default_cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("ELASTICREC_CACHE"):
        return Path(os.environ["ELASTICREC_CACHE"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("elasticrec")) / "processed"


def cache_key(parts: dict) -> str:
    """Stable hash of the JSON-serialisable ``parts`` plus :data:`CACHE_VERSION`."""
    blob = json.dumps({"cache_version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def entry_dir(root: Path, name: str, key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "data"
    return root / f"{safe}-{key}"


def source_digest(path: Path, root: Path | None = None) -> str:
    """sha256 of ``path``'s content, memoised under ``root/.digests`` by (path, size, mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    memo = None
    if root is not None:
        memo = root / ".digests" / (hashlib.sha1(str(path).encode()).hexdigest() + ".json")
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            d = json.loads(memo.read_text())
            if d["path"] == str(path) and d["size"] == st.st_size and d["mtime_ns"] == st.st_mtime_ns:
                return str(d["sha256"])
    digest = file_digest(path)
    if memo is not None:
        with contextlib.suppress(OSError):
            atomic_write_json(memo, {"path": str(path), "size": st.st_size,
                                     "mtime_ns": st.st_mtime_ns, "sha256": digest})
    return digest


def _write_entry(d: Path, data: SequenceData) -> None:
    files = {}
    arrays = {
        "items": np.ascontiguousarray(data.items, dtype=np.int64),
        "offsets": np.ascontiguousarray(data.offsets, dtype=np.int64),
        "item_raw_ids": np.asarray(data.item_raw_ids).astype(str),
        "user_raw_ids": np.asarray(data.user_raw_ids).astype(str),
    }
    if data.timestamps is not None:
        arrays["timestamps"] = np.ascontiguousarray(data.timestamps, dtype=np.int64)
    for name, arr in arrays.items():
        p = d / f"{name}.npy"
        np.save(p, arr, allow_pickle=False)
        fsync_file(p)
        files[name] = {"file": p.name, "bytes": p.stat().st_size, "sha256": file_digest(p)}
    manifest = {"cache_version": CACHE_VERSION, "n_items": int(data.n_items),
                "files": files, "meta": _jsonable(data.meta)}
    (d / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    fsync_file(d / MANIFEST)


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


class CorruptCache(Exception):
    pass


def read_entry(d: Path, mmap: bool = False) -> SequenceData:
    """Load and verify an entry; raises :class:`CorruptCache` (or FileNotFoundError)."""
    mpath = d / MANIFEST
    if not mpath.exists():
        raise FileNotFoundError(mpath)
    try:
        m = json.loads(mpath.read_text())
        files = m["files"]
        if m.get("cache_version") != CACHE_VERSION:
            raise CorruptCache(f"cache version {m.get('cache_version')} != {CACHE_VERSION}")
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise CorruptCache(f"unreadable manifest: {e}") from None
    arrays = {}
    for name in _ARRAYS:
        if name not in files:
            if name == "timestamps":
                continue
            raise CorruptCache(f"manifest lacks {name}")
        p = d / files[name]["file"]
        try:
            if p.stat().st_size != files[name]["bytes"]:
                raise CorruptCache(f"{p.name}: size {p.stat().st_size} != {files[name]['bytes']}")
            if file_digest(p) != files[name]["sha256"]:
                raise CorruptCache(f"{p.name}: sha256 mismatch")
            mode = "r" if (mmap and name in ("items", "offsets", "timestamps")) else None
            arrays[name] = np.load(p, mmap_mode=mode, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise CorruptCache(f"{p.name}: {e}") from None
    items, offsets = arrays["items"], arrays["offsets"]
    if len(offsets) < 1 or int(offsets[-1]) != len(items):
        raise CorruptCache("offsets do not match items")
    meta = dict(m.get("meta") or {})
    meta["cache_dir"] = str(d)
    return SequenceData(items=items, offsets=offsets, n_items=int(m["n_items"]),
                        item_raw_ids=arrays["item_raw_ids"], user_raw_ids=arrays["user_raw_ids"],
                        timestamps=arrays.get("timestamps"), meta=meta)


def load(d: Path, mmap: bool = False) -> SequenceData | None:
    """The cached entry at ``d``, or None if absent or damaged (damage -> warning)."""
    try:
        return read_entry(d, mmap=mmap)
    except FileNotFoundError:
        if d.exists():
            warnings.warn(f"processed-data cache {d} is incomplete (no manifest); rebuilding",
                          RuntimeWarning, stacklevel=3)
        return None
    except CorruptCache as e:
        warnings.warn(f"processed-data cache {d} is damaged ({e}); rebuilding", RuntimeWarning,
                      stacklevel=3)
        return None


def save(d: Path, data: SequenceData) -> None:
    """Atomically write ``data`` as entry ``d`` (safe against concurrent writers and readers)."""
    d.parent.mkdir(parents=True, exist_ok=True)
    for kind in (".tmp-", ".trash-"):  # left by a writer killed mid-save
        sweep_stale(d.parent, f"{kind}{glob.escape(d.name)}-*")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{d.name}-", dir=d.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the entry is a normal shared cache dir
        _write_entry(tmp, data)
        try:
            os.rename(tmp, d)  # atomic; fails if d exists and is not empty
        except OSError:
            try:
                read_entry(d)
                return  # a concurrent writer won with a valid entry: keep theirs
            except (CorruptCache, FileNotFoundError):
                pass
            trash = Path(tempfile.mkdtemp(prefix=f".trash-{d.name}-", dir=d.parent))
            try:
                os.rename(d, trash / "old")
            except FileNotFoundError:
                pass
            except OSError:
                shutil.rmtree(trash, ignore_errors=True)
                return  # somebody else is replacing it right now
            try:
                os.rename(tmp, d)
            except OSError:
                pass  # lost a race to another writer, whose entry is complete
            finally:
                shutil.rmtree(trash, ignore_errors=True)
        fsync_dir(d.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
