"""Generic CSV / TSV / Parquet / JSONL mapped by a schema dict; RecBole's pre-split dump layout."""

from pathlib import Path

import pandas as pd
import pytest

from data_modules.errors import DataError
from data_modules.readers.generic import read_generic
from data_modules.tables import FieldKind

pytestmark = pytest.mark.unit

GEN = Path(__file__).parents[2] / "fixtures" / "readers" / "generic"
PRESPLIT = {
    "splits": {"train": "presplit/train.csv", "valid": "presplit/valid.csv", "test": "presplit/test.csv"}
}


def test_presplit_recbole_dump_layout():
    t = read_generic(PRESPLIT, base_dir=GEN)
    t.validate()
    inter = t.interactions
    assert inter["split"].tolist() == ["train", "train", "train", "valid", "test"]
    assert inter["user"].tolist() == ["196", "186", "22", "196", "186"]
    assert inter["rating"].dtype == "float64" and str(inter["timestamp"].dtype) == "int64"
    assert t.rows_read == {"train.csv": 3, "valid.csv": 1, "test.csv": 2}
    # the non-numeric rating is removed and counted, with its file and line
    assert t.quarantine.counts == {"non_numeric_rating": 1}
    (sample,) = t.quarantine.samples
    assert sample["file"].endswith("test.csv") and sample["row"] == 3 and sample["record"]["rating"] == "n/a"


def test_side_tables_and_graphs():
    schema = {
        **PRESPLIT,
        "items": {
            "path": "items.jsonl",
            "key": "id",
            "fields": {"name": "text", "genres": "multi_categorical", "year": "numeric"},
        },
        "users": {
            "path": "users.tsv",
            "key": "uid",
            "fields": {"gender": "categorical", "likes": "multi_categorical"},
        },
        "graphs": {
            "social": {"path": "trust.csv", "src": "a", "dst": "b"},
            "kg": {"path": "kg.tsv", "item": "movie", "relation": "rel", "entity": "tail"},
        },
    }
    t = read_generic(schema, base_dir=GEN)
    t.validate()
    assert t.item_fields == {
        "name": FieldKind.text,
        "genres": FieldKind.multi_categorical,
        "year": FieldKind.numeric,
    }
    items = t.items.set_index("item")
    assert items.index.tolist() == ["242", "302"]  # JSON ints become string ids
    assert items.loc["302", "genres"] == ["Crime", "Thriller"] and items.loc["302", "year"] == 1997.0
    users = t.users.set_index("user")
    assert users.loc["196", "likes"] == ["rock", "jazz"] and users.loc["186", "likes"] == []
    assert t.graphs["social"].to_numpy().tolist() == [["196", "186"]]
    assert t.graphs["kg"].to_numpy().tolist() == [["242", "directed_by", "m.jan"]]


def test_column_mapping_parquet_and_milliseconds(tmp_path):
    pd.DataFrame(
        {
            "u": [1, 2],
            "i": ["a", "b"],
            "stars": [4.0, 5.0],
            "ms": [1_600_000_000_123, 1_600_000_001_999],
            "extra": [0, 0],
        }
    ).to_parquet(tmp_path / "events.parquet")
    schema = {
        "interactions": {
            "path": "events.parquet",
            "timestamp_unit": "ms",
            "columns": {"user": "u", "item": "i", "rating": "stars", "timestamp": "ms"},
        },
        "graphs": {"item_item": {"path": "edges.csv"}},
    }
    (tmp_path / "edges.csv").write_text("src,dst\na,b\n")
    t = read_generic(schema, base_dir=tmp_path)
    t.validate()
    assert t.interactions.to_dict("list") == {
        "user": ["1", "2"],
        "item": ["a", "b"],
        "rating": [4.0, 5.0],
        "timestamp": [1_600_000_000, 1_600_000_001],
    }
    assert t.graphs["item_item"].to_numpy().tolist() == [["a", "b", "related"]]


def test_jsonl_interactions_with_missing_id(tmp_path):
    (tmp_path / "r.jsonl").write_text(
        '{"user": "u1", "item": "i1", "review": "ok"}\n{"user": null, "item": "i2"}\n'
    )
    t = read_generic({"interactions": {"path": "r.jsonl"}}, base_dir=tmp_path)
    assert t.interactions[["user", "item", "review"]].values.tolist() == [["u1", "i1", "ok"]]
    assert t.quarantine.counts == {"missing_id": 1} and t.quarantine.samples[0]["row"] == 2


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"ratings\.csv.*not found"):
        read_generic({"interactions": {"path": "ratings.csv"}}, base_dir=tmp_path)


def test_missing_mapped_column_names_file_column_and_columns_present():
    schema = {
        "interactions": {
            "path": "presplit/train.csv",
            "columns": {"user": "user", "item": "item", "rating": "stars"},
        }
    }
    with pytest.raises(
        DataError, match=r"train\.csv.*'stars'.*columns present: \['user', 'item', 'rating', 'timestamp'\]"
    ):
        read_generic(schema, base_dir=GEN)


def test_leading_space_headers_are_tolerated(tmp_path):
    (tmp_path / "mi.csv").write_text("asin, reviewerID, overall, unixReviewTime\nB1,A1,5.0,1400000000\n")
    cols = {"user": "reviewerID", "item": "asin", "rating": "overall", "timestamp": "unixReviewTime"}
    t = read_generic({"interactions": {"path": "mi.csv", "columns": cols}}, base_dir=tmp_path)
    assert t.interactions.iloc[0].tolist() == ["A1", "B1", 5.0, 1400000000]


def test_bad_schema_values_are_named(tmp_path):
    with pytest.raises(DataError, match="splits: unknown split"):
        read_generic({"splits": {"training": "x.csv"}}, base_dir=tmp_path)
    with pytest.raises(DataError, match="kind 'colour' for 'gender'"):
        read_generic(
            {**PRESPLIT, "users": {"path": "users.tsv", "key": "uid", "fields": {"gender": "colour"}}},
            base_dir=GEN,
        )
    with pytest.raises(DataError, match="unknown format"):
        read_generic({"interactions": {"path": "presplit/train.csv", "format": "xml"}}, base_dir=GEN)
