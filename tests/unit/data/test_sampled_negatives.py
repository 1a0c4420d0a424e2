"""Seeded negatives written by `prepare` (RecBole's uni<N> / pop<N> definitions) and read back by the eval set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_modules.errors import DataError
from data_modules.evaluation import RankingEvalSet, read_split
from data_modules.manifest import load_manifest, verify_checksums
from data_modules.prepare import pipeline
from data_modules.prepare.config import PrepareConfig
from data_modules.prepare.negatives import NegativesConfig, draw, parse_protocol

pytestmark = pytest.mark.unit
FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "tiny"


def _prepare(tmp_path: Path, name: str = "out", **negatives) -> Path:
    return pipeline.prepare(PrepareConfig.from_dict({
        "source": {"format": "recbole", "path": str(FIXTURE), "name": "tiny"},
        "clean": {"rating_range": [1, 5]},
        "split": {"protocol": "recbole", "seed": 2020},
        "negatives": {"protocols": ["uni5", "pop5"], **negatives},
        "output": {"dir": str(tmp_path / name)},
    })).path


def _pairs(root: Path, m: dict, splits: tuple[str, ...]) -> set[tuple[int, int]]:
    out: set[tuple[int, int]] = set()
    for s in splits:
        df = read_split(root, m, s)
        out |= set(zip(df["user"].tolist(), df["item"].tolist()))
    return out


def test_protocol_names():
    assert parse_protocol("uni100") == ("uniform", 100) and parse_protocol("pop999") == ("popularity", 999)
    for bad in ("uni0", "full", "pop", "uni-5", "Uni100"):
        with pytest.raises(ValueError, match="uni<N> or pop<N>"):
            parse_protocol(bad)
    with pytest.raises(ValueError, match="listed twice"):
        NegativesConfig(protocols=["uni5", "uni5"])


def test_prepare_stores_negatives_excluding_the_phase_s_used_items(tmp_path):
    root = _prepare(tmp_path)
    m = load_manifest(root)
    verify_checksums(root, m)  # the negatives files are checked like shards
    assert sorted(m["negatives"]) == ["pop5", "uni5"]
    assert m["negatives"]["pop5"]["distribution"] == "popularity" and m["negatives"]["uni5"]["num"] == 5
    used = {"valid": _pairs(root, m, ("train", "valid")), "test": _pairs(root, m, ("train", "valid", "test"))}
    for name in ("uni5", "pop5"):
        for split in ("valid", "test"):
            entry = m["negatives"][name][split]
            t = pq.read_table(root / entry["path"]).to_pandas()
            held = read_split(root, m, split)
            assert entry["rows"] == len(held) == len(t) == 20  # one row per held-out interaction, in shard order
            assert t["user"].tolist() == held["user"].tolist() and t["item"].tolist() == held["item"].tolist()
            for u, negs in zip(t["user"], t["negatives"]):
                assert len(negs) == 5
                assert not any((int(u), int(i)) in used[split] for i in negs), (name, split, u)
    # a valid-phase negative may be the user's test item (RecBole: used = train + valid only), never a test one
    assert used["test"] > used["valid"]


def test_negatives_are_fixed_by_the_seed_and_change_with_it(tmp_path):
    a, b, c = _prepare(tmp_path, "a"), _prepare(tmp_path, "b"), _prepare(tmp_path, "c", seed=7)
    read = lambda r: pq.read_table(r / "negatives" / "uni5_test.parquet").column("negatives").to_pylist()  # noqa: E731
    assert read(a) == read(b)
    assert read(a) != read(c)


def test_popularity_draws_follow_counts_and_uniform_draws_are_flat():
    rng = np.random.default_rng(0)
    n_items, users = 50, np.zeros(20000, dtype=np.int64)
    counts = np.arange(1, n_items + 1, dtype=np.float64)
    used = np.array([0 * n_items + 49], dtype=np.int64)  # user 0 has item 49: never drawn
    pop = draw(users, used, n_items, 5, rng, np.cumsum(counts / counts.sum())).ravel()
    uni = draw(users, used, n_items, 5, rng).ravel()
    assert not (pop == 49).any() and not (uni == 49).any()
    freq = np.bincount(pop, minlength=n_items)[:49] / len(pop)
    expect = counts[:49] / counts[:49].sum()
    assert np.abs(freq - expect).max() < 0.004  # 100k draws: within a few standard errors of c_i / sum c
    flat = np.bincount(uni, minlength=n_items)[:49] / len(uni)
    assert np.abs(flat - 1 / 49).max() < 0.004


def test_a_user_with_every_item_is_a_clear_error():
    used = np.arange(10, dtype=np.int64)  # user 0 has all 10 items
    with pytest.raises(DataError, match="cannot draw negatives for user index 0"):
        draw(np.zeros(1, dtype=np.int64), used, 10, 3, np.random.default_rng(0))


def test_eval_set_candidates_are_held_out_items_plus_distinct_negatives(tmp_path):
    root = _prepare(tmp_path)
    m = load_manifest(root)
    ds = RankingEvalSet(root, m, "test", history_len=4)
    batch = ds.collate([ds[i] for i in range(len(ds))])
    negs = pq.read_table(root / m["negatives"]["uni5"]["test"]["path"]).to_pandas()
    for row, u in enumerate(batch["user"].tolist()):
        got = batch["sampled_uni5_cols"][batch["sampled_uni5_rows"] == row].tolist()
        mine = negs[negs["user"] == u]
        expect = sorted(set(mine["item"].tolist()) | {int(i) for n in mine["negatives"] for i in n})
        assert got == expect


def test_inspect_names_the_stored_negatives(tmp_path):
    from data_modules.manifest import format_manifest

    root = _prepare(tmp_path)
    text = format_manifest(load_manifest(root), root)
    assert "negatives    uni5: 5 uniform per held-out interaction (seed 2020); valid 20 rows, test 20 rows" in text
    assert "negatives    pop5: 5 popularity" in text
