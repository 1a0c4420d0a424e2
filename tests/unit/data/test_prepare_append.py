"""Incremental preparation (data_modules/prepare/append.py) on the tiny RecBole fixture plus new files in the same
format (tests/fixtures/tiny_append: 10 new ratings of existing users on items they had not rated, two new users,
one new item with a new genre and release year): ids and vocabulary codes of the parent stay, the maps grow, the manifest records the chain."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from data_modules import layout
from data_modules.errors import DataError
from data_modules.manifest import format_manifest, load_manifest, verify_checksums
from data_modules.prepare import pipeline
from data_modules.prepare.append import with_appended
from data_modules.prepare.config import PrepareConfig

pytestmark = pytest.mark.unit
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TINY, NEW = FIXTURES / "tiny", FIXTURES / "tiny_append"


def parent_config(out: Path, seed: int = 2020, protocol: str = "recbole") -> PrepareConfig:
    return PrepareConfig.from_dict({
        "source": {"format": "recbole", "path": str(TINY), "name": "tiny"},
        "clean": {"rating_range": [1, 5]},
        "split": {"protocol": protocol, "seed": seed},
        "output": {"dir": str(out), "shard_rows": 64, "block_rows": 16},
    })


def id_map(root: Path, name: str) -> list[str]:
    t = pq.read_table(root / layout.ID_MAPS / f"{name}.parquet").to_pandas()
    assert t["index"].tolist() == list(range(len(t)))
    return t["id"].tolist()


def pairs(root: Path) -> set[tuple[str, str]]:
    """Every kept (user, item) of all splits, as raw ids."""
    users, items = id_map(root, "users"), id_map(root, "items")
    m = load_manifest(root)
    out = set()
    for shards in m["shards"].values():
        for s in shards:
            t = pq.read_table(root / s["path"], columns=["user", "item"]).to_pandas()
            out |= {(users[u], items[i]) for u, i in zip(t["user"], t["item"])}
    return out


def raw_pairs(folder: Path) -> set[tuple[str, str]]:
    t = pd.read_csv(folder / "tiny.inter", sep="\t", dtype=str)
    return set(zip(t["user_id:token"], t["item_id:token"]))


def vocab(manifest: dict, ent: str, field: str) -> list[str]:
    return next(f["vocab"] for g in ("categorical", "multi_categorical") for f in manifest["schema"][ent].get(g, [])
                if f["name"] == field)


def count_leak(parent: Path, child: Path) -> dict[str, int]:
    """Child valid / test (user, item) pairs that are parent training pairs, by brute force over raw ids."""
    pu, pi, cu, ci = id_map(parent, "users"), id_map(parent, "items"), id_map(child, "users"), id_map(child, "items")
    pm, cm = load_manifest(parent), load_manifest(child)

    def split_pairs(root, m, users, items, split):
        out = []
        for s in m["shards"][split]:
            t = pq.read_table(root / s["path"], columns=["user", "item"]).to_pandas()
            out += [(users[u], items[i]) for u, i in zip(t["user"], t["item"])]
        return out

    trained = set(split_pairs(parent, pm, pu, pi, "train"))
    return {split: sum(p in trained for p in split_pairs(child, cm, cu, ci, split)) for split in ("valid", "test")}


def test_temporal_child_keeps_the_parents_training_rows_in_training(tmp_path):
    cfg = parent_config(tmp_path / "parent", protocol="temporal")
    root = pipeline.prepare(cfg).path
    child = pipeline.prepare(with_appended(cfg, [str(NEW)], str(tmp_path / "child")))
    assert child.manifest["lineage"]["parent_train_in_eval"] == {"valid": 0, "test": 0} == count_leak(root, child.path)


@pytest.fixture()
def parent(tmp_path):
    cfg = parent_config(tmp_path / "parent")
    return cfg, pipeline.prepare(cfg).path


def test_append_keeps_parent_indices_and_grows_maps(tmp_path, parent):
    cfg, root = parent
    child = pipeline.prepare(with_appended(cfg, [str(NEW)], str(tmp_path / "child"))).path
    pu, pi, cu, ci = id_map(root, "users"), id_map(root, "items"), id_map(child, "users"), id_map(child, "items")
    assert cu[:20] == pu and ci[:16] == pi  # every parent id keeps its dense index
    assert cu[20:] == ["21", "22"] and ci[16:] == ["17"]  # new ones follow, in order of appearance
    m, p = load_manifest(child), load_manifest(root)
    assert m["counts"]["users"] == 22 and m["counts"]["items"] == 17
    # the data is the union: old pairs plus the new file's (duplicate pairs merged by clean.duplicate_rule)
    assert pairs(child) == pairs(root) | raw_pairs(NEW)
    # vocabularies: the parent's values keep their codes, new values (a new occupation, genres, a year) follow
    for ent, field, new_values in (("users", "occupation", ["doctor"]), ("items", "release_year", ["1998"]),
                                   ("items", "class", ["Crime", "Thriller"])):
        assert vocab(m, ent, field) == vocab(p, ent, field) + new_values
    side_p, side_c = root / layout.SIDE, child / layout.SIDE
    np.testing.assert_array_equal(np.load(side_c / "user_cat.npy")[:20], np.load(side_p / "user_cat.npy"))
    np.testing.assert_array_equal(np.load(side_c / "item_cat.npy")[:16], np.load(side_p / "item_cat.npy"))
    off_p, off_c = np.load(side_p / "item_multi_class_offsets.npy"), np.load(side_c / "item_multi_class_offsets.npy")
    np.testing.assert_array_equal(off_c[:17], off_p)
    np.testing.assert_array_equal(np.load(side_c / "item_multi_class_values.npy")[:off_p[-1]],
                                  np.load(side_p / "item_multi_class_values.npy"))
    verify_checksums(child, m)
    assert load_manifest(root)["fingerprint"] == p["fingerprint"]  # the parent folder is untouched


def test_manifest_records_the_chain_and_reruns_are_free(tmp_path, parent):
    cfg, root = parent
    child_cfg = with_appended(cfg, [str(NEW)], str(tmp_path / "child"))
    first = pipeline.prepare(child_cfg)
    m, p = first.manifest, load_manifest(root)
    assert m["lineage"]["parent"] == {"dir": str(root.resolve()), "fingerprint": p["fingerprint"], "name": "tiny",
                                      "counts": {"users": 20, "items": 16}}
    assert m["lineage"]["ancestors"] == [p["fingerprint"]]
    assert m["lineage"]["added"] == {"users": 2, "items": 1, "paths": [str(NEW)]}
    # RecBole's random split redrawn over the grown table puts some of the parent's training rows in valid / test
    leak = m["lineage"]["parent_train_in_eval"]
    assert leak["valid"] + leak["test"] > 0
    assert leak == count_leak(root, first.path)
    assert f"lineage      extends {root.resolve()}" in format_manifest(m, first.path)
    assert m["fingerprint"] != p["fingerprint"]
    assert pipeline.prepare(child_cfg).reused  # same inputs and options: nothing to do
    # a second step: one more user; the grandchild lists both ancestors, nearest first
    more = tmp_path / "more"
    more.mkdir()
    (more / "tiny.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                     "23\t1\t4\t891000000\n23\t17\t5\t891000100\n23\t2\t3\t891000200\n", encoding="utf-8")
    grand_cfg = with_appended(child_cfg, [str(more)], str(tmp_path / "grandchild"))
    assert grand_cfg.append.parent == str(tmp_path / "child") and grand_cfg.append.paths == [str(NEW), str(more)]
    g = pipeline.prepare(grand_cfg).manifest
    assert g["lineage"]["ancestors"] == [m["fingerprint"], p["fingerprint"]]
    assert g["lineage"]["added"] == {"users": 1, "items": 0, "paths": [str(more)]}
    assert id_map(tmp_path / "grandchild", "users") == id_map(first.path, "users") + ["23"]
    # a re-prepared parent (another split) is another parent: the child's fingerprint changes, so it rebuilds
    pipeline.prepare(parent_config(root, seed=7), force=True)
    assert pipeline.fingerprint(child_cfg) != m["fingerprint"]


def test_append_refuses_what_would_not_extend_the_parent(tmp_path, parent):
    cfg, root = parent
    with pytest.raises(DataError, match="must differ from append.parent"):
        pipeline.prepare(with_appended(cfg, [str(NEW)], str(root)))
    other = with_appended(cfg, [str(NEW)], str(tmp_path / "child"))
    other.source.path = str(NEW)  # not the parent's inputs
    with pytest.raises(DataError, match="is not the parent's source"):
        pipeline.prepare(other)
    with pytest.raises(ValueError, match="--out"):
        with_appended(cfg, [str(NEW)], "")
    assert not (tmp_path / "child").exists()
    with pytest.raises(ValueError, match="append: unknown keys"):
        PrepareConfig.from_dict({**json.loads(json.dumps(cfg.to_dict())), "append": {"parent": "x", "files": ["y"]}})
