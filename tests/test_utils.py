import os
import time

import pytest

from elasticrec.utils import atomic_path, atomic_write_text, sweep_stale


def _age(p, seconds):
    t = time.time() - seconds
    os.utime(p, (t, t))


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_text(p, "good")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert p.read_text() == "good"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.json"]


def test_stale_temporaries_of_killed_writers_are_swept(tmp_path):
    p = tmp_path / "model[1].pt"  # glob metacharacters in the name are matched literally
    dead = tmp_path / ".model[1].pt.abc123.tmp"
    live = tmp_path / ".model[1].pt.def456.tmp"  # a concurrent writer's, written just now
    other = tmp_path / ".other.pt.xyz.tmp"
    for f in (dead, live, other):
        f.write_bytes(b"partial")
    _age(dead, 2 * 24 * 3600)
    _age(other, 2 * 24 * 3600)
    atomic_write_text(p, "new")
    assert not dead.exists() and live.exists()
    assert other.exists()  # another file's temporaries are left to that file's writer
    assert p.read_text() == "new"


def test_sweep_stale_removes_only_old_matches(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "f").write_text("x")
    (tmp_path / "new").write_text("x")
    _age(tmp_path / "old", 3600)
    assert sweep_stale(tmp_path, "*", max_age_s=60) == 1
    assert [x.name for x in tmp_path.iterdir()] == ["new"]
    assert sweep_stale(tmp_path / "missing", "*") == 0  # never raises
