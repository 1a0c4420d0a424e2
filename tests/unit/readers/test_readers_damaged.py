"""Damaged real-format files: each ends in a clear error naming the file (and the line or byte offset) or in a
counted quarantine with file:line, rule and raw text — never a traceback, never a whole-file failure for one row."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import shutil
from pathlib import Path

import pandas as pd
import pytest

from data_modules.errors import DataError
from data_modules.prepare import pipeline
from data_modules.prepare.config import PrepareConfig
from data_modules.readers.amazon import read_amazon
from data_modules.readers.generic import read_generic
from data_modules.readers.movielens import read_movielens
from data_modules.readers.recbole import read_recbole

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CSV = "user,item,rating,timestamp\n1,a,4,880000000\n2,b,5,880000001\n3,c,3,880000002\n"


def generic(tmp_path: Path, name: str, **spec):
    return read_generic({"interactions": {"path": name, **spec}}, base_dir=tmp_path)


def samples(t, rule: str) -> list[dict]:
    return [s for s in t.quarantine.samples if s["rule"] == rule]


# -- compression by content ---------------------------------------------------------------------------------
def test_gz_name_with_plain_text_inside_reads(tmp_path):
    (tmp_path / "ratings.csv.gz").write_text(CSV)
    t = generic(tmp_path, "ratings.csv.gz")
    assert t.interactions["user"].tolist() == ["1", "2", "3"] and not t.quarantine.counts


@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
def test_compressed_content_under_a_plain_name_reads(tmp_path, compress):
    (tmp_path / "ratings.csv").write_bytes(compress(CSV.encode()))
    assert generic(tmp_path, "ratings.csv").interactions["item"].tolist() == ["a", "b", "c"]


def test_truncated_gzip_names_the_file_and_offset(tmp_path):
    data = gzip.compress((CSV + "".join(f"{u},x{u},4,880000000\n" for u in range(5000))).encode())
    (tmp_path / "ratings.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"ratings\.csv\.gz: gzip data truncated or corrupt after decompressed byte [1-9]\d* \(line [1-9]\d*\)"):
        generic(tmp_path, "ratings.csv.gz")


def test_corrupt_gzip_names_the_file(tmp_path):
    data = bytearray(gzip.compress(CSV.encode() * 50))
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "ratings.csv.gz").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"ratings\.csv\.gz: gzip data truncated or corrupt"):
        generic(tmp_path, "ratings.csv.gz")


def test_truncated_gzip_amazon_reviews_names_the_file_and_line(tmp_path):
    lines = (FIXTURES / "readers" / "amazon" / "2018" / "Gift_Cards_5.json").read_bytes() * 200
    data = gzip.compress(lines)
    (tmp_path / "Gift_Cards_5.json.gz").write_bytes(data[: len(data) - 40])
    with pytest.raises(DataError, match=r"Gift_Cards_5\.json\.gz: gzip data truncated or corrupt after line \d+"):
        read_amazon(tmp_path / "Gift_Cards_5.json.gz")


def test_amazon_plain_text_named_gz_reads(tmp_path):
    shutil.copy(FIXTURES / "readers" / "amazon" / "2018" / "Gift_Cards_5.json", tmp_path / "Gift_Cards_5.json.gz")
    assert len(read_amazon(tmp_path / "Gift_Cards_5.json.gz").interactions) == 4


# -- undecodable bytes ----------------------------------------------------------------------------------------
def test_non_utf8_row_is_quarantined_with_line_and_byte(tmp_path):
    (tmp_path / "ratings.csv").write_bytes(CSV.encode() + b"4,caf\xe9,4,880000003\n5,e,2,880000004\n")
    t = generic(tmp_path, "ratings.csv")
    assert t.interactions["user"].tolist() == ["1", "2", "3", "5"]
    assert t.quarantine.counts == {"invalid_utf8": 1}
    (s,) = samples(t, "invalid_utf8")
    assert s["file"] == str(tmp_path / "ratings.csv") and s["row"] == 5 and "byte 5" in s["reason"]
    assert s["record"] == "4,caf\\xe9,4,880000003"  # the raw bytes, shown escaped
    assert t.rows_read == {"ratings.csv": 5}


# -- empty and header-only files ------------------------------------------------------------------------------
@pytest.mark.parametrize("content, message", [("", "file is empty"), ("\n\n", "file is empty"),
                                               ("user,item,rating\n", "has a header line but no data rows")])
def test_empty_and_header_only_generic_files_name_the_file(tmp_path, content, message):
    (tmp_path / "ratings.csv").write_text(content)
    with pytest.raises(DataError, match=rf"ratings\.csv: {message}"):
        generic(tmp_path, "ratings.csv")


@pytest.mark.parametrize("name", ["ratings.jsonl", "ratings.parquet"])
def test_empty_jsonl_and_parquet_name_the_file(tmp_path, name):
    if name.endswith("parquet"):
        pd.DataFrame({"user": pd.Series([], dtype=str), "item": pd.Series([], dtype=str)}).to_parquet(tmp_path / name)
    else:
        (tmp_path / name).write_text("")
    with pytest.raises(DataError, match=rf"{name}: (file is empty|parquet file has no rows)"):
        generic(tmp_path, name)


def test_header_only_interactions_file_names_the_file_through_prepare(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "tiny", src)
    (src / "tiny.inter").write_text((src / "tiny.inter").read_text().splitlines()[0] + "\n")
    cfg = PrepareConfig.from_dict({"source": {"format": "recbole", "path": str(src), "name": "tiny"},
                                   "output": {"dir": str(tmp_path / "out")}})
    with pytest.raises(DataError, match=r"tiny\.inter: has a header line but no data rows"):
        pipeline.prepare(cfg)


def test_empty_amazon_reviews_file_names_the_file(tmp_path):
    (tmp_path / "Gift_Cards_5.json").write_text("\n")
    with pytest.raises(DataError, match=r"Gift_Cards_5\.json: file is empty"):
        read_amazon(tmp_path / "Gift_Cards_5.json")


def test_json_array_instead_of_lines_is_named(tmp_path):
    (tmp_path / "ratings.json").write_text(json.dumps([{"user": 1, "item": 2}]))
    with pytest.raises(DataError, match=r"ratings\.json: holds a JSON array, not JSON lines"):
        generic(tmp_path, "ratings.json")


def test_corrupt_parquet_names_the_file(tmp_path):
    (tmp_path / "ratings.parquet").write_bytes(b"PAR1" + b"\x00" * 64)
    with pytest.raises(DataError, match=r"ratings\.parquet: cannot read as parquet"):
        generic(tmp_path, "ratings.parquet")


# -- one malformed row is quarantined, not a whole-file failure ----------------------------------------------
def test_rows_with_wrong_field_counts_are_quarantined_with_line_and_text(tmp_path):
    (tmp_path / "ratings.csv").write_text(CSV + "4,d,4,880000003,extra\n5,e\n6,f,1,880000005\n")
    t = generic(tmp_path, "ratings.csv")
    assert t.interactions["user"].tolist() == ["1", "2", "3", "6"]
    assert t.quarantine.counts == {"malformed_row": 2}
    got = [(s["row"], s["record"], s["reason"].split(" (")[0]) for s in samples(t, "malformed_row")]
    assert got == [(5, "4,d,4,880000003,extra", "5 fields, expected 4"), (6, "5,e", "2 fields, expected 4")]
    assert t.rows_read == {"ratings.csv": 6}


def test_broken_quoting_quarantines_one_line_and_reads_the_rest(tmp_path):
    rows = 'user,item,rating,timestamp,review\n1,a,4,880000000,"fine, thanks"\n2,b,5,880000001,"never closed\n' \
           '3,c,3,880000002,ok\n4,d,2,880000003,"closed"then text\n5,e,1,880000004,"two\nlines"\n6,f,4,880000005,x\n'
    (tmp_path / "ratings.csv").write_text(rows)
    t = generic(tmp_path, "ratings.csv")
    inter = t.interactions
    assert inter["user"].tolist() == ["1", "3", "5", "6"]
    assert inter["review"].tolist() == ["fine, thanks", "ok", "two\nlines", "x"]  # a quoted field may span lines
    assert t.quarantine.counts == {"broken_quoting": 2}
    assert [(s["row"], s["record"]) for s in samples(t, "broken_quoting")] == [
        (3, '2,b,5,880000001,"never closed'), (5, '4,d,2,880000003,"closed"then text')]


def test_bad_types_keep_their_line_numbers_after_a_quarantined_row(tmp_path):
    (tmp_path / "ratings.csv").write_text(CSV + "4,d\n5,e,n/a,880000004\n6,f,4,soon\n")
    t = generic(tmp_path, "ratings.csv")
    rows = {s["rule"]: s["row"] for s in t.quarantine.samples}
    assert rows == {"malformed_row": 5, "non_numeric_rating": 6, "bad_timestamp": 7}


def test_crlf_and_byte_order_mark(tmp_path):
    (tmp_path / "ratings.csv").write_bytes(b"\xef\xbb\xbf" + CSV.replace("\n", "\r\n").encode())
    t = generic(tmp_path, "ratings.csv")
    assert t.interactions["user"].tolist() == ["1", "2", "3"] and t.interactions["timestamp"].tolist()[0] == 880000000


def test_bad_jsonl_line_is_quarantined(tmp_path):
    lines = ['{"user": 1, "item": "a"}', '{"user": 2, "item": ', "[1, 2]", '{"user": 3, "item": "c"}']
    (tmp_path / "ratings.jsonl").write_text("\n".join(lines) + "\n")
    t = generic(tmp_path, "ratings.jsonl")
    assert t.interactions["user"].tolist() == ["1", "3"]
    assert [(s["rule"], s["row"]) for s in t.quarantine.samples] == [("bad_json", 2), ("bad_json", 3)]


def test_recbole_atomic_malformed_row_is_counted_in_the_manifest(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "tiny", src)
    lines = (src / "tiny.inter").read_text().splitlines()
    lines.insert(5, "1\t2")  # one row of ~200 with too few fields: under max_bad_fraction
    (src / "tiny.inter").write_text("\n".join(lines) + "\n")
    t = read_recbole(src, "tiny")
    (s,) = samples(t, "malformed_row")
    assert s["file"].endswith("tiny.inter") and s["row"] == 6 and s["record"] == "1\t2"
    cfg = PrepareConfig.from_dict({"source": {"format": "recbole", "path": str(src), "name": "tiny"},
                                   "output": {"dir": str(tmp_path / "out")}})
    assert pipeline.prepare(cfg).manifest["quarantine"]["malformed_row"] == 1


def test_movielens_latest_csv_row_with_extra_field_is_quarantined(tmp_path):
    src = tmp_path / "ml"
    shutil.copytree(FIXTURES / "readers" / "movielens" / "ml-latest-small", src)
    with open(src / "ratings.csv", "a") as f:
        f.write("9,1,4.0,964982703,oops\n")
    t = read_movielens(src)
    assert t.quarantine.counts["malformed_row"] == 1
    assert samples(t, "malformed_row")[0]["record"] == "9,1,4.0,964982703,oops"


def test_non_numeric_attribute_is_counted_and_its_row_kept(tmp_path):
    (tmp_path / "ratings.csv").write_text(CSV)
    (tmp_path / "users.csv").write_text("user,age\n1,31\n2,old\n3,\n")
    t = read_generic({"interactions": {"path": "ratings.csv"},
                      "users": {"path": "users.csv", "fields": {"age": "numeric"}}}, base_dir=tmp_path)
    assert t.users["user"].tolist() == ["1", "2", "3"] and t.users["age"].isna().tolist() == [False, True, True]
    (s,) = samples(t, "non_numeric_field")
    assert s["file"].endswith("users.csv") and s["row"] == 3 and s["record"] == {"user": "2", "age": "old"}
