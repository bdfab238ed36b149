from __future__ import annotations

import gzip
import hashlib
import io
import urllib.error
import zipfile
from pathlib import Path

import pytest

from elasticrec.config import DataConfig
from elasticrec.data import (DATASETS, DataError, dataset_stats, load_dataset, registry,
                             resolve_data_path)

ML = "".join(f"{u}::{i}::{1 + (u + i) % 5}::{1000 + 10 * u + i}\n"
             for u in range(1, 4) for i in (10, 20, 30, 40, 50, 60) if (u, i) != (3, 60))


def make_zip(ratings: str = ML) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ml-1m/ratings.dat", ratings)
    return buf.getvalue()


def test_presets_exist():
    for name in ["ml-1m", "ml-100k", "beauty", "sports", "yelp", "lastfm", "beauty-bert4rec",
                 "synthetic", "custom"]:
        assert name in DATASETS
    p = DATASETS["ml-1m"]
    assert p.format == "movielens-dat" and p["defaults"] == {"min_item_count": 5}
    assert [f for f, _ in p.files] == ["ratings.dat", "ml-1m.zip", "ml-1m.chrono_seq.txt.gz"]


def test_resolve_data_path(monkeypatch, tmp_path):
    monkeypatch.delenv("ELASTICREC_DATA", raising=False)
    default = resolve_data_path(DataConfig())
    assert default.name == "data" and "elasticrec" in str(default)
    monkeypatch.setenv("ELASTICREC_DATA", str(tmp_path / "env"))
    assert resolve_data_path(DataConfig()) == tmp_path / "env"
    assert resolve_data_path(DataConfig(path=str(tmp_path / "x"))) == tmp_path / "x"


def test_search_root_and_subdir_and_order(tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTICREC_DATA", str(tmp_path))
    (tmp_path / "ml-1m").mkdir()
    seq = "1 10 20 30 40 50 60\n2 10 20 30 40 50 60\n3 10 20 30 40 50\n"
    (tmp_path / "ml-1m" / "ml-1m.chrono_seq.txt.gz").write_bytes(gzip.compress(seq.encode()))
    c = DataConfig(name="ml-1m", cache_dir=str(tmp_path / "c"))
    src, fmt = registry.find_source(c)
    assert src.name == "ml-1m.chrono_seq.txt.gz" and fmt == "seq-text"
    assert registry.effective_options(c, DATASETS["ml-1m"]).min_item_count == 5  # preset default
    with pytest.raises(DataError, match="no interactions left"):  # every item has < 5 events
        load_dataset(c)
    d = load_dataset(DataConfig(name="ml-1m", cache_dir=str(tmp_path / "c"), min_item_count=3))
    assert (d.n_users, d.n_items, d.n_interactions) == (3, 5, 15)  # item 60 (2 events) dropped
    assert load_dataset(DataConfig(name="ml-1m", cache_dir=str(tmp_path / "c"),
                                   min_item_count=1)).n_items == 6
    (tmp_path / "ml-1m.zip").write_bytes(make_zip())  # zip at the root beats the chrono file
    src, fmt = registry.find_source(c)
    assert src.name == "ml-1m.zip" and fmt == "movielens-dat"
    d = load_dataset(DataConfig(name="ml-1m", cache_dir=str(tmp_path / "c"), min_item_count=1))
    assert d.timestamps is not None and d.n_users == 3 and d.meta["format"] == "movielens-dat"
    (tmp_path / "ml-1m" / "ratings.dat").write_text(ML)  # ratings.dat beats both
    assert registry.find_source(c)[0].name == "ratings.dat"
    # explicit format restricts the candidates
    c2 = DataConfig(name="ml-1m", format="seq-text")
    assert registry.find_source(c2)[0].name == "ml-1m.chrono_seq.txt.gz"


def test_path_to_file(tmp_path):
    p = tmp_path / "mine.txt"
    p.write_text("1 1 2 3\n2 3 4\n")
    c = DataConfig(name="beauty", path=str(p), cache_dir=str(tmp_path / "c"))
    assert registry.find_source(c) == (p, "seq-text")
    s = dataset_stats(c)
    assert (s["users"], s["items"], s["interactions"]) == (2, 4, 5)


def test_custom(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("user,item,ts\nb,x,2\na,y,1\nb,z,1\n")
    c = DataConfig(name="custom", path=str(p), user_col="user", item_col="item", time_col="ts",
                   cache_dir=str(tmp_path / "c"))
    d = load_dataset(c)
    assert d.user_raw_ids.tolist() == ["b", "a"]
    assert d.item_raw_ids[d.sequence(0)].tolist() == ["z", "x"]
    assert d.meta["format"] == "table"
    with pytest.raises(DataError, match="custom.*needs data.path"):
        load_dataset(DataConfig(name="custom", path=str(tmp_path)))
    with pytest.raises(DataError, match="no ratings"):
        load_dataset(DataConfig(name="custom", path=str(p), user_col="user", item_col="item",
                                time_col="ts", min_rating=3, cache_dir=str(tmp_path / "c")))


def test_unknown_preset_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'nope'.*ml-1m"):
        load_dataset(DataConfig(name="nope"))
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(name="beauty", path=str(tmp_path)))
    assert "Beauty.txt" in str(e.value) and "ELASTICREC_DATA" in str(e.value)


def test_ml1m_offline_message(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(name="ml-1m", path=str(tmp_path / "empty")))
    msg = str(e.value)
    for s in ("ml-1m.zip", "ratings.dat", "--data-path", "$ELASTICREC_DATA", "offline",
              str(tmp_path / "empty")):
        assert s in msg
    assert not list(tmp_path.rglob("*.zip"))


def test_ml1m_offline_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTICREC_OFFLINE", "1")
    called = []
    monkeypatch.setattr(registry, "urlopen", lambda *a, **k: called.append(1))
    with pytest.raises(DataError, match="ELASTICREC_OFFLINE"):
        load_dataset(DataConfig(name="ml-1m", path=str(tmp_path)))
    assert not called


class _Resp(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def test_ml1m_download_verified(tmp_path, monkeypatch):
    blob = make_zip()
    urls = []
    monkeypatch.setattr(registry, "urlopen", lambda url, timeout: urls.append(url) or _Resp(blob))
    preset = registry.DATASETS["ml-1m"]
    good = registry.DatasetPreset(**{**preset.__dict__, "md5": hashlib.md5(blob).hexdigest()})
    monkeypatch.setitem(registry.DATASETS, "ml-1m", good)
    d = load_dataset(DataConfig(name="ml-1m", path=str(tmp_path), cache_dir=str(tmp_path / "c"),
                                min_item_count=1))
    assert urls == [registry.ML1M_URL]
    assert (tmp_path / "ml-1m" / "ml-1m.zip").read_bytes() == blob
    assert d.n_users == 3 and d.n_interactions == 17


def test_ml1m_download_checksum_mismatch(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "urlopen", lambda url, timeout: _Resp(make_zip()))
    with pytest.raises(DataError, match="checksum mismatch"):
        load_dataset(DataConfig(name="ml-1m", path=str(tmp_path)))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing kept


def test_ml1m_download_timeout(tmp_path, monkeypatch):
    def slow(*a, **k):
        raise urllib.error.URLError(TimeoutError("timed out"))

    monkeypatch.setattr(registry, "urlopen", slow)
    with pytest.raises(DataError, match="timed out"):
        load_dataset(DataConfig(name="ml-1m", path=str(tmp_path)))


def test_published_md5_constant():
    assert registry.ML1M_MD5 == "c4d9eecfca2ab87c1945afe126590906"
