"""Amazon reviews JSON lines (2018 and 2023) with metadata: fields, item-item edges, every quarantine rule."""

import gzip
import shutil
from pathlib import Path

import pytest

from data_modules.errors import DataError
from data_modules.readers.amazon import read_amazon
from data_modules.readers.assets import shared_data_dir
from data_modules.tables import FieldKind

pytestmark = pytest.mark.unit

AMZ = Path(__file__).parents[2] / "fixtures" / "readers" / "amazon"


def real(folder: str) -> Path:
    root = shared_data_dir()
    if root is None or not (root / folder).is_dir():
        pytest.skip(
            f"shared data folder {folder!r} not found (set FUSIONREC_SHARED_DATA to the shared/data folder)"
        )
    return root / folder


def test_2018_reviews_and_metadata():
    t = read_amazon(AMZ / "2018")
    t.validate()
    inter = t.interactions
    assert inter["review"].tolist() == [
        "Five Stars. Another great gift.",
        "Ease of use. Gift card for my daughter",
        "Never arrived",
        "It is fine.",
    ]
    assert inter["rating"].tolist() == [5.0, 4.0, 1.0, 3.0] and inter["timestamp"].iloc[0] == 1529193600
    items = t.items.set_index("item")
    assert sorted(items.index) == ["B00005N7P0", "B004LLIKVU"]  # only reviewed items, one row each
    assert t.item_fields == {
        "title": FieldKind.text,
        "description": FieldKind.text,
        "category": FieldKind.multi_categorical,
        "brand": FieldKind.categorical,
    }
    mag = items.loc["B00005N7P0"]
    assert mag["title"] == "" and mag["description"] == "Written by and for musicians."
    assert (
        mag["category"] == ["Magazine Subscriptions", "Arts, Music & Photography"]
        and mag["brand"] == "String Letter Publishers"
    )
    gift = items.loc["B004LLIKVU"]
    assert gift["category"] == ["Gift Cards"] and gift["brand"] != gift["brand"]  # "" brand -> missing
    edges = set(map(tuple, t.graphs["item_item"].to_numpy().tolist()))
    assert edges == {
        ("B004LLIKVU", "B00005N7P0", "also_buy"),
        ("B004LLIKVU", "B00005N7P0", "also_view"),
        ("B00005N7P0", "B004LLIKVU", "also_buy"),
    }
    assert t.quarantine.counts == {"html_title": 1, "duplicate_metadata": 1}
    # harmless, reported apart from the rejections: edges to, and metadata of, items nobody reviewed
    assert t.quarantine.unused == {"item_item_edge_outside_catalog": 2, "item_metadata_without_reviews": 1}
    assert t.rows_read == {"Gift_Cards_5.json": 4, "meta_Gift_Cards.json": 4}


def test_2023_milliseconds_parent_asin_and_store():
    t = read_amazon(AMZ / "2023" / "All_Beauty.jsonl", meta=AMZ / "2023" / "meta_All_Beauty.jsonl")
    t.validate()
    inter = t.interactions
    assert inter["item"].tolist() == [
        "B00YQ6X8EO",
        "B081TJ8YS3",
        "B081TJ8YS3",
    ]  # parent_asin, not the variant
    assert inter["timestamp"].tolist() == [1588687728, 1588615855, 1589665266]  # ms -> s
    assert inter["review"].iloc[2] == "Meh"
    items = t.items.set_index("item")
    assert (
        items.loc["B00YQ6X8EO", "brand"] == "Howard Products" and items.loc["B081TJ8YS3", "brand"] == "Yes To"
    )
    assert items.loc["B081TJ8YS3", "category"] == ["Beauty", "Skin Care"]
    assert t.graphs["item_item"].to_numpy().tolist() == [["B081TJ8YS3", "B00YQ6X8EO", "bought_together"]]


def test_gzipped_reviews_read_the_same(tmp_path):
    with (
        open(AMZ / "2018" / "Gift_Cards_5.json", "rb") as src,
        gzip.open(tmp_path / "Gift_Cards_5.json.gz", "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)
    t = read_amazon(tmp_path / "Gift_Cards_5.json.gz")
    assert t.interactions.equals(read_amazon(AMZ / "2018" / "Gift_Cards_5.json").interactions)
    assert t.items is None and "item_item" not in t.graphs


def test_bad_lines_are_quarantined_with_file_and_line(tmp_path):
    path = tmp_path / "Broken_5.json"
    good = (AMZ / "2018" / "Gift_Cards_5.json").read_bytes()
    path.write_bytes(
        good
        + b'{"overall": 5.0, "reviewerID": "A1", "asin": "B1", "unixRevi\n'  # line 5: truncated
        + b'{"overall": 5.0, "reviewerID": "A\xff\xfe", "asin": "B1", "unixReviewTime": 1}\n'  # 6: bad utf-8
        + b'{"overall": 5.0, "asin": "B1", "unixReviewTime": 1}\n'  # 7: no reviewerID
        + b'{"overall": "great", "reviewerID": "A1", "asin": "B1", "unixReviewTime": 1}\n'  # 8
        + b'{"overall": 2.0, "reviewerID": "A1", "asin": "B1", "unixReviewTime": 1}\n'
    )  # 9: fine
    t = read_amazon(path)
    assert len(t.interactions) == 5
    assert t.quarantine.counts == {
        "bad_json": 1,
        "invalid_utf8": 1,
        "missing_field": 1,
        "non_numeric_rating": 1,
    }
    by_rule = {s["rule"]: s for s in t.quarantine.samples}
    assert all(s["file"] == str(path) for s in by_rule.values())
    assert [
        by_rule[r]["row"] for r in ("bad_json", "invalid_utf8", "missing_field", "non_numeric_rating")
    ] == [5, 6, 7, 8]
    assert "'reviewerID'" in by_rule["missing_field"]["reason"]
    assert t.rows_read["Broken_5.json"] == 9


def test_2014_python_literal_metadata(tmp_path):
    shutil.copy(AMZ / "2018" / "Gift_Cards_5.json", tmp_path / "reviews_Gift_Cards_5.json")
    (tmp_path / "meta_Gift_Cards.json").write_text(
        "{'asin': 'B004LLIKVU', 'title': 'Gift', 'categories': [['Gift Cards', 'eGift']], "
        "'related': {'also_bought': ['B00005N7P0', 'B0OTHER']}, 'brand': 'Amazon'}\n"
    )
    t = read_amazon(tmp_path)
    assert t.items.set_index("item").loc["B004LLIKVU", "category"] == ["Gift Cards", "eGift"]
    assert t.graphs["item_item"].to_numpy().tolist() == [["B004LLIKVU", "B00005N7P0", "also_bought"]]
    assert t.quarantine.unused["item_item_edge_outside_catalog"] == 1


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match="nope.json"):
        read_amazon(tmp_path / "nope.json")
    with pytest.raises(DataError, match=r"meta_x\.json"):
        read_amazon(AMZ / "2018" / "Gift_Cards_5.json", meta=tmp_path / "meta_x.json")


def test_real_gift_cards_counts():
    t = read_amazon(real("amazon2018-gift-cards"))
    t.validate()
    s = t.summary()
    assert (s["interactions"], s["users"], s["items"], s["item_rows"]) == (2972, 458, 148, 148)
    assert t.quarantine.counts.get("html_title", 0) == 0
    assert (t.items["title"] != "").all() and len(t.graphs["item_item"]) > 0


def test_real_magazine_junk_titles_blanked():
    t = read_amazon(real("amazon2018-magazine-subscriptions"))
    s = t.summary()
    assert (s["interactions"], s["users"], s["items"], s["item_rows"]) == (2375, 348, 157, 151)
    # README: of the 151 reviewed items with metadata only 3 have a clean title; the rest are HTML fragments
    assert (t.items["title"] != "").sum() == 3 and t.quarantine.counts["html_title"] == 148
    assert not t.items["title"].str.contains("<").any()
    assert t.quarantine.counts["duplicate_metadata"] > 0 and t.items["item"].is_unique
