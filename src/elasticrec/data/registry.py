"""Dataset presets, data-path resolution and source-file discovery (incl. the ML-1M download).

A preset names the files to look for (in order), their format, the sub-directory they live in
under a data root, and default preprocessing. Under a root directory each file is searched at
``<root>/<file>`` and ``<root>/<subdir>/<file>`` (plus a ``.gz`` variant for text files).

Preset defaults fill any preprocessing field of :class:`DataConfig` that is left at its
``DataConfig`` default. (To switch a preset's item filter off, set ``min_item_count: 1``.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.request import urlopen

from ..config import DataConfig
from ..utils import atomic_path
from .errors import DataError
from .preprocess import PreprocessOptions
from .readers import canonical_format, infer_format

ENV_VAR = "ELASTICREC_DATA"
OFFLINE_ENV_VAR = "ELASTICREC_OFFLINE"  # "1": never try to download

ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
# Published GroupLens md5 of ml-1m.zip (https://files.grouplens.org/datasets/movielens/ml-1m.zip.md5).
ML1M_MD5 = "c4d9eecfca2ab87c1945afe126590906"


@dataclass(frozen=True)
class DatasetPreset:
    name: str
    description: str
    subdir: str = ""
    files: tuple[tuple[str, str], ...] = ()  # (file name, format), tried in order
    defaults: dict[str, Any] = field(default_factory=dict)  # preprocessing defaults
    url: str | None = None  # downloadable archive (only ML-1M)
    md5: str | None = None
    download_name: str | None = None

    @property
    def format(self) -> str | None:
        return self.files[0][1] if self.files else None

    def __getitem__(self, key: str) -> Any:  # dict-style access for convenience
        return getattr(self, key)


def _s3rec(name: str, fname: str, desc: str) -> DatasetPreset:
    return DatasetPreset(name, desc, "s3rec", ((fname, "seq-text"),))


DATASETS: dict[str, DatasetPreset] = {
    "ml-1m": DatasetPreset(
        "ml-1m", "MovieLens-1M; items with < 5 ratings dropped (6,040 users / 3,416 items / "
                 "999,611 interactions, the SASRec/BERT4Rec/HSTU version)",
        "ml-1m",
        (("ratings.dat", "movielens-dat"), ("ml-1m.zip", "movielens-dat"),
         ("ml-1m.chrono_seq.txt.gz", "seq-text")),
        {"min_item_count": 5}, url=ML1M_URL, md5=ML1M_MD5, download_name="ml-1m.zip"),
    "ml-100k": DatasetPreset(
        "ml-100k", "MovieLens-100k, RecBole atomic file (943 users / 1,682 items / 100,000)",
        "ml-100k", (("ml-100k.inter", "recbole-inter"), ("u.data", "movielens-udata"))),
    "beauty": _s3rec("beauty", "Beauty.txt", "Amazon Beauty, S3-Rec file (5-core, no filtering)"),
    "sports": _s3rec("sports", "Sports_and_Outdoors.txt", "Amazon Sports and Outdoors, S3-Rec file"),
    "yelp": _s3rec("yelp", "Yelp.txt", "Yelp, S3-Rec file"),
    "lastfm": _s3rec("lastfm", "LastFM.txt", "LastFM, S3-Rec file"),
    "beauty-bert4rec": DatasetPreset(
        "beauty-bert4rec", "Amazon Beauty, BERT4Rec pair file (user item per line)",
        "bert4rec_beauty", (("beauty.txt", "pair-text"),)),
    "synthetic": DatasetPreset("synthetic", "seeded generator (data.synthetic.*)",
                               files=(("", "synthetic"),)),
    "custom": DatasetPreset("custom", "your own file: set data.path and data.format"),
}


def get_preset(name: str) -> DatasetPreset:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; presets: {', '.join(DATASETS)} (use 'custom' "
                        f"with data.path and data.format for your own file)") from None


def default_data_root() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("elasticrec")) / "data"


def resolve_data_path(cfg: DataConfig) -> Path:
    """``cfg.path`` if set, else ``$ELASTICREC_DATA``, else ``<user cache dir>/elasticrec/data``."""
    if cfg.path:
        return Path(cfg.path).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return default_data_root()


def effective_options(cfg: DataConfig, preset: DatasetPreset) -> PreprocessOptions:
    base = DataConfig()
    vals = {}
    for f in dataclasses.fields(PreprocessOptions):
        v = getattr(cfg, f.name)
        if f.name in preset.defaults and v == getattr(base, f.name):
            v = preset.defaults[f.name]
        vals[f.name] = v
    return PreprocessOptions(**vals)


def candidate_paths(root: Path, preset: DatasetPreset, fmt: str | None = None
                    ) -> list[tuple[Path, str]]:
    out = []
    for fname, ffmt in preset.files:
        if fmt is not None and canonical_format(ffmt) != fmt:
            continue
        names = [fname]
        if ffmt in ("seq-text", "pair-text", "movielens-dat") and not fname.endswith((".gz", ".zip")):
            names.append(fname + ".gz")
        for d in ([root, root / preset.subdir] if preset.subdir else [root]):
            for n in names:
                out.append((d / n, ffmt))
    return out


def find_source(cfg: DataConfig, preset: DatasetPreset | None = None,
                allow_download: bool = True) -> tuple[Path, str]:
    """The file to read for ``cfg`` and its format (downloading ML-1M if needed and possible)."""
    preset = preset or get_preset(cfg.name)
    fmt = canonical_format(cfg.format) if cfg.format else None
    root = resolve_data_path(cfg)
    if root.is_file():
        if fmt is None:
            fmt = next((f for n, f in preset.files if n and n == root.name), None)
            fmt = fmt or next((f for n, f in preset.files if n and root.name == n + ".gz"), None)
            fmt = canonical_format(fmt) if fmt else infer_format(root)
        return root, fmt
    if preset.name == "custom":
        where = "does not exist" if not root.exists() else "is a directory"
        raise DataError(f"dataset 'custom' needs data.path pointing at a file; {root} {where}")
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: not a file or directory")
    cands = candidate_paths(root, preset, fmt)
    if fmt is not None and not cands:
        raise DataError(f"dataset {preset.name!r} has no files of format {fmt!r}; its formats: "
                        f"{', '.join(sorted({f for _, f in preset.files}))}")
    for p, f in cands:
        if p.is_file():
            return p, canonical_format(f)
    if preset.url and allow_download and (fmt is None or fmt == "movielens-dat"):
        dest = (root / preset.subdir if preset.subdir else root) / (preset.download_name or "")
        download_preset(preset, dest, searched=[p for p, _ in cands])
        return dest, "movielens-dat"
    looked = "\n  ".join(str(p) for p, _ in cands)
    raise DataError(f"dataset {preset.name!r}: no data file found under {root}. Looked for:\n  "
                    f"{looked}\nPut the file there, or point --data-path / ${ENV_VAR} at the "
                    f"directory (or file) holding it.")


# ----------------------------------------------------------------------------- download
def download_file(url: str, dest: Path, md5: str | None, timeout: float = 60.0) -> Path:
    """Stream ``url`` into ``dest`` atomically, verifying ``md5``; mismatch -> DataError."""
    h = hashlib.md5()
    with urlopen(url, timeout=timeout) as resp, atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            while True:
                block = resp.read(1 << 20)
                if not block:
                    break
                h.update(block)
                f.write(block)
        if md5 is not None and h.hexdigest() != md5:
            raise DataError(f"{url}: checksum mismatch (md5 {h.hexdigest()}, expected {md5}); "
                            f"the download was discarded")
    return dest


def download_preset(preset: DatasetPreset, dest: Path, searched: list[Path]) -> Path:
    hint = (f"Download {preset.url} yourself and put {preset.download_name} (or the "
            f"ratings.dat inside it) into {dest.parent}, or point --data-path / ${ENV_VAR} at "
            f"the directory (or file) holding it.")
    looked = ", ".join(str(p) for p in searched[:6]) + (" ..." if len(searched) > 6 else "")
    if os.environ.get(OFFLINE_ENV_VAR, "") not in ("", "0"):
        raise DataError(f"dataset {preset.name!r} not found (looked for {looked}) and "
                        f"${OFFLINE_ENV_VAR} forbids downloading. {hint}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return download_file(preset.url, dest, preset.md5)  # type: ignore[arg-type]
    except DataError:
        raise
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(f"dataset {preset.name!r} not found (looked for {looked}) and the "
                        f"download failed ({reason}); are you offline? {hint}") from None


def describe_presets() -> str:
    return "\n".join(f"{p.name:16s} {p.description}" for p in DATASETS.values())


__all__ = ["DATASETS", "DatasetPreset", "ENV_VAR", "ML1M_MD5", "ML1M_URL", "describe_presets",
           "download_file", "effective_options", "find_source", "get_preset",
           "resolve_data_path"]
