"""Conservation of interaction rows, for every reader: preparing each fixture in tests/fixtures/readers (and the
same with damage added: duplicated rows, a conflicting rating, an out-of-range rating, a k-core that bites)
writes `conservation` to the manifest with entering = kept + quarantined + merged + filtered, and a step that
drops rows without counting them stops preparation."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_modules.manifest import load_manifest
from data_modules.prepare import clean, pipeline
from data_modules.prepare.config import PrepareConfig
from data_modules.prepare.conservation import ConservationError

pytestmark = pytest.mark.unit
FIX = Path(__file__).resolve().parents[2] / "fixtures" / "readers"

SOURCES = {
    "recbole": {"format": "recbole", "path": str(FIX / "recbole" / "tiny"), "name": "tiny"},
    "movielens-100k": {"format": "movielens", "path": str(FIX / "movielens" / "ml-100k")},
    "movielens-1m": {"format": "movielens", "path": str(FIX / "movielens" / "ml-1m")},
    "movielens-latest": {"format": "movielens", "path": str(FIX / "movielens" / "ml-latest-small")},
    "amazon-2018": {"format": "amazon", "path": str(FIX / "amazon" / "2018")},
    "amazon-2023": {"format": "amazon", "path": str(FIX / "amazon" / "2023" / "All_Beauty.jsonl"),
                    "options": {"meta": str(FIX / "amazon" / "2023" / "meta_All_Beauty.jsonl")}},
    "lastfm": {"format": "lastfm", "path": str(FIX / "lastfm" / "hetrec")},
    "ciao": {"format": "ciao", "path": str(FIX / "ciao")},
    "generic-presplit": {"format": "generic", "path": str(FIX / "generic"),
                         "options": {"splits": {"train": "presplit/train.csv", "valid": "presplit/valid.csv",
                                                "test": "presplit/test.csv"}}},
}
FILTERS = {"none": {}, "k_core": {"min_user_interactions": 2, "min_item_interactions": 2}}


def prepare(tmp_path: Path, source: str, filt: str):
    presplit = source == "generic-presplit"
    cfg = PrepareConfig.from_dict({
        "source": SOURCES[source],
        "clean": {"max_bad_fraction": 0.5},
        "filter": FILTERS[filt],
        "split": {"protocol": "presplit"} if presplit else {"protocol": "ratio", "ratios": [0.8, 0.1, 0.1]},
        "output": {"dir": str(tmp_path / "out")},
    })
    return pipeline.prepare(cfg)


@pytest.mark.parametrize("filt", sorted(FILTERS))
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_reader_conserves_interaction_rows(tmp_path, source, filt):
    try:
        res = prepare(tmp_path, source, filt)
    except ValueError as e:  # a fixture too small for a 2-core: a clear error, not a lost count
        assert filt == "k_core" and "no interactions left" in str(e) or "left no training" in str(e), e
        return
    c = load_manifest(res.path)["conservation"]
    removed = sum(c["quarantined"].values()) + sum(c["merged"].values()) + sum(c["filtered"].values())
    assert c["entering"] == c["kept"] + removed, c
    assert c["kept"] == res.manifest["stats"]["after_filter"] == sum(res.manifest["split"]["sizes"].values())
    assert set(c["merged"]) <= {"exact_duplicate", "duplicate_pair"} and set(c["filtered"]) <= {"k_core",
                                                                                              "below_rating_threshold"}
    assert c["reader"]["rows_read"] or source == "ciao"


def test_damaged_recbole_rows_are_all_accounted_for(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in (FIX / "recbole" / "tiny").iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    inter = (src / "tiny.inter").read_text().splitlines()
    header, rows = inter[0], inter[1:]
    user, item = rows[0].split("\t")[:2]
    damaged = [header, *rows, rows[0], rows[1], f"{user}\t{item}\t1\t1", f"{user}\t{item}\t99\t2", "u_x\t\t3\t3"]
    (src / "tiny.inter").write_text("\n".join(damaged) + "\n")
    cfg = PrepareConfig.from_dict({
        "source": {"format": "recbole", "path": str(src), "name": "tiny"},
        "clean": {"rating_range": [1, 5], "max_bad_fraction": 0.5},
        "filter": {"min_user_interactions": 2},
        "split": {"protocol": "ratio", "ratios": [0.8, 0.1, 0.1]},
        "output": {"dir": str(tmp_path / "out")},
    })
    c = pipeline.prepare(cfg).manifest["conservation"]
    assert c["merged"].get("exact_duplicate", 0) >= 2 and c["merged"].get("duplicate_pair", 0) >= 1, c
    assert c["quarantined"].get("rating_out_of_range") == 1 and c["quarantined"].get("missing_id") == 1, c
    # and the reader's half: rows_read of the interactions file = handed over + quarantined by the reader
    assert c["reader"]["rows_read"]["tiny.inter"] == len(damaged) - 1 == c["entering"] + 1, c
    assert c["reader"]["quarantined"] == {"non_numeric_rating": 1}, c  # "five"
    assert c["entering"] == c["kept"] + sum(c["quarantined"].values()) + sum(c["merged"].values()) + sum(
        c["filtered"].values())


def test_a_step_that_drops_rows_silently_stops_preparation(tmp_path, monkeypatch):
    real = clean.clean_interactions

    def leaky(inter, *args, **kwargs):
        return real(inter, *args, **kwargs).iloc[1:]  # one row gone, no rule counted it

    monkeypatch.setattr(pipeline, "clean_interactions", leaky)
    with pytest.raises(ConservationError, match=r"interaction rows not conserved: \d+ entered"):
        prepare(tmp_path, "recbole", "none")
    assert not (tmp_path / "out").exists()
