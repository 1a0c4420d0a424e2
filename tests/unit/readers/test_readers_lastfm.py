"""HetRec Last.fm 2K (+ KGCN KG): listens with play counts, names, Latin-1 tags, friends, CRLF KG."""

from pathlib import Path

import pytest

from data_modules.errors import DataError
from data_modules.readers.assets import shared_data_dir
from data_modules.readers.lastfm import read_lastfm
from data_modules.tables import FieldKind

pytestmark = pytest.mark.unit

LFM = Path(__file__).parents[2] / "fixtures" / "readers" / "lastfm"


def test_listens_items_tags_social_kg():
    t = read_lastfm(LFM / "hetrec", kg_dir=LFM / "kg", top_tags=2)
    t.validate()
    inter = t.interactions
    assert list(inter.columns) == ["user", "item", "event", "weight"]  # a play count is not a rating
    assert inter["weight"].tolist() == [13883.0, 11690.0, 228.0, 1.0] and set(inter["event"]) == {"listen"}
    assert t.item_fields == {"name": FieldKind.text, "tags": FieldKind.multi_categorical}
    items = t.items.set_index("item")
    assert items.loc["54", "name"] == "Sigur Rós" and items.loc["54", "tags"] == []
    assert items.loc["52", "tags"] == ["trip-hop", "chillout"]  # by frequency, ties by tag id; top 2
    assert items.loc["51", "tags"] == ["düsseldorf"]  # tags.dat decoded as Latin-1
    assert t.quarantine.counts["tag_for_unknown_artist"] == 1
    assert next(s["row"] for s in t.quarantine.samples if s["rule"] == "tag_for_unknown_artist") == 7
    assert len(t.graphs["social"]) == 4
    kg = set(map(tuple, t.graphs["kg"].to_numpy().tolist()))
    assert kg == {
        ("51", "music.artist.origin", "10"),
        ("52", "music.genre.artists_inv", "11"),
        ("51", "music.artist.similar", "2"),
        ("53", "music.artist.similar_inv", "0"),
    }
    assert not any("\r" in v for row in kg for v in row)  # CRLF stripped
    assert t.quarantine.unused["kg_triple_without_item"] == 1


def test_missing_listens_file_named(tmp_path):
    with pytest.raises(DataError, match=r"user_artists\.dat"):
        read_lastfm(tmp_path)


def test_kg_dir_without_files_named(tmp_path):
    with pytest.raises(DataError, match="kg.txt"):
        read_lastfm(LFM / "hetrec", kg_dir=tmp_path)


def test_real_lastfm_counts():
    root = shared_data_dir()
    if root is None or not (root / "hetrec2011-lastfm-2k").is_dir():
        pytest.skip(
            "shared data hetrec2011-lastfm-2k not found (set FUSIONREC_SHARED_DATA to the shared/data folder)"
        )
    kg_dir = root / "lastfm-2k-kg-kgcn"
    t = read_lastfm(root / "hetrec2011-lastfm-2k", kg_dir=kg_dir if kg_dir.is_dir() else None)
    t.validate()
    s = t.summary()
    assert (s["interactions"], s["users"], s["items"], s["item_rows"]) == (92834, 1892, 17632, 17632)
    assert s["graph_social"] == 25434
    assert t.rows_read["tags.dat"] == 11946 and t.rows_read["user_taggedartists.dat.gz"] == 186479
    assert t.items["tags"].map(len).max() == 10
    assert any("ç" in tag for tags in t.items["tags"] for tag in tags)  # Latin-1 tags decoded
    if kg_dir.is_dir():
        assert t.rows_read["kg.txt"] == 15518 and t.quarantine.unused.get("kg_triple_without_item", 0) == 0
        assert len(t.graphs["kg"]) >= 15518  # artist-artist triples give one edge from each end
