from __future__ import annotations

import json
import multiprocessing as mp
import time
import warnings

import numpy as np
import pytest

from elasticrec.config import DataConfig
from elasticrec.data import cache, load_dataset

SEQ = "1 1 2 3 4\n2 2 3 4 5 6\n3 1 5 6\n"


def cfg(tmp_path, **kw):
    p = tmp_path / "Beauty.txt"
    if not p.exists():
        p.write_text(SEQ)
    return DataConfig(name="beauty", path=str(p), cache_dir=str(tmp_path / "cache"), **kw)


def entries(tmp_path):
    return sorted(p for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))


def leftovers(tmp_path):
    return [p for p in (tmp_path / "cache").iterdir() if p.name.startswith((".tmp", ".trash"))]


def test_second_load_hits_cache(tmp_path, monkeypatch):
    c = cfg(tmp_path)
    d1 = load_dataset(c)
    assert d1.meta["cache_hit"] is False
    (e,) = entries(tmp_path)
    m = json.loads((e / "manifest.json").read_text())
    assert set(m["files"]) == {"items", "offsets", "item_raw_ids", "user_raw_ids"}

    def boom(*a, **k):
        raise AssertionError("reader called on a cache hit")

    monkeypatch.setattr("elasticrec.data.read_interactions", boom)
    d2 = load_dataset(c)
    assert d2.meta["cache_hit"] is True
    np.testing.assert_array_equal(d1.items, d2.items)
    np.testing.assert_array_equal(d1.offsets, d2.offsets)
    assert d2.item_raw_ids.tolist() == d1.item_raw_ids.tolist()
    assert d2.user_raw_ids.tolist() == d1.user_raw_ids.tolist()
    d3 = load_dataset(c, mmap=True)
    assert isinstance(d3.items, np.memmap) and d3.items.tolist() == d1.items.tolist()
    assert not leftovers(tmp_path)


def test_changed_source_or_options_rebuild(tmp_path):
    c = cfg(tmp_path)
    load_dataset(c)
    assert len(entries(tmp_path)) == 1
    load_dataset(cfg(tmp_path, min_item_count=2))
    assert len(entries(tmp_path)) == 2
    assert load_dataset(cfg(tmp_path, min_item_count=2)).meta["cache_hit"] is True
    time.sleep(0.01)
    (tmp_path / "Beauty.txt").write_text(SEQ + "4 7 8\n")
    d = load_dataset(c)
    assert d.meta["cache_hit"] is False and d.n_users == 4
    assert len(entries(tmp_path)) == 3


def test_code_version_in_key(tmp_path, monkeypatch):
    c = cfg(tmp_path)
    load_dataset(c)
    monkeypatch.setattr(cache, "CACHE_VERSION", "999")
    assert load_dataset(c).meta["cache_hit"] is False


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest", "delete"])
def test_corrupted_cache_rebuilt(tmp_path, damage):
    c = cfg(tmp_path)
    ref = load_dataset(c)
    (e,) = entries(tmp_path)
    f = e / "items.npy"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:-8])
    elif damage == "flip":
        b = bytearray(f.read_bytes())
        b[-1] ^= 0xFF
        f.write_bytes(bytes(b))
    elif damage == "manifest":
        (e / "manifest.json").write_text("{not json")
    else:
        f.unlink()
    with pytest.warns(RuntimeWarning, match="damaged|incomplete"):
        d = load_dataset(c)
    assert d.meta["cache_hit"] is False
    assert d.items.tolist() == ref.items.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_dataset(c).meta["cache_hit"] is True  # repaired in place
    assert not leftovers(tmp_path)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    c = cfg(tmp_path)

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(cache, "_write_entry", fail)
    with pytest.raises(OSError):
        load_dataset(c)
    assert entries(tmp_path) == [] and not leftovers(tmp_path)


def _worker(args):
    path, cache_dir = args
    d = load_dataset(DataConfig(name="beauty", path=path, cache_dir=cache_dir))
    return d.items.tolist()


def test_concurrent_builders(tmp_path):
    c = cfg(tmp_path)
    ctx = mp.get_context("fork")
    with ctx.Pool(4) as pool:
        res = pool.map(_worker, [(c.path, c.cache_dir)] * 8)
    assert all(r == res[0] for r in res)
    (e,) = entries(tmp_path)
    cache.read_entry(e)  # valid
    assert not leftovers(tmp_path)


def test_save_over_existing_corrupt_entry(tmp_path):
    c = cfg(tmp_path)
    d = load_dataset(c)
    (e,) = entries(tmp_path)
    (e / "offsets.npy").write_bytes(b"junk")
    cache.save(e, d)  # replaces the damaged entry
    assert cache.read_entry(e).items.tolist() == d.items.tolist()
    cache.save(e, d)  # valid entry already there: kept
    assert not leftovers(tmp_path)


def test_killed_writers_leftovers_are_swept_once_stale(tmp_path):
    import os

    c = cfg(tmp_path)
    d = load_dataset(c)
    (e,) = entries(tmp_path)
    # what a writer killed mid-save leaves: a temporary entry and a trash folder
    old_tmp, old_trash = e.parent / f".tmp-{e.name}-dead", e.parent / f".trash-{e.name}-dead"
    live_tmp = e.parent / f".tmp-{e.name}-live"  # another writer's, still being written
    for p in (old_tmp, old_trash, live_tmp):
        p.mkdir()
        (p / "items.npy").write_bytes(b"partial")
    day_ago = time.time() - 2 * 24 * 3600
    for p in (old_tmp, old_trash):
        os.utime(p, (day_ago, day_ago))
    cache.save(e, d)
    assert not old_tmp.exists() and not old_trash.exists()
    assert live_tmp.exists()  # fresh: may belong to a live writer
    assert cache.read_entry(e).items.tolist() == d.items.tolist()


def test_source_digest_memo(tmp_path, monkeypatch):
    c = cfg(tmp_path)
    load_dataset(c)
    calls = []
    real = cache.file_digest
    monkeypatch.setattr(cache, "file_digest", lambda p, *a: calls.append(str(p)) or real(p, *a))
    load_dataset(c)
    assert str((tmp_path / "Beauty.txt").resolve()) not in calls  # memoised by size+mtime
