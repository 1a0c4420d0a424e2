"""Hugging Face `datasets` as input (data_modules/readers/hf_datasets.py), offline: a DatasetDict built here with
`datasets` itself from the shared Amazon 2018 Gift Cards files (reviews + metadata), saved with save_to_disk and
read back through the generic reader's schema; the Hub path is a clear error when offline."""

from __future__ import annotations

import gzip
import html
import json

import numpy as np
import pytest

from data_modules.errors import DataError
from data_modules.readers.assets import shared_data_dir
from data_modules.readers.hf_datasets import read_hf_dataset

pytestmark = pytest.mark.unit
datasets = pytest.importorskip("datasets")

SHARED = shared_data_dir()
GIFT = SHARED / "amazon2018-gift-cards" if SHARED else None
needs_gift = pytest.mark.skipif(GIFT is None or not GIFT.is_dir(),
                                reason="../shared/data/amazon2018-gift-cards absent (set FUSIONREC_SHARED_DATA)")
SCHEMA = {
    "interactions": {"split": "reviews", "columns": {"user": "reviewerID", "item": "asin", "rating": "overall",
                                                     "timestamp": "unixReviewTime", "review": "reviewText"}},
    "items": {"split": "meta", "key": "asin",
              "fields": {"title": "text", "description": "text", "category": "multi_categorical", "brand": "categorical"}},
}  # fmt: skip


@pytest.fixture(scope="module")
def gift_cards(tmp_path_factory):
    """The shared files loaded by `datasets`' own JSON builder, saved as one DatasetDict (reviews, meta)."""
    if GIFT is None or not GIFT.is_dir():
        pytest.skip("../shared/data/amazon2018-gift-cards absent (set FUSIONREC_SHARED_DATA)")
    root = tmp_path_factory.mktemp("hf")
    cache = str(root / "cache")  # never the user's ~/.cache/huggingface
    reviews = datasets.load_dataset("json", data_files=str(GIFT / "Gift_Cards_5.json.gz"), split="train", cache_dir=cache)
    meta = datasets.load_dataset("json", data_files=str(GIFT / "meta_Gift_Cards.json.gz"), split="train", cache_dir=cache)
    out = root / "gift_cards"
    datasets.DatasetDict({"reviews": reviews, "meta": meta}).save_to_disk(str(out))
    return out


def _raw(name: str) -> list[dict]:
    with gzip.open(GIFT / name, "rt") as f:
        return [json.loads(line) for line in f]


@needs_gift
def test_saved_dataset_reads_like_the_raw_files(gift_cards):
    t = read_hf_dataset(gift_cards, SCHEMA)
    t.validate()
    raw = _raw("Gift_Cards_5.json.gz")
    inter = t.interactions
    assert len(inter) == len(raw) == 2972 and not t.quarantine.counts
    assert inter["user"].tolist() == [r["reviewerID"] for r in raw]
    assert inter["item"].tolist() == [r["asin"] for r in raw]
    assert inter["rating"].tolist() == [r["overall"] for r in raw]
    assert inter["timestamp"].tolist() == [r["unixReviewTime"] for r in raw]
    assert inter["review"].tolist() == [r.get("reviewText") or "" for r in raw]
    assert t.rows_read["reviews"] == 2972 and t.files["items"].endswith("gift_cards/meta")
    # the same interactions as the Amazon reader of the raw files (which also prefixes the review summary)
    from data_modules.readers.amazon import read_amazon

    amz = read_amazon(GIFT / "Gift_Cards_5.json.gz", meta=GIFT / "meta_Gift_Cards.json.gz")
    cols = ["user", "item", "rating", "timestamp"]
    assert inter[cols].equals(amz.interactions[cols])
    # items: every metadata row (the pipeline reports the unreviewed ones as unused); list text joined
    meta = {m["asin"]: m for m in _raw("meta_Gift_Cards.json.gz")}
    items = t.items.drop_duplicates("item").set_index("item")
    assert set(items.index) == set(meta)
    some = next(a for a, m in meta.items() if len(m.get("description") or []) > 1)
    assert items.loc[some, "description"] == " ".join(meta[some]["description"])
    assert list(items.loc[some, "category"]) == [str(c) for c in meta[some]["category"]]
    reviewed = amz.items.set_index("item")
    # the Amazon reader also unescapes HTML entities (&amp;) and strips: the generic mapping keeps text as stored
    assert (items.loc[reviewed.index, "title"].map(lambda s: html.unescape(s).strip()) == reviewed["title"]).all()


@needs_gift
def test_prepare_runs_on_a_saved_dataset(gift_cards, tmp_path):
    from data_modules.manifest import load_manifest
    from data_modules.prepare.config import PrepareConfig
    from data_modules.prepare.pipeline import prepare

    cfg = PrepareConfig.from_dict({
        "source": {"format": "hf_datasets", "path": str(gift_cards), "options": SCHEMA},
        "clean": {"rating_range": [1, 5], "duplicate_rule": "last", "max_bad_fraction": 0.01},
        "filter": {"min_user_interactions": 2, "min_item_interactions": 1},
        "split": {"protocol": "leave_one_out", "seed": 2020},
        "output": {"dir": str(tmp_path / "out"), "shard_rows": 50000, "block_rows": 1024},
    })  # fmt: skip
    res = prepare(cfg)
    m = load_manifest(res.path)
    assert m["counts"]["items"] == 148 and m["counts"]["users"] > 400, m["counts"]
    assert sum(m["split"]["sizes"].values()) == m["stats"]["after_filter"]
    assert prepare(cfg).reused  # keyed by the saved dataset's files like any other source


def test_rows_without_ids_are_quarantined_with_split_and_row(tmp_path):
    ds = datasets.Dataset.from_dict({"u": ["a", None, "c"], "i": [1, 2, 3], "r": [5.0, 4.0, 3.0]})
    ds.save_to_disk(str(tmp_path / "single"))
    t = read_hf_dataset(tmp_path / "single", {"interactions": {"columns": {"user": "u", "item": "i", "rating": "r"}}})
    assert t.interactions["item"].tolist() == ["1", "3"]  # ids become strings, as in every reader
    assert t.quarantine.counts == {"missing_id": 1}
    (sample,) = t.quarantine.samples
    assert sample["row"] == 2 and sample["file"].endswith("single")


def test_presplit_dataset_dict_gives_the_split_column(tmp_path):
    parts = {s: datasets.Dataset.from_dict({"user": [f"u{k}" for k in range(n)], "item": ["x"] * n,
                                            "timestamp": np.arange(n, dtype=np.int64)})
             for s, n in (("train", 3), ("validation", 2), ("test", 1))}  # fmt: skip
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "pre"))
    t = read_hf_dataset(tmp_path / "pre", {"splits": {"train": "train", "valid": "validation", "test": "test"}})
    assert t.interactions["split"].tolist() == ["train"] * 3 + ["valid"] * 2 + ["test"]


def test_errors_name_what_is_wrong(tmp_path, monkeypatch):
    datasets.DatasetDict({"a": datasets.Dataset.from_dict({"user": ["u"], "item": ["i"]}),
                          "b": datasets.Dataset.from_dict({"x": [1]})}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"splits \['a', 'b'\]: name one with `split:`"):
        read_hf_dataset(tmp_path / "dd", {"interactions": {}})
    with pytest.raises(DataError, match="no split 'c'"):
        read_hf_dataset(tmp_path / "dd", {"interactions": {"split": "c"}})
    with pytest.raises(DataError, match=r"mapped column\(s\) \['uid'\] not in the dataset; columns present: \['user', 'item'\]"):
        read_hf_dataset(tmp_path / "dd", {"interactions": {"split": "a", "columns": {"user": "uid"}}})
    with pytest.raises(DataError, match="save_to_disk"):
        read_hf_dataset(tmp_path / "nothing", {"interactions": {}})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"Hub dataset 'McAuley-Lab/Amazon-Reviews-2023' cannot be downloaded: "
                                        r"HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set.*save_to_disk"):
        read_hf_dataset("hub:McAuley-Lab/Amazon-Reviews-2023", {"interactions": {"split": "full"}})
