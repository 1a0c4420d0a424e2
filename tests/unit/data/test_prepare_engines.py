"""engine.kind duckdb (out of core) writes the same prepared folder as engine.kind memory, bit for bit: every shard,
side array, id map and quarantine sample file has the same sha256, and the manifests are equal but for when and how
long (and the output folder). On the real MovieLens-100K and on a generated RecBole file with every kind of bad row.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from data_modules.errors import DataError
from data_modules.prepare.config import PrepareConfig
from data_modules.prepare.pipeline import prepare

pytest.importorskip("duckdb", reason="engine.kind duckdb needs the duckdb package (the dev / outofcore extra)")
REPO = Path(__file__).resolve().parents[3]
RECBOLE_DIGEST = "f2c7dc93733c83031d05d88c55c0d83365a97d7ccdadb4e07885093dd1e6cf6c"
SMALL_BUDGET = 0.25  # GB: the engine's memory limit in these tests


def _files(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name != "manifest.json"}


def _manifest(folder: Path) -> dict:
    m = json.loads((folder / "manifest.json").read_text())
    for k in ("created", "seconds"):
        m.pop(k)
    m["config"]["output"].pop("dir")
    return m


def _both(tmp_path: Path, cfg: dict) -> tuple[Path, Path]:
    outs = []
    for kind in ("memory", "duckdb"):
        d = json.loads(json.dumps(cfg))
        d["output"] = {**d.get("output", {}), "dir": str(tmp_path / kind)}
        d["engine"] = {"kind": kind, "memory_limit_gb": SMALL_BUDGET, "threads": 2}
        prepare(PrepareConfig.from_dict(d), force=True)
        outs.append(tmp_path / kind)
    return outs[0], outs[1]


def _assert_same(a: Path, b: Path) -> dict:
    fa, fb = _files(a), _files(b)
    assert fa.keys() == fb.keys()
    assert {k for k in fa if fa[k] != fb[k]} == set()
    ma, mb = _manifest(a), _manifest(b)
    assert ma == mb
    return ma


def test_ml100k_same_bit_for_bit(tmp_path):
    from data_modules.readers.assets import find_ml100k

    try:
        find_ml100k()
    except Exception as e:  # offline and no cached wheel
        pytest.skip(f"MovieLens-100K not obtainable here: {e}")
    cfg = yaml.safe_load((REPO / "configs/data/ml100k.yaml").read_text())
    _, ooc = _both(tmp_path, cfg)
    m = _assert_same(tmp_path / "memory", ooc)
    assert (m["counts"]["train"], m["counts"]["valid"], m["counts"]["test"]) == (80808, 9596, 9596)
    assert m["schema"]["graphs"]["kg"]["edges"] == 91745 and m["schema"]["text"]["item"]["mean_tokens"] > 5
    # and so the out-of-core split is RecBole 1.2.1's own (the digest of its dump: test_recbole_split_parity.py)
    users, items = (pd.read_parquet(ooc / "id_maps" / f"{n}.parquet")["id"].to_numpy() for n in ("users", "items"))
    lines = sorted(f"{users[u]}\t{items[i]}\t{name}" for name in ("train", "valid", "test")
                   for f in sorted((ooc / name).glob("*.parquet"))
                   for u, i in pd.read_parquet(f, columns=["user", "item"]).itertuples(index=False))
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == RECBOLE_DIGEST


def _dirty_inter(folder: Path, rows: int = 20_000, seed: int = 0) -> Path:
    """A generated RecBole `.inter` (power-law users and items, so duplicate pairs and a k-core to cut) with bad rows
    of every rule the engines share, at known places."""
    rng = np.random.default_rng(seed)
    users = (rng.pareto(1.2, rows) * 40).astype(np.int64) % 800
    items = (rng.pareto(1.0, rows) * 20).astype(np.int64) % 300
    lines = [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in zip(users, items, rng.integers(1, 6, rows),
                                                       rng.integers(8e8, 9e8, rows))]
    lines[5] = lines[5].replace("\t", "\t\t", 1)  # malformed_row: five fields
    lines[10] = "\t".join(lines[10].split("\t")[:2] + ["good", "880000000"])  # non_numeric_rating
    lines[11] = "\t".join(lines[11].split("\t")[:3] + [""])  # bad_timestamp (empty)
    lines[12] = "\t".join(lines[12].split("\t")[:3] + ["soon"])  # bad_timestamp (not a number)
    lines[20] = " " + lines[20]  # id_whitespace_trimmed
    lines[21] = "\t".join([" "] + lines[21].split("\t")[1:])  # missing_id (only whitespace)
    lines[30] = lines[29]  # exact_duplicate
    lines[31] = lines[29]
    lines[40] = "\t".join(lines[40].split("\t")[:2] + ["9", "880000000"])  # rating_out_of_range
    lines[41] = "\t".join(lines[41].split("\t")[:3] + ["-5"])  # negative_timestamp
    lines[42] = "\t".join(lines[42].split("\t")[:3] + ["99999999999"])  # future_timestamp (year 5138)
    lines[50] = "\t".join(lines[50].split("\t")[:3] + ["880000000.7"])  # fractional seconds: floored
    path = folder / f"{folder.name}.inter"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("split, clean, filt", [
    ({"protocol": "recbole"}, {"duplicate_rule": "last"}, {"min_user_interactions": 3, "min_item_interactions": 3}),
    ({"protocol": "ratio", "order": "random", "seed": 7}, {"duplicate_rule": "mean"}, {"min_user_interactions": 2}),
    ({"protocol": "ratio", "order": "time"}, {"duplicate_rule": "first"}, {"rating_threshold": 3.0}),
    ({"protocol": "leave_one_out"}, {"duplicate_rule": "max"}, {"min_item_interactions": 5}),
    ({"protocol": "temporal"}, {"duplicate_rule": "keep", "drop_exact_duplicates": False}, {}),
    ({"protocol": "cold_user"}, {"duplicate_rule": "last"}, {"min_user_interactions": 4}),
])
def test_generated_dirty_same_bit_for_bit(tmp_path, split, clean, filt):
    src = _dirty_inter(tmp_path / "gen")
    cfg = {"source": {"format": "recbole", "path": str(src), "name": "gen"},
           "clean": {"rating_range": [1, 5], "max_bad_fraction": 0.2, **clean}, "filter": filt, "split": split,
           "output": {"shard_rows": 3000, "block_rows": 512}}
    m = _assert_same(*_both(tmp_path, cfg))
    for rule in ("malformed_row", "non_numeric_rating", "id_whitespace_trimmed", "missing_id", "rating_out_of_range",
                 "negative_timestamp", "future_timestamp"):
        assert m["quarantine"][rule] >= 1, rule
    assert m["quarantine"]["bad_timestamp"] == 2
    assert len(m["shards"]["train"]) >= 2  # several shards, streamed by the out-of-core engine


@pytest.mark.parametrize("malformed", [False, True])
def test_streamed_read_keeps_file_rows_across_blocks(tmp_path, malformed):
    """The `.inter` file read in 64 KB blocks (about 80 here) on two threads: every kept row carries its file row,
    and the table equals the in-memory reader's, with the same quarantine counts."""
    from data_modules.errors import Quarantine
    from data_modules.prepare.ooc.db import connect
    from data_modules.prepare.ooc.read import read_inter
    from data_modules.readers.recbole import read_recbole

    src = _dirty_inter(tmp_path / "gen", rows=200_000)
    path = src / "gen.inter"
    if not malformed:  # the fast path: no row needs reading again on one thread
        lines = path.read_text().splitlines()
        path.write_text("\n".join(ln for ln in lines if ln.count("\t") == 3) + "\n")
    ref = read_recbole(src, "gen")
    con = connect(tmp_path / "db", 0.25, 2)
    q = Quarantine()
    kept, read = read_inter(con, path, q, block=1 << 16)
    got = con.sql("SELECT * FROM t ORDER BY rn").df()
    assert (kept, read) == (len(ref.interactions), ref.rows_read["gen.inter"])
    assert dict(q.counts) == dict(ref.quarantine.counts)
    assert (got["rn"].to_numpy() + 2 == ref.origin["line"].to_numpy()).all()
    for col in ("user", "item", "timestamp"):
        assert (got[col].to_numpy() == ref.interactions[col].to_numpy()).all(), col
    assert np.array_equal(got["rating"].to_numpy(), ref.interactions["rating"].to_numpy(), equal_nan=True)


def test_duckdb_engine_says_what_it_does_not_read(tmp_path):
    cfg = PrepareConfig.from_dict({"source": {"format": "generic", "path": str(tmp_path)},
                                   "output": {"dir": str(tmp_path / "out")}, "engine": {"kind": "duckdb"}})
    with pytest.raises(DataError, match="engine.kind duckdb does not support source.format='generic'"):
        prepare(cfg, force=True)
    with pytest.raises(ValueError, match="engine.memory_limit_gb=0"):
        PrepareConfig.from_dict({"engine": {"kind": "duckdb", "memory_limit_gb": 0}})
