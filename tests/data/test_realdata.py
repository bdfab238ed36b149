"""Real datasets under $ELASTICREC_DATA (skipped when absent). Numbers checked against the files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from elasticrec.config import DataConfig
from elasticrec.data import load_dataset

ROOT = os.environ.get("ELASTICREC_DATA")

EXPECTED = {  # name: (file under the root, users, items, interactions)
    "ml-1m": ("ml-1m/ml-1m.chrono_seq.txt.gz", 6040, 3416, 999611),
    "ml-100k": ("ml-100k/ml-100k.inter", 943, 1682, 100000),
    "beauty": ("s3rec/Beauty.txt", 22363, 12101, 198502),
    "sports": ("s3rec/Sports_and_Outdoors.txt", 35598, 18357, 296337),
    "yelp": ("s3rec/Yelp.txt", 30431, 20033, 316354),
    "lastfm": ("s3rec/LastFM.txt", 1090, 3646, 52551),
    "beauty-bert4rec": ("bert4rec_beauty/beauty.txt", 40226, 54542, 353962),
}


def _need(rel: str) -> Path:
    if not ROOT or not (Path(ROOT) / rel).is_file():
        pytest.skip(f"needs $ELASTICREC_DATA with {rel}")
    return Path(ROOT)


@pytest.mark.realdata
@pytest.mark.parametrize("name", list(EXPECTED))
def test_preset_counts(name, tmp_path):
    rel, users, items, inter = EXPECTED[name]
    _need(rel)
    c = DataConfig(name=name, cache_dir=str(tmp_path))
    d = load_dataset(c)
    assert (d.n_users, d.n_items, d.n_interactions) == (users, items, inter)
    assert d.items.min() == 1 and d.items.max() == d.n_items
    assert np.bincount(d.items, minlength=d.n_items + 1)[1:].min() >= 1
    d2 = load_dataset(c)
    assert d2.meta["cache_hit"] and np.array_equal(d.items, d2.items)


@pytest.mark.realdata
def test_ml1m_details(tmp_path):
    root = _need(EXPECTED["ml-1m"][0])
    d = load_dataset(DataConfig(name="ml-1m", cache_dir=str(tmp_path)))
    counts = np.bincount(d.items, minlength=d.n_items + 1)[1:]
    assert counts.min() >= 5
    assert d.lengths.min() == 18 and d.lengths.max() == 2277  # raw: 20 and 2,314
    # iterative k-core gives the same set (no user filter, items only)
    it = load_dataset(DataConfig(name="ml-1m", cache_dir=str(tmp_path), kcore_iterative=True))
    assert it.n_interactions == d.n_interactions
    # unfiltered file: 3,706 items / 1,000,209 events, same per-user multisets as raw file order
    raw = load_dataset(DataConfig(name="ml-1m", cache_dir=str(tmp_path), min_item_count=1))
    assert (raw.n_users, raw.n_items, raw.n_interactions) == (6040, 3706, 1000209)
    pq = root / "ml-1m" / "ratings_user_movie_fileorder.parquet"
    if pq.is_file():
        import pandas as pd

        df = pd.read_parquet(pq)
        u = df.iloc[:, 0].astype(str).to_numpy()
        i = df.iloc[:, 1].astype(str).to_numpy()
        ours_u = np.repeat(raw.user_raw_ids, raw.lengths)
        ours_i = raw.item_raw_ids[raw.items]
        a = sorted(zip(u.tolist(), i.tolist()))
        b = sorted(zip(ours_u.tolist(), ours_i.tolist()))
        assert a == b


@pytest.mark.realdata
def test_s3rec_ids_preserved(tmp_path):
    _need(EXPECTED["beauty"][0])
    d = load_dataset(DataConfig(name="beauty", cache_dir=str(tmp_path)))
    # S3-Rec files number items 1..n by first appearance: dense id == raw id
    assert np.array_equal(d.item_raw_ids[1:].astype(np.int64), np.arange(1, d.n_items + 1))


@pytest.mark.realdata
def test_ml1m_cold_vs_cached_time(tmp_path):
    _need(EXPECTED["ml-1m"][0])
    c = DataConfig(name="ml-1m", cache_dir=str(tmp_path))
    t = time.perf_counter()
    load_dataset(c)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    d = load_dataset(c)
    warm = time.perf_counter() - t
    assert d.meta["cache_hit"]
    print(f"ml-1m load: cold {cold:.3f}s, cached {warm:.3f}s")
    assert warm < cold
