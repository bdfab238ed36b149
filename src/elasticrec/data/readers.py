"""Readers: every supported on-disk format -> one raw form, :class:`Interactions`.

A reader only parses; it never filters or reorders. Rows come out in file order, user and item
ids stay raw (int64 when every id in the column is an integer literal, else ``str``).
Preprocessing (thresholds, k-core, ordering, dense ids) lives in :mod:`.preprocess`.

Formats (``DataConfig.format``):

==================  =====================================================================
``movielens-dat``   GroupLens ``ratings.dat``: ``user::item::rating::timestamp``; also read
                    straight out of ``ml-1m.zip`` (member ``ml-1m/ratings.dat``)
``movielens-udata`` GroupLens ML-100k ``u.data``: ``user\\titem\\trating\\ttimestamp``
``recbole-inter``   RecBole atomic ``.inter``: tab separated, typed header
                    (``user_id:token\\titem_id:token\\trating:float\\ttimestamp:float``)
``seq-text``        ``user item1 item2 ...`` per line, chronological (plain or ``.gz``)
``pair-text``       ``user item`` per line, chronological (plain or ``.gz``)
``table``           CSV / TSV / Parquet with configurable columns (aliases ``csv``,
                    ``tsv``, ``parquet``)
``xlong``           XLong ``*_corpus_total_dual.txt`` (see :func:`read_xlong`)
==================  =====================================================================

Text readers are vectorised: the file is scanned once with numpy to find lines and count
fields per line (so a malformed line is reported with its number without a Python loop per
line), then split into tokens with ``bytes.split`` and converted with numpy. UTF-8 BOMs and
CRLF / CR line endings are accepted everywhere.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import DataError

FORMATS = ("movielens-dat", "movielens-udata", "recbole-inter", "seq-text", "pair-text",
           "table", "xlong", "synthetic")
FORMAT_ALIASES = {"csv": "table", "tsv": "table", "parquet": "table", "ratings.dat": "movielens-dat",
                  "ml-1m": "movielens-dat", "u.data": "movielens-udata", "inter": "recbole-inter",
                  "recbole": "recbole-inter", "sequence": "seq-text", "pairs": "pair-text"}


@dataclass
class Interactions:
    """Raw interactions in file order (one row per event)."""

    user: np.ndarray  # raw user ids (int64 or str)
    item: np.ndarray  # raw item ids (int64 or str)
    timestamp: np.ndarray | None = None  # numeric (int64 or float64) or None
    rating: np.ndarray | None = None  # float64 or None
    source: str = ""  # file the rows came from (for messages)

    def __len__(self) -> int:
        return len(self.user)


def canonical_format(fmt: str) -> str:
    f = FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    if f not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return f


# ----------------------------------------------------------------------------- raw bytes
_BOM = b"\xef\xbb\xbf"


def _normalise(data: bytes) -> bytes:
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data


def read_bytes(path: str | Path) -> bytes:
    """File content (gunzipped for ``*.gz``), BOM stripped, line endings normalised to ``\\n``."""
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read: {e}") from None
    return _normalise(data)


@dataclass
class _Lines:
    """Line table of a buffer: start/end byte offsets of every line (without the newline)."""

    arr: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    @classmethod
    def of(cls, buf: bytes) -> "_Lines":
        arr = np.frombuffer(buf, dtype=np.uint8)
        nl = np.flatnonzero(arr == 10)
        ends = nl if (len(buf) == 0 or buf.endswith(b"\n")) else np.append(nl, len(arr))
        starts = np.concatenate(([0], nl + 1))[: len(ends)]
        return cls(arr, starts, ends)

    def token_counts(self) -> np.ndarray:
        """Whitespace-separated tokens per line (same rule as ``bytes.split()``)."""
        a = self.arr
        ws = (a == 32) | (a == 9) | (a == 10) | (a == 11) | (a == 12) | (a == 13)
        if len(a) == 0:
            return np.zeros(len(self.starts), dtype=np.int64)
        tok = ~ws
        tok[1:] &= ws[:-1]
        pos = np.flatnonzero(tok)
        return np.searchsorted(pos, self.ends) - np.searchsorted(pos, self.starts)

    def byte_counts(self, byte: int) -> np.ndarray:
        """Occurrences of ``byte`` per line."""
        pos = np.flatnonzero(self.arr == byte)
        return np.searchsorted(pos, self.ends) - np.searchsorted(pos, self.starts)

    def line(self, i: int) -> str:
        raw = bytes(self.arr[self.starts[i]: self.ends[i]])
        text = raw.decode("utf-8", errors="replace")
        return text if len(text) <= 80 else text[:77] + "..."


def _fail_line(where: str, lineno: int, problem: str) -> DataError:
    return DataError(f"{where}, line {lineno}: {problem}")


def _decode(tok: np.ndarray) -> np.ndarray:
    """Bytes array -> str array (UTF-8, falling back to latin-1)."""
    try:
        return np.char.decode(tok, "utf-8")
    except UnicodeDecodeError:
        return np.char.decode(tok, "latin-1")


def _ids(tok: np.ndarray) -> np.ndarray:
    """Raw id column: int64 if every token is an integer literal, else str."""
    if tok.dtype.kind not in "SU":
        tok = np.asarray(pd.Series(tok, dtype=object).astype(str).to_numpy(dtype=object), dtype=str)
    try:
        return tok.astype(np.int64)
    except (ValueError, OverflowError):
        return _decode(tok) if tok.dtype.kind == "S" else tok


def _numbers(tok: np.ndarray, where: str, linenos: np.ndarray, what: str,
             integer_ok: bool = True) -> np.ndarray:
    """Numeric column (int64 when all integers and ``integer_ok``, else float64).

    A token that is not a number is reported with its line number.
    """
    if tok.dtype.kind == "S":
        if integer_ok:
            try:
                return tok.astype(np.int64)
            except (ValueError, OverflowError):
                pass
        try:
            out = tok.astype(np.float64)
        except ValueError:
            out = None
        if out is not None and not np.isnan(out).any():
            return out
        tok = _decode(tok)
    num = pd.to_numeric(pd.Series(np.asarray(tok, dtype=object)), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(np.isnan(num))
    if len(bad):
        i = int(bad[0])
        raise _fail_line(where, int(linenos[i]), f"{what} {str(tok[i])!r} is not a number")
    if integer_ok and np.all(np.mod(num, 1) == 0) and np.all(np.abs(num) < 2**53):
        return num.astype(np.int64)
    return num


def _fixed_width_tokens(buf: bytes, where: str, n_fields: int, sep_desc: str,
                        sep_byte: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split a headerless file with exactly ``n_fields`` whitespace-free fields per line.

    Returns (tokens reshaped to [rows, n_fields], 1-based line number of each row). Blank lines
    are skipped. ``sep_byte`` (after normalisation) gives the separator-based count in messages.
    """
    lines = _Lines.of(buf)
    counts = lines.token_counts()
    nonblank = counts > 0
    if sep_byte is not None:
        fields = lines.byte_counts(sep_byte) + 1
        bad = np.flatnonzero(nonblank & ((fields != n_fields) | (counts != n_fields)))
    else:
        fields = counts
        bad = np.flatnonzero(nonblank & (counts != n_fields))
    if len(bad):
        i = int(bad[0])
        if fields[i] != n_fields:
            raise _fail_line(where, i + 1, f"expected {n_fields} fields separated by {sep_desc}, "
                                           f"got {int(fields[i])}: {lines.line(i)!r}")
        raise _fail_line(where, i + 1, f"empty or malformed field (expected {n_fields} non-empty "
                                       f"fields separated by {sep_desc}): {lines.line(i)!r}")
    linenos = np.flatnonzero(nonblank) + 1
    if len(linenos) == 0:
        raise DataError(f"{where}: no interactions (file is empty)")
    tok = np.array(buf.split())
    return tok.reshape(-1, n_fields), linenos


def _fast_numeric(buf: bytes, n_fields: int, int_cols: tuple[int, ...]) -> list | None:
    """pandas C-engine fast path for all-numeric whitespace-separated files.

    Returns the columns, or None whenever anything looks off (wrong field count, a missing or
    non-numeric value, non-integer ids); the caller then runs the validating tokenizer, which
    reports the exact line.
    """
    try:
        df = pd.read_csv(io.BytesIO(buf), sep=r"\s+", header=None, engine="c",
                         skip_blank_lines=True)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    if df.shape[1] != n_fields or len(df) == 0:
        return None
    cols = []
    for j in range(n_fields):
        c = df[j]
        if j in int_cols:
            if not pd.api.types.is_integer_dtype(c):
                return None
            cols.append(c.to_numpy(dtype=np.int64))
        else:
            if not pd.api.types.is_numeric_dtype(c) or c.isna().any():
                return None
            cols.append(c.to_numpy())
    return cols


# ----------------------------------------------------------------------------- MovieLens
def _parse_ml_dat(buf: bytes, where: str) -> Interactions:
    return _parse_rating_rows(buf.replace(b"::", b"\t"), where, "'::'")


def _parse_rating_rows(buf: bytes, where: str, sep_name: str) -> Interactions:
    """Tab-separated ``user item rating timestamp`` rows (``sep_name`` names the separator in errors)."""
    fast = _fast_numeric(buf, 4, (0, 1, 3)) if b" " not in buf else None
    if fast is not None:
        return Interactions(user=fast[0], item=fast[1], rating=fast[2].astype(np.float64),
                            timestamp=fast[3], source=where)
    tok, ln = _fixed_width_tokens(buf, where, 4, sep_name, sep_byte=9)
    return Interactions(
        user=_ids(tok[:, 0]), item=_ids(tok[:, 1]),
        rating=_numbers(tok[:, 2], where, ln, "rating", integer_ok=False),
        timestamp=_numbers(tok[:, 3], where, ln, "timestamp"), source=where)


def read_movielens_dat(path: str | Path) -> Interactions:
    """GroupLens ML-1M / ML-10M ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``).

    Given a ``.zip``, reads its ``*/ratings.dat`` member in memory without extracting.
    Bytes are treated as latin-1 safe (only ASCII digits are meaningful).
    """
    path = Path(path)
    if path.suffix.lower() == ".zip":
        return read_movielens_zip(path)
    return _parse_ml_dat(read_bytes(path), str(path))


def read_movielens_zip(path: str | Path, member: str = "ml-1m/ratings.dat") -> Interactions:
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if member not in names:
                cands = [n for n in names if n.rsplit("/", 1)[-1] == "ratings.dat"]
                if not cands:
                    raise DataError(f"{path}: no ratings.dat inside the zip (members: "
                                    f"{', '.join(names[:10])}{' ...' if len(names) > 10 else ''})")
                member = cands[0]
            data = zf.read(member)
    except (zipfile.BadZipFile, OSError, zlib.error, EOFError) as e:
        raise DataError(f"{path}: cannot read zip archive: {e}") from None
    return _parse_ml_dat(_normalise(data), f"{path}:{member}")


def read_movielens_udata(path: str | Path) -> Interactions:
    """GroupLens ML-100k ``u.data``: ``user\\titem\\trating\\ttimestamp`` per line."""
    return _parse_rating_rows(read_bytes(path), str(path), "tabs")


# ----------------------------------------------------------------------------- text sequences
def read_pair_text(path: str | Path) -> Interactions:
    """``user item`` per line (whitespace separated), chronological within each user."""
    where = str(path)
    buf = read_bytes(path)
    fast = _fast_numeric(buf, 2, (0, 1))
    if fast is not None:
        return Interactions(user=fast[0], item=fast[1], source=where)
    tok, _ = _fixed_width_tokens(buf, where, 2, "whitespace")
    return Interactions(user=_ids(tok[:, 0]), item=_ids(tok[:, 1]), source=where)


def read_sequence_text(path: str | Path) -> Interactions:
    """``user item1 item2 ...`` per line (whitespace separated), items chronological.

    A user appearing on several lines gets the lines' items concatenated in file order.
    """
    where = str(path)
    buf = read_bytes(path)
    lines = _Lines.of(buf)
    counts = lines.token_counts()
    bad = np.flatnonzero(counts == 1)
    if len(bad):
        i = int(bad[0])
        raise _fail_line(where, i + 1, f"expected a user id followed by at least one item, got "
                                       f"1 field: {lines.line(i)!r}")
    counts = counts[counts > 0]
    if len(counts) == 0:
        raise DataError(f"{where}: no interactions (file is empty)")
    tok = np.array(buf.split())
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    is_item = np.ones(len(tok), dtype=bool)
    is_item[first] = False
    users = _ids(tok[first])
    return Interactions(user=np.repeat(users, counts - 1), item=_ids(tok[is_item]), source=where)


def read_xlong(path: str | Path) -> Interactions:
    """XLong ``train_corpus_total_dual.txt`` / ``test_corpus_total_dual.txt``.

    No official specification is published. Public loaders of these files (BERT4Rec-style
    ``XLongDataset`` code and SASRec ports) read them headerless, tab separated, with field 2
    (0-based) a comma-separated chronological item history and field 3 the next (target)
    item(s), which they append to the history. We follow that layout for lines with >= 4
    fields: sequence = field 2 + field 3 (comma lists). Fields 0, 1 and >= 4 are ignored and,
    as in those loaders, every line is its own user (user id = 1-based line number), because the
    meaning of fields 0/1 is not documented. For lines with exactly 2 fields we read
    ``user_id \\t item,item,...``. Blank lines are skipped; other layouts raise DataError.
    """
    where = str(path)
    users: list[bytes] = []
    seqs: list[bytes] = []
    for i, line in enumerate(read_bytes(path).split(b"\n"), start=1):  # per user, not per event
        if not line.strip():
            continue
        f = line.split(b"\t")
        if len(f) >= 4:
            seq = f[2].strip().strip(b",")
            tgt = f[3].strip().strip(b",")
            s = b",".join(x for x in (seq, tgt) if x)
            u = str(i).encode()
        elif len(f) == 2:
            u, s = f[0].strip(), f[1].strip().strip(b",")
        else:
            raise _fail_line(where, i, f"expected 'user<TAB>item,item,...' or >= 4 tab-separated "
                                       f"fields (XLong corpus), got {len(f)}")
        if not s or not u:
            raise _fail_line(where, i, "empty user id or item list")
        users.append(u)
        seqs.append(s)
    if not seqs:
        raise DataError(f"{where}: no interactions (file is empty)")
    counts = np.array([s.count(b",") + 1 for s in seqs], dtype=np.int64)
    items = np.char.strip(np.array(b",".join(seqs).split(b",")))
    empty = np.char.str_len(items) == 0
    if empty.any():
        j = int(np.flatnonzero(empty)[0])
        k = int(np.repeat(np.arange(len(seqs)), counts)[j])
        raise DataError(f"{where}: empty item id in the item list of sequence {k + 1} "
                        f"(user {users[k].decode('utf-8', 'replace')!r})")
    return Interactions(user=np.repeat(_ids(np.array(users)), counts), item=_ids(items),
                        source=where)


# ----------------------------------------------------------------------------- RecBole .inter
def read_recbole_inter(path: str | Path, user_col: str = "user_id", item_col: str = "item_id",
                       time_col: str | None = "timestamp", rating_col: str | None = None
                       ) -> Interactions:
    """RecBole atomic ``.inter`` file: tab separated, first line ``name:type`` per column.

    ``time_col`` and the rating column (``rating_col`` or ``rating`` when present) are used if
    the header has them; ``user_col``/``item_col`` are required.
    """
    where = str(path)
    buf = read_bytes(path)
    lines = _Lines.of(buf)
    nonblank = lines.ends > lines.starts
    if not nonblank.any():
        raise DataError(f"{where}: no interactions (file is empty)")
    h = int(np.flatnonzero(nonblank)[0])
    header = bytes(lines.arr[lines.starts[h]: lines.ends[h]]).decode("utf-8", "replace").split("\t")
    names = [c.split(":", 1)[0].strip() for c in header]
    tabs = lines.byte_counts(9) + 1
    bad = np.flatnonzero(nonblank & (tabs != len(header)))
    if len(bad):
        i = int(bad[0])
        raise _fail_line(where, i + 1, f"expected {len(header)} tab-separated fields (as in the "
                                       f"header), got {int(tabs[i])}")
    for c in (user_col, item_col):
        if c not in names:
            raise DataError(f"{where}, line {h + 1}: column {c!r} not in header; available "
                            f"columns: {', '.join(names)}")
    if rating_col is None and "rating" in names:
        rating_col = "rating"
    if rating_col is not None and rating_col not in names:
        raise DataError(f"{where}, line {h + 1}: rating column {rating_col!r} not in header; "
                        f"available columns: {', '.join(names)}")
    if time_col is not None and time_col not in names:
        time_col = None
    rows = np.flatnonzero(nonblank)[1:]
    if len(rows) == 0:
        raise DataError(f"{where}: no interactions (header only)")
    linenos = rows + 1
    use = [c for c in (user_col, item_col, time_col, rating_col) if c is not None]
    try:
        df = pd.read_csv(io.BytesIO(buf), sep="\t", header=None, skiprows=h + 1, names=names,
                         usecols=use, dtype=object, keep_default_na=False, quoting=csv.QUOTE_NONE,
                         engine="c", skip_blank_lines=True)
    except (ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{where}: cannot parse: {e}") from None
    return _from_columns(df, where, linenos, user_col, item_col, time_col, rating_col)


def _from_columns(df: pd.DataFrame, where: str, linenos: np.ndarray, user_col: str,
                  item_col: str, time_col: str | None, rating_col: str | None) -> Interactions:
    if len(df) == 0:
        raise DataError(f"{where}: no interactions")
    if len(df) != len(linenos):  # quoted newlines etc.: fall back to row numbers
        linenos = np.arange(len(df)) + 2
    cols = {}
    for c in (user_col, item_col):
        s = df[c]
        empty = (s.isna() | (s.astype(str).str.strip() == "")).to_numpy()
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise _fail_line(where, int(linenos[i]), f"empty value in column {c!r}")
        v = s.astype(str).str.strip().to_numpy(dtype=object)
        cols[c] = _ids(np.asarray(v, dtype=str))
    ts = None
    if time_col is not None:
        ts = _time_column(df[time_col], where, linenos, time_col)
    rating = None
    if rating_col is not None:
        rating = _numbers(np.asarray(df[rating_col].astype(str).to_numpy(dtype=object), dtype=str),
                          where, linenos, f"rating ({rating_col})", integer_ok=False)
        rating = rating.astype(np.float64)
    return Interactions(user=cols[user_col], item=cols[item_col], timestamp=ts, rating=rating,
                        source=where)


def _time_column(s: pd.Series, where: str, linenos: np.ndarray, name: str) -> np.ndarray:
    if pd.api.types.is_datetime64_any_dtype(s):
        if s.isna().any():
            i = int(np.flatnonzero(s.isna().to_numpy())[0])
            raise _fail_line(where, int(linenos[i]), f"missing timestamp in column {name!r}")
        return (s.astype("datetime64[ns]").astype(np.int64) // 10**9).to_numpy()
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isnan(v).any():
            i = int(np.flatnonzero(np.isnan(v))[0])
            raise _fail_line(where, int(linenos[i]), f"missing timestamp in column {name!r}")
        return v.astype(np.int64) if np.all(np.mod(v, 1) == 0) else v
    txt = s.astype(str).str.strip()
    num = pd.to_numeric(txt, errors="coerce")
    if not num.isna().any():
        v = num.to_numpy(dtype=np.float64)
        return v.astype(np.int64) if np.all(np.mod(v, 1) == 0) else v
    if num.notna().any():  # numeric column with a bad entry
        i = int(np.flatnonzero(num.isna().to_numpy())[0])
        raise _fail_line(where, int(linenos[i]), f"timestamp {txt.iloc[i]!r} in column {name!r} "
                                                 f"is not a number")
    dt = pd.to_datetime(txt, errors="coerce", utc=True, format="mixed")
    bad = dt.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _fail_line(where, int(linenos[i]), f"timestamp {txt.iloc[i]!r} in column {name!r} "
                                                 f"is neither a number nor a date")
    return (dt.astype("datetime64[ns, UTC]").astype(np.int64) // 10**9).to_numpy()


# ----------------------------------------------------------------------------- CSV / TSV / Parquet
def infer_sep(path: str | Path) -> str:
    name = Path(path).name.lower()
    for ext in (".gz", ".bz2", ".xz", ".zst"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    if name.endswith(".csv"):
        return ","
    if name.endswith((".tsv", ".tab")):
        return "\t"
    raise DataError(f"{path}: cannot infer the column separator from the file name; set "
                    f"data.sep (e.g. ',' or '\\t')")


def read_table(path: str | Path, user_col: str = "user_id", item_col: str = "item_id",
               time_col: str | None = "timestamp", rating_col: str | None = None,
               sep: str | None = None) -> Interactions:
    """CSV / TSV (optionally compressed) or Parquet with a header row naming the columns.

    ``sep`` defaults from the extension (``.csv`` -> ``,``; ``.tsv``/``.tab`` -> tab).
    Line numbers in messages assume one record per line (header = line 1).
    """
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise DataError(f"{where}: file not found")
    wanted = [c for c in (user_col, item_col, time_col, rating_col) if c is not None]
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
        except Exception as e:  # pyarrow raises its own error types
            raise DataError(f"{where}: cannot read parquet file: {e}") from None
        _check_columns(where, names, wanted, time_col, rating_col)
        try:
            df = pd.read_parquet(path, columns=wanted)
        except Exception as e:
            raise DataError(f"{where}: cannot read parquet file: {e}") from None
        if len(df) == 0:
            raise DataError(f"{where}: no interactions")
        linenos = np.arange(len(df)) + 1
        return _from_columns_typed(df, where, linenos, user_col, item_col, time_col, rating_col)
    sep = sep if sep is not None else infer_sep(path)
    kw: dict[str, Any] = dict(sep=sep, dtype=object, keep_default_na=False, encoding="utf-8-sig",
                              compression="infer", engine="c" if len(sep) == 1 else "python")
    try:
        head = pd.read_csv(path, nrows=0, **kw)
    except pd.errors.EmptyDataError:
        raise DataError(f"{where}: no interactions (file is empty)") from None
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise DataError(f"{where}: cannot parse header: {e}") from None
    names = [str(c).strip() for c in head.columns]
    _check_columns(where, names, wanted, time_col, rating_col)
    # Chunked: Python string objects exist for one chunk at a time, the result is numpy arrays.
    parts: list[Interactions] = []
    first_line = 2
    try:
        for df in pd.read_csv(path, chunksize=CSV_CHUNK_ROWS, **kw):  # all columns: extra fields caught
            df.columns = [str(c).strip() for c in df.columns]
            df = df[wanted]
            linenos = np.arange(len(df)) + first_line
            parts.append(_from_columns(df, where, linenos, user_col, item_col, time_col, rating_col))
            first_line += len(df)
    except pd.errors.ParserError as e:
        raise DataError(f"{where}: malformed CSV: {e}") from None
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise DataError(f"{where}: cannot parse: {e}") from None
    if not parts:
        raise DataError(f"{where}: no interactions")
    return _concat(parts, where)


CSV_CHUNK_ROWS = 2_000_000


def _concat(parts: list[Interactions], where: str) -> Interactions:
    if len(parts) == 1:
        return parts[0]

    def ids(arrs):
        if all(a.dtype.kind == "i" for a in arrs):
            return np.concatenate(arrs)
        return np.concatenate([a.astype(str) for a in arrs])  # any string chunk: all strings

    def opt(arrs):
        return None if arrs[0] is None else np.concatenate(arrs)

    return Interactions(user=ids([p.user for p in parts]), item=ids([p.item for p in parts]),
                        timestamp=opt([p.timestamp for p in parts]), rating=opt([p.rating for p in parts]),
                        source=where)


def _check_columns(where: str, names: list[str], wanted: list[str], time_col: str | None,
                   rating_col: str | None) -> None:
    for c in wanted:
        if c not in names:
            hint = ""
            if c == time_col:
                hint = " (set data.time_col: null to keep file order instead)"
            raise DataError(f"{where}: column {c!r} not found{hint}; available columns: "
                            f"{', '.join(map(str, names))}")


def _from_columns_typed(df: pd.DataFrame, where: str, linenos: np.ndarray, user_col: str,
                        item_col: str, time_col: str | None, rating_col: str | None
                        ) -> Interactions:
    """Parquet columns keep their types: convert ids via str unless already integer."""
    out = {}
    for c in (user_col, item_col):
        s = df[c]
        if s.isna().any():
            i = int(np.flatnonzero(s.isna().to_numpy())[0])
            raise DataError(f"{where}, row {i + 1}: missing value in column {c!r}")
        if pd.api.types.is_integer_dtype(s):
            out[c] = s.to_numpy(dtype=np.int64)
        else:
            out[c] = _ids(np.asarray(s.astype(str).to_numpy(dtype=object), dtype=str))
    ts = _time_column(df[time_col], where, linenos, time_col) if time_col else None
    rating = None
    if rating_col:
        rating = pd.to_numeric(df[rating_col], errors="coerce").to_numpy(dtype=np.float64,
                                                                          na_value=np.nan)
        if np.isnan(rating).any():
            i = int(np.flatnonzero(np.isnan(rating))[0])
            raise DataError(f"{where}, row {i + 1}: rating is missing or not a number")
    return Interactions(user=out[user_col], item=out[item_col], timestamp=ts, rating=rating,
                        source=where)


# ----------------------------------------------------------------------------- dispatch
def infer_format(path: str | Path) -> str:
    """Best guess of the format from the file name (and, for ``.txt``, its first lines)."""
    p = Path(path)
    name = p.name.lower()
    base = name[:-3] if name.endswith(".gz") else name
    if base.endswith(".zip") or base.endswith(".dat"):
        return "movielens-dat"
    if base == "u.data":
        return "movielens-udata"
    if base.endswith(".inter"):
        return "recbole-inter"
    if "_corpus_total_dual" in base:
        return "xlong"
    if base.endswith((".csv", ".tsv", ".tab", ".parquet", ".pq")):
        return "table"
    if base.endswith(".txt"):
        return _sniff_text(p)
    raise DataError(f"{path}: cannot infer the data format from the file name; set data.format "
                    f"to one of {', '.join(FORMATS)}")


def _sniff_text(path: Path) -> str:
    """pair-text if the first 1000 lines all hold 2 tokens and a user repeats, else seq-text."""
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            head = [next(f, b"") for _ in range(1000)]
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    toks = [h.split() for h in head if h.strip()]
    if toks and all(len(t) == 2 for t in toks) and len({t[0] for t in toks}) < len(toks):
        return "pair-text"
    return "seq-text"


def read_interactions(path: str | Path, fmt: str, *, user_col: str = "user_id",
                      item_col: str = "item_id", time_col: str | None = "timestamp",
                      rating_col: str | None = None, sep: str | None = None) -> Interactions:
    """Read ``path`` with the reader for ``fmt`` (see :data:`FORMATS`)."""
    fmt = canonical_format(fmt)
    if fmt == "movielens-dat":
        return read_movielens_dat(path)
    if fmt == "movielens-udata":
        return read_movielens_udata(path)
    if fmt == "recbole-inter":
        return read_recbole_inter(path, user_col, item_col, time_col, rating_col)
    if fmt == "seq-text":
        return read_sequence_text(path)
    if fmt == "pair-text":
        return read_pair_text(path)
    if fmt == "table":
        return read_table(path, user_col, item_col, time_col, rating_col, sep)
    if fmt == "xlong":
        return read_xlong(path)
    raise DataError(f"format {fmt!r} has no file reader")
