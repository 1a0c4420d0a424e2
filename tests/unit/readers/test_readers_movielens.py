"""MovieLens originals (100K, 1M, latest) on tiny files in the exact published formats."""

import shutil
from pathlib import Path

import pytest

from data_modules.errors import DataError
from data_modules.readers.movielens import read_movielens
from data_modules.tables import FieldKind

pytestmark = pytest.mark.unit

ML = Path(__file__).parents[2] / "fixtures" / "readers" / "movielens"


def test_100k_ratings_users_items():
    t = read_movielens(ML / "ml-100k")
    t.validate()
    assert t.name == "ml-100k"
    inter = t.interactions
    assert inter["user"].tolist() == ["196", "186", "22", "244"]
    assert inter["rating"].tolist() == [3.0, 3.0, 1.0, 2.0] and str(inter["timestamp"].dtype) == "int64"
    items = t.items.set_index("item")
    assert items.loc["51", "genres"] == ["Drama", "Romance", "War", "Western"]
    assert items.loc["377", "title"] == "Misérables, Les (1995)"  # latin-1 decoded
    assert items.loc["242", "release_year"] == "1997"  # from the release date, not the title
    assert items.loc["267", "genres"] == ["unknown"] and items.loc["267", "title"] == "unknown"
    assert t.item_fields["genres"] == FieldKind.multi_categorical and t.item_fields["title"] == FieldKind.text
    users = t.users.set_index("user")
    assert users.loc["186"].tolist() == ["39", "F", "executive", "00000"]


def test_100k_without_u_genre_uses_standard_names(tmp_path):
    for name in ("u.data", "u.item"):
        shutil.copy(ML / "ml-100k" / name, tmp_path / name)
    t = read_movielens(tmp_path)
    assert t.items.set_index("item").loc["302", "genres"] == ["Crime", "Film-Noir", "Mystery", "Thriller"]
    assert t.users is None and t.user_fields == {}


def test_a_damaged_genre_index_is_an_error_naming_the_file_and_line(tmp_path):
    """u.genre names u.item's genre columns in index order: a non-integer index (found by the every-reader property
    test: `unknown|0,x`) is a DataError with file and row, not a pandas traceback."""
    shutil.copytree(ML / "ml-100k", tmp_path / "ml-100k")
    genre = tmp_path / "ml-100k" / "u.genre"
    genre.write_bytes(genre.read_bytes().replace(b"unknown|0", b"unknown|0,x", 1))
    with pytest.raises(DataError, match=r"u\.genre, row 1, field 'index': genre index '0,x' is not an integer"):
        read_movielens(tmp_path / "ml-100k")


def test_1m_double_colon_and_latin1():
    t = read_movielens(ML / "ml-1m")
    t.validate()
    assert t.interactions[["user", "item"]].values.tolist()[:2] == [["1", "1193"], ["1", "661"]]
    items = t.items.set_index("item")
    assert items.loc["661", "genres"] == ["Animation", "Children's", "Musical"]
    assert items.loc["3", "title"] == "Cité des enfants perdus, La (1995)"
    assert items.loc["3224", "release_year"] == "1964"  # last "(yyyy)" wins over "(Suna no onna)"
    assert t.users.set_index("user").loc["2"].tolist() == ["56", "M", "16", "70072"]


def test_latest_quoted_titles_and_no_genres():
    t = read_movielens(ML / "ml-latest-small")
    t.validate()
    assert t.interactions["rating"].tolist() == [4.0, 4.0, 3.5]
    items = t.items.set_index("item")
    assert items.loc["11", "title"] == "American President, The (1995)"
    assert (
        items.loc["182727", "genres"] == []
        and items.loc["182727", "release_year"] != items.loc["182727", "release_year"]
    )
    assert t.users is None


def test_bad_rating_quarantined_with_line(tmp_path):
    shutil.copytree(ML / "ml-100k", tmp_path, dirs_exist_ok=True)
    with open(tmp_path / "u.data", "a") as f:
        f.write("7\t8\tx\t881250949\n7\t9\t4\t\n")
    t = read_movielens(tmp_path)
    assert len(t.interactions) == 4
    assert t.quarantine.counts == {"non_numeric_rating": 1, "bad_timestamp": 1}
    assert [(s["rule"], s["row"]) for s in t.quarantine.samples] == [
        ("non_numeric_rating", 5),
        ("bad_timestamp", 6),
    ]
    assert t.quarantine.samples[0]["file"].endswith("u.data")


def test_unknown_release_is_named(tmp_path):
    with pytest.raises(DataError, match="cannot tell the MovieLens release"):
        read_movielens(tmp_path)


def test_latest_missing_column_named(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,score\n1,2,3\n")
    with pytest.raises(DataError, match=r"ratings\.csv.*\['rating', 'timestamp'\].*columns present"):
        read_movielens(tmp_path)
