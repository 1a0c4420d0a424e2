"""`prepare` end to end on a tiny RecBole-format fixture: manifest, shards, idempotence, atomicity, checksums."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_modules import layout
from data_modules.errors import DataError
from data_modules.manifest import format_manifest, load_manifest, verify_checksums
from data_modules.prepare import pipeline
from data_modules.prepare.config import PrepareConfig

pytestmark = pytest.mark.unit
FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "tiny"


def config(tmp_path: Path, **overrides) -> PrepareConfig:
    d = {
        "source": {"format": "recbole", "path": str(FIXTURE), "name": "tiny"},
        "clean": {"rating_range": [1, 5], "max_bad_fraction": 0.05},
        "split": {"protocol": "recbole", "seed": 2020},
        "output": {"dir": str(tmp_path / "out"), "shard_rows": 64, "block_rows": 16},
    }
    for k, v in overrides.items():
        d.setdefault(k, {}).update(v)
    return PrepareConfig.from_dict(d)


def test_prepare_writes_shards_manifest_and_counts(tmp_path):
    res = pipeline.prepare(config(tmp_path))
    m = load_manifest(res.path)
    assert not res.reused
    assert m["counts"]["users"] == 20 and m["counts"]["items"] == 16
    assert m["quarantine"]["exact_duplicate"] == 1 and m["quarantine"]["rating_out_of_range"] == 1
    assert m["stats"]["after_filter"] == 200
    sizes = m["split"]["sizes"]
    assert (sizes["train"], sizes["valid"], sizes["test"]) == (160, 20, 20)  # 10 per user -> 8/1/1
    train_rows = sum(s["rows"] for s in m["shards"]["train"])
    assert train_rows == 160 and len(m["shards"]["train"]) == 3  # 64 + 64 + 32
    pf = pq.ParquetFile(res.path / m["shards"]["train"][0]["path"])
    assert pf.metadata.num_row_groups == 4  # 64 rows in row groups of 16
    assert pf.schema_arrow.names == ["user", "item", "rating", "timestamp", "seq_pos"]
    verify_checksums(res.path, m)
    # side data: history CSR covers exactly the training rows, item features and the KG joined through .link
    off = np.load(res.path / layout.SIDE / "history_offsets.npy")
    assert off[-1] == 160 and len(off) == 21
    assert m["schema"]["graphs"]["kg"]["edges"] == 12
    assert m["unused"]["kg_triple_without_item"] == {"rows": 1, "file": str(FIXTURE / "tiny.kg")}  # not rejected
    assert "kg_triple_without_item" not in m["quarantine"]
    names = {f["name"] for f in m["schema"]["items"]["multi_categorical"]}
    assert "class" in names
    quarantined = [json.loads(line) for line in (res.path / layout.QUARANTINE).read_text().splitlines()]
    assert {q["rule"] for q in quarantined} >= {"exact_duplicate", "rating_out_of_range"}
    text = format_manifest(m, res.path)
    assert "train 160, valid 20, test 20" in text and "rating_out_of_range=1" in text


def test_history_positions_match_time_order(tmp_path):
    res = pipeline.prepare(config(tmp_path))
    m = load_manifest(res.path)
    off = np.load(res.path / layout.SIDE / "history_offsets.npy")
    items = np.load(res.path / layout.SIDE / "history_items.npy")
    train = pq.read_table(res.path / "train").to_pandas()
    for row in train.itertuples():
        assert items[off[row.user] + row.seq_pos] == row.item
    for _, g in train.groupby("user"):
        assert (np.diff(g.sort_values("seq_pos")["timestamp"].to_numpy()) >= 0).all()
    assert m["counts"]["train"] == len(train)


def test_rerun_is_free_and_changed_option_rebuilds(tmp_path):
    first = pipeline.prepare(config(tmp_path))
    again = pipeline.prepare(config(tmp_path))
    assert again.reused and again.manifest["fingerprint"] == first.manifest["fingerprint"]
    changed = pipeline.prepare(config(tmp_path, split={"seed": 1}))
    assert not changed.reused and changed.manifest["fingerprint"] != first.manifest["fingerprint"]


def test_interrupted_prepare_leaves_previous_dataset_intact(tmp_path, monkeypatch):
    good = pipeline.prepare(config(tmp_path))
    before = (good.path / layout.MANIFEST).read_text()

    def boom(*a, **k):
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing

    monkeypatch.setattr(pipeline, "write_side", boom)
    with pytest.raises(KeyboardInterrupt):
        pipeline.prepare(config(tmp_path, split={"seed": 5}))
    assert (good.path / layout.MANIFEST).read_text() == before
    assert [p.name for p in good.path.parent.iterdir()] == ["out"]  # no temporary folder left behind


def test_interrupted_first_prepare_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "write_side", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        pipeline.prepare(config(tmp_path))
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_shard_checksum_mismatch_is_named(tmp_path):
    res = pipeline.prepare(config(tmp_path))
    m = load_manifest(res.path)
    shard = res.path / m["shards"]["train"][1]["path"]
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"part-00001\.parquet.*checksum does not match"):
        verify_checksums(res.path, m)


def test_missing_source_folder_is_named(tmp_path):
    cfg = config(tmp_path, source={"path": str(tmp_path / "nowhere")})
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        pipeline.prepare(cfg)


def test_too_many_malformed_rows_fail_with_counts(tmp_path):
    src = tmp_path / "bad"
    shutil.copytree(FIXTURE, src)
    lines = (src / "tiny.inter").read_text().splitlines()
    lines += [f"{u}\t1\tnot-a-number\t880000000" for u in range(1, 21)]
    (src / "tiny.inter").write_text("\n".join(lines) + "\n")
    cfg = config(tmp_path, source={"path": str(src)})
    with pytest.raises(DataError, match=r"rows rejected.*max_bad_fraction=0\.05.*non_numeric_rating: 20"):
        pipeline.prepare(cfg)


def test_unknown_config_key_is_a_clear_error():
    with pytest.raises(ValueError, match=r"split: unknown keys \['protcol'\]"):
        PrepareConfig.from_dict({"split": {"protcol": "ratio"}})
    with pytest.raises(ValueError, match="split.protocol='nope'"):
        PrepareConfig.from_dict({"split": {"protocol": "nope"}})
