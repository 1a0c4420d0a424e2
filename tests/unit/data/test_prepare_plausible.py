"""Plausibility rules through `prepare` on real small generic files: values that parse but cannot be right are
counted (with file:line where the reader knows it), each rule can be turned off, and harmless side rows are
reported as unused, not as rejected."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_modules import layout
from data_modules.prepare import pipeline
from data_modules.prepare.config import PrepareConfig

pytestmark = pytest.mark.unit

T0 = 1_600_000_000  # 2020-09-13, seconds


def ratings(n_users: int = 10, n_items: int = 12) -> list[list]:
    """Every user rates every item: 120 clean rows (line i + 2 of the CSV is row i)."""
    return [[f"u{u}", f"i{i}", (u + i) % 5 + 1, T0 + 60 * (u * n_items + i)] for u in range(n_users) for i in range(n_items)]


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def prepare(tmp_path: Path, schema: dict, **clean) -> tuple[dict, list[dict]]:
    cfg = PrepareConfig.from_dict({
        "source": {"format": "generic", "path": str(tmp_path / "src"), "options": schema},
        "clean": clean,
        "output": {"dir": str(tmp_path / "out"), "shard_rows": 1000, "block_rows": 64},
    })
    res = pipeline.prepare(cfg, force=True)
    samples = [json.loads(line) for line in (res.path / layout.QUARANTINE).read_text().splitlines()]
    return res.manifest, samples


def train_timestamps(tmp_path: Path) -> np.ndarray:
    return pd.read_parquet(tmp_path / "out" / "train").loc[:, "timestamp"].to_numpy()


@pytest.fixture
def src(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    return tmp_path / "src"


def test_millisecond_timestamps_in_a_seconds_format_are_detected_and_said(tmp_path, src, caplog):
    rows = [[u, i, r, t * 1000 + 123] for u, i, r, t in ratings()]
    write_csv(src / "ratings.csv", ["user", "item", "rating", "timestamp"], rows)
    with caplog.at_level(logging.WARNING, logger="fusionrec.prepare"):
        m, _ = prepare(tmp_path, {"interactions": {"path": "ratings.csv"}})
    note = m["stats"]["timestamp_unit"]
    assert (note["assumed"], note["declared"], note["divided_by"]) == ("ms", "s", 1000)
    assert note["files"] == [str(src / "ratings.csv")]
    assert "read as ms, divided by 1000" in caplog.text and "ratings.csv" in caplog.text
    ts = train_timestamps(tmp_path)
    assert ts.min() >= T0 and ts.max() < T0 + 10**6  # seconds again
    assert not m["quarantine"]


def test_unit_detection_can_be_turned_off(tmp_path, src):
    rows = [[u, i, r, t * 1000] for u, i, r, t in ratings()]
    write_csv(src / "ratings.csv", ["user", "item", "rating", "timestamp"], rows)
    m, _ = prepare(tmp_path, {"interactions": {"path": "ratings.csv"}}, detect_timestamp_unit=False,
                   future_timestamp_slack_s=None)
    assert m["stats"]["timestamp_unit"] is None and train_timestamps(tmp_path).min() >= T0 * 1000


def test_negative_and_future_timestamps_are_rejected_with_file_and_line(tmp_path, src):
    rows = ratings()
    rows[5][3] = -5  # line 7
    rows[40][3] = 32_503_680_000  # the year 3000, line 42
    path = write_csv(src / "ratings.csv", ["user", "item", "rating", "timestamp"], rows)
    m, samples = prepare(tmp_path, {"interactions": {"path": "ratings.csv"}})
    assert m["quarantine"] == {"negative_timestamp": 1, "future_timestamp": 1}
    got = {s["rule"]: (s["file"], s["row"], s["record"]["timestamp"]) for s in samples}
    assert got == {"negative_timestamp": (str(path), 7, -5), "future_timestamp": (str(path), 42, 32_503_680_000)}
    assert m["stats"]["after_clean"] == 118

    m, _ = prepare(tmp_path, {"interactions": {"path": "ratings.csv"}}, reject_negative_timestamps=False,
                   future_timestamp_slack_s=None)
    assert not m["quarantine"] and m["stats"]["after_clean"] == 120


def test_ids_are_trimmed_and_counted_and_empty_ids_rejected(tmp_path, src):
    rows = ratings()
    rows[0][0] = " u0"  # the same user as every other "u0" row
    rows[1][1] = "i1 "
    rows[2][0] = "  "  # nothing left: an empty id
    path = src / "ratings.csv"
    path.write_text("user,item,rating,timestamp\n" + "".join(f'"{r[0]}","{r[1]}",{r[2]},{r[3]}\n' for r in rows))
    m, samples = prepare(tmp_path, {"interactions": {"path": "ratings.csv"}})
    assert m["counts"]["users"] == 10 and m["counts"]["items"] == 12  # no " u0" or "i1 " of their own
    assert m["quarantine"] == {"id_whitespace_trimmed": 2, "missing_id": 1}
    (empty,) = [s for s in samples if s["rule"] == "missing_id"]
    assert empty["file"] == str(path) and empty["row"] == 4

    m, _ = prepare(tmp_path, {"interactions": {"path": "ratings.csv"}}, trim_ids=False)
    assert m["counts"]["users"] == 11 and m["counts"]["items"] == 13  # what happens without the rule


def test_social_self_loops_duplicates_and_unknown_users_per_file(tmp_path, src):
    write_csv(src / "ratings.csv", ["user", "item", "rating", "timestamp"], ratings())
    trust = write_csv(src / "trust.csv", ["a", "b"], [["u1", "u2"], ["u1", "u2"], ["u3", "u3"], ["u4", "ghost"],
                                                      ["u5", "u6"]])
    schema = {"interactions": {"path": "ratings.csv"}, "graphs": {"social": {"path": "trust.csv", "src": "a", "dst": "b"}}}
    m, samples = prepare(tmp_path, schema)
    assert m["quarantine"] == {"graph_social_self_loop": 1, "graph_social_duplicate_edge": 1, "graph_social_unknown_id": 1}
    assert {s["file"] for s in samples} == {str(trust)}
    g = m["schema"]["graphs"]["social"]
    assert (g["edges"], g["file"], g["unknown_id_edges"]) == (2, str(trust), 1)

    m, _ = prepare(tmp_path, schema, drop_graph_self_loops=False, drop_duplicate_edges=False)
    assert m["schema"]["graphs"]["social"]["edges"] == 4 and m["quarantine"] == {"graph_social_unknown_id": 1}


def test_item_item_self_loops_and_duplicate_edges(tmp_path, src):
    write_csv(src / "ratings.csv", ["user", "item", "rating", "timestamp"], ratings())
    write_csv(src / "also.csv", ["a", "b", "kind"], [["i1", "i2", "buy"], ["i1", "i2", "view"], ["i1", "i2", "buy"],
                                                     ["i3", "i3", "buy"]])
    m, _ = prepare(tmp_path, {"interactions": {"path": "ratings.csv"},
                              "graphs": {"item_item": {"path": "also.csv", "src": "a", "dst": "b", "relation": "kind"}}})
    assert m["quarantine"] == {"graph_item_item_self_loop": 1, "graph_item_item_duplicate_edge": 1}
    assert m["schema"]["graphs"]["item_item"]["edges"] == 2  # buy and view are two edges


def test_side_rows_without_interactions_are_unused_not_rejected(tmp_path, src):
    write_csv(src / "ratings.csv", ["user", "item", "rating", "timestamp"], ratings())
    users = write_csv(src / "users.csv", ["user", "age"], [[f"u{u}", 20 + u] for u in range(13)])  # u10..u12: none
    trust = write_csv(src / "trust.csv", ["a", "b"], [["u1", "u2"], ["u1", "u11"]])  # u11 known, but not kept
    m, samples = prepare(tmp_path, {"interactions": {"path": "ratings.csv"},
                                    "users": {"path": "users.csv", "fields": {"age": "numeric"}},
                                    "graphs": {"social": {"path": "trust.csv", "src": "a", "dst": "b"}}})
    assert not m["quarantine"] and not samples
    assert m["unused"] == {"user_row_without_interactions": {"rows": 3, "file": str(users)},
                           "graph_social_edge_to_removed_id": {"rows": 1, "file": str(trust)}}
    assert m["schema"]["users"]["unused_rows"] == 3
