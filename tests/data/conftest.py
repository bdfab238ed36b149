"""Shared fixtures for the data-layer tests: never touch the network or the real user cache."""

from __future__ import annotations

import urllib.error

import pytest

from elasticrec.data import registry


@pytest.fixture(autouse=True)
def _isolate(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))  # platformdirs user_cache_dir -> tmp
    monkeypatch.delenv("ELASTICREC_CACHE", raising=False)

    def offline(*a, **k):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(registry, "urlopen", offline)
    yield


@pytest.fixture
def write(tmp_path):
    """write(name, text_or_bytes) -> Path in tmp_path."""

    def _w(name: str, content: str | bytes):
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode("utf-8")
        if name.endswith(".gz"):
            import gzip

            content = gzip.compress(content)
        p.write_bytes(content)
        return p

    return _w
