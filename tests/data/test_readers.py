from __future__ import annotations

import io
import zipfile

import numpy as np
import pandas as pd
import pytest

from elasticrec.data import DataError, read_interactions
from elasticrec.data.readers import (infer_format, read_movielens_dat, read_movielens_udata,
                                     read_pair_text, read_recbole_inter, read_sequence_text,
                                     read_table, read_xlong)

ML = "1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n"


def test_ml_dat_plain(write):
    r = read_movielens_dat(write("ratings.dat", ML))
    assert r.user.tolist() == [1, 1, 2]
    assert r.item.tolist() == [10, 20, 10]
    assert r.rating.tolist() == [5.0, 3.0, 4.0]
    assert r.timestamp.tolist() == [978300760, 978302109, 978301968]


def test_ml_dat_latin1_crlf_bom_blank_lines(write):
    data = b"\xef\xbb\xbf" + ML.replace("\n", "\r\n").encode() + b"\r\n\r\n"
    r = read_movielens_dat(write("ratings.dat", data))
    assert len(r) == 3 and r.user.tolist() == [1, 1, 2]


def test_ml_dat_zip(tmp_path):
    p = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("ml-1m/ratings.dat", ML)
        z.writestr("ml-1m/movies.dat", "1::Toy Story (1995)::Animation\n")
    r = read_movielens_dat(p)
    assert r.item.tolist() == [10, 20, 10]
    assert not (tmp_path / "ml-1m").exists()  # read in memory, nothing extracted


def test_ml_zip_without_ratings(tmp_path):
    p = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("ml-1m/movies.dat", "x")
    with pytest.raises(DataError, match="no ratings.dat"):
        read_movielens_dat(p)


def test_ml_dat_wrong_field_count(write):
    p = write("ratings.dat", ML + "3::10::4\n")
    with pytest.raises(DataError) as e:
        read_movielens_dat(p)
    msg = str(e.value)
    assert "ratings.dat, line 4" in msg and "expected 4 fields separated by '::', got 3" in msg


def test_ml_dat_bad_number(write):
    p = write("ratings.dat", ML + "\n3::10::x::5\n")
    with pytest.raises(DataError, match=r"ratings\.dat, line 5: rating 'x' is not a number"):
        read_movielens_dat(p)


def test_ml_dat_empty_field(write):
    p = write("ratings.dat", "1::::5::3::\n")
    with pytest.raises(DataError, match=r"ratings\.dat, line 1"):
        read_movielens_dat(p)


@pytest.mark.parametrize("content", ["", "\n\n", "\ufeff", "\ufeff\r\n"])
def test_empty_files(write, content):
    for name, fn in [("ratings.dat", read_movielens_dat), ("u.data", read_movielens_udata),
                     ("s.txt", read_sequence_text), ("p.txt", read_pair_text)]:
        with pytest.raises(DataError, match="no interactions"):
            fn(write(name, content))


def test_udata(write):
    r = read_movielens_udata(write("u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n"))
    assert r.user.tolist() == [196, 186] and r.timestamp.dtype == np.int64
    with pytest.raises(DataError, match=r"u\.data, line 2: expected 4 fields"):
        read_movielens_udata(write("u.data", "196\t242\t3\t881250949\n186\t302\t3\n"))


INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "196\t242\t3\t881250949\n186\t302\t3.5\t891717742.0\n")


def test_recbole_inter(write):
    r = read_recbole_inter(write("x.inter", INTER))
    assert r.user.tolist() == [196, 186]
    assert r.rating.tolist() == [3.0, 3.5]
    assert r.timestamp.tolist() == [881250949, 891717742]


def test_recbole_inter_errors(write):
    with pytest.raises(DataError, match=r"x\.inter, line 4: expected 4 tab-separated"):
        read_recbole_inter(write("x.inter", INTER + "1\t2\t3\n"))
    with pytest.raises(DataError, match=r"x\.inter, line 4: rating .* is not a number"):
        read_recbole_inter(write("x.inter", INTER + "1\t2\tbad\t5\n"))
    with pytest.raises(DataError, match="available columns: user_id, item_id"):
        read_recbole_inter(write("x.inter", INTER), item_col="movie")
    with pytest.raises(DataError, match="no interactions"):
        read_recbole_inter(write("x.inter", INTER.splitlines()[0] + "\n"))


def test_recbole_inter_string_ids_no_time(write):
    r = read_recbole_inter(write("y.inter", "user_id:token\titem_id:token\nu1\tA\nu2\tB\n"))
    assert r.user.tolist() == ["u1", "u2"] and r.timestamp is None and r.rating is None


def test_sequence_text_plain_gz_crlf_bom(write):
    text = "1 1 2 3\n2 4 2\n"
    for name, content in [("a.txt", text), ("b.txt.gz", text),
                          ("c.txt", "\ufeff" + text.replace("\n", "\r\n"))]:
        r = read_sequence_text(write(name, content))
        assert r.user.tolist() == [1, 1, 1, 2, 2], name
        assert r.item.tolist() == [1, 2, 3, 4, 2], name
        assert r.timestamp is None


def test_sequence_text_string_ids_and_error(write):
    r = read_sequence_text(write("s.txt", "alice x y\n\nbob y\tz\n"))
    assert r.user.tolist() == ["alice", "alice", "bob", "bob"]
    assert r.item.tolist() == ["x", "y", "y", "z"]
    with pytest.raises(DataError, match=r"s2\.txt, line 3: expected a user id followed by"):
        read_sequence_text(write("s2.txt", "1 2 3\n2 3\n7\n"))


def test_corrupt_gz(write, tmp_path):
    p = tmp_path / "bad.txt.gz"
    p.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="bad.txt.gz"):
        read_sequence_text(p)


def test_pair_text(write):
    r = read_pair_text(write("p.txt.gz", "1 5\n1 6\n2 5\n"))
    assert r.user.tolist() == [1, 1, 2] and r.item.tolist() == [5, 6, 5]
    with pytest.raises(DataError, match=r"p2\.txt, line 2: expected 2 fields"):
        read_pair_text(write("p2.txt", "1 5\n1 6 7\n"))


def test_table_csv_tsv_parquet(write, tmp_path):
    csv = "user_id,item_id,timestamp,stars\nu1,i1,10,4\nu1,i2,5,2\nu2,i1,7,5\n"
    r = read_table(write("x.csv", csv), rating_col="stars")
    assert r.user.tolist() == ["u1", "u1", "u2"]
    assert r.timestamp.tolist() == [10, 5, 7] and r.rating.tolist() == [4, 2, 5]
    r = read_table(write("x.tsv", csv.replace(",", "\t")))
    assert r.item.tolist() == ["i1", "i2", "i1"] and r.rating is None
    r = read_table(write("x.dat", csv.replace(",", ";")), sep=";")
    assert len(r) == 3
    df = pd.DataFrame({"uid": [3, 3, 4], "iid": ["a", "b", "a"],
                       "ts": pd.to_datetime(["2020-01-02", "2020-01-01", "2020-01-03"])})
    p = tmp_path / "x.parquet"
    df.to_parquet(p)
    r = read_table(p, user_col="uid", item_col="iid", time_col="ts")
    assert r.user.tolist() == [3, 3, 4] and r.timestamp[0] > r.timestamp[1]


def test_table_errors(write):
    csv = "user_id,item_id,timestamp\nu1,i1,10\nu1,,5\n"
    with pytest.raises(DataError, match=r"x\.csv, line 3: empty value in column 'item_id'"):
        read_table(write("x.csv", csv))
    with pytest.raises(DataError, match=r"column 'movie' not found.*available columns: user_id, "
                                        r"item_id, timestamp"):
        read_table(write("y.csv", csv), item_col="movie")
    with pytest.raises(DataError, match="time_col: null"):
        read_table(write("z.csv", "user_id,item_id\n1,2\n"))
    with pytest.raises(DataError, match=r"w\.csv, line 3: timestamp 'soon'"):
        read_table(write("w.csv", "user_id,item_id,timestamp\n1,2,3\n1,3,soon\n"))
    with pytest.raises(DataError, match="set data.sep"):
        read_table(write("x.data", csv))
    with pytest.raises(DataError, match="no interactions"):
        read_table(write("e.csv", ""))
    with pytest.raises(DataError, match=r"x\.csv: malformed CSV.*line 3"):
        read_table(write("x.csv", "user_id,item_id\n1,2\n1,2,3,4\n"), time_col=None)


def test_xlong(write):
    # public layout: f0, f1 (ignored), f2 = history, f3 = target
    text = "u7\t1\t5,6,7\t8\nu9\t0\t6,5\t9\n"
    r = read_xlong(write("train_corpus_total_dual.txt", text))
    assert r.item.tolist() == [5, 6, 7, 8, 6, 5, 9]
    assert r.user.tolist() == [1, 1, 1, 1, 2, 2, 2]  # line numbers
    r = read_xlong(write("b_corpus_total_dual.txt", "a\t1,2,3\nb\t4\n"))
    assert r.user.tolist() == ["a", "a", "a", "b"]
    with pytest.raises(DataError, match=r"c_corpus_total_dual\.txt, line 2"):
        read_xlong(write("c_corpus_total_dual.txt", "a\t1,2\nb\t1\t2\n"))


def test_infer_format(write):
    assert infer_format(write("ratings.dat", ML)) == "movielens-dat"
    assert infer_format(write("x.inter", INTER)) == "recbole-inter"
    assert infer_format(write("s.txt", "1 2 3\n2 3 4\n")) == "seq-text"
    assert infer_format(write("p.txt", "1 2\n1 3\n2 4\n")) == "pair-text"
    assert infer_format(write("q.csv", "a,b\n")) == "table"
    with pytest.raises(DataError, match="set data.format"):
        infer_format(write("mystery.bin", b"\0"))


def test_read_interactions_dispatch_unknown(write):
    with pytest.raises(DataError, match="unknown data format"):
        read_interactions(write("a.txt", "1 2\n"), "nope")
    assert len(read_interactions(write("a.csv", "user_id,item_id,timestamp\n1,2,3\n"), "csv")) == 1


def test_table_bom_crlf_and_pair_string_ids(write):
    r = read_table(write("b.csv", "\ufeffuser_id,item_id,timestamp\r\nu1,i1,3\r\nu2,i2,4\r\n"))
    assert r.user.tolist() == ["u1", "u2"] and r.timestamp.tolist() == [3, 4]
    r = read_pair_text(write("p.txt", "\ufeffann x1\r\nann x2\r\n"))
    assert r.user.tolist() == ["ann", "ann"] and r.item.tolist() == ["x1", "x2"]
    r = read_recbole_inter(write("c.inter", "\ufeff" + INTER.replace("\n", "\r\n")))
    assert r.user.tolist() == [196, 186]
