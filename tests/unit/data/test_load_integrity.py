"""A truncated or corrupted shard or side array is noticed when it is opened (training stream, evaluation sets,
SideData, the data module), with an error naming the file: size always, sha256 once per process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_modules import integrity, layout
from data_modules.datamodule import FusionDataModule
from data_modules.errors import DataError
from data_modules.evaluation import RankingEvalSet
from data_modules.manifest import load_manifest, verify_checksums
from data_modules.prepare import pipeline
from data_modules.prepare.config import PrepareConfig
from data_modules.side import SideData
from data_modules.streaming import TrainStream

pytestmark = pytest.mark.unit
FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "tiny"


@pytest.fixture
def prepared(tmp_path) -> Path:
    cfg = PrepareConfig.from_dict({
        "source": {"format": "recbole", "path": str(FIXTURE), "name": "tiny"},
        "clean": {"rating_range": [1, 5], "max_bad_fraction": 0.05},
        "split": {"protocol": "recbole", "seed": 2020},
        "output": {"dir": str(tmp_path / "out"), "shard_rows": 64, "block_rows": 16},
    })
    return pipeline.prepare(cfg).path


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size: only the checksum can tell
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_side_array_is_named_when_opened(prepared, verify):
    truncate(prepared / layout.SIDE / "history_items.npy")
    side = SideData(prepared, verify=verify)
    with pytest.raises(DataError, match=r"side/history_items\.npy: side array 'history_items' is \d+ bytes but the "
                                        r"manifest lists \d+: the file is truncated"):
        side.array("history_items")


def test_corrupted_side_array_is_named_by_its_checksum(prepared):
    flip_last_byte(prepared / layout.SIDE / "item_popularity.npy")
    with pytest.raises(DataError, match=r"side/item_popularity\.npy: .*checksum does not match the manifest"):
        SideData(prepared).array("item_popularity")
    SideData(prepared, verify=False).array("item_popularity")  # verify=False: sizes only, by choice


def test_manifest_without_side_sizes_still_catches_truncation_from_the_npy_header(prepared):
    m = json.loads((prepared / layout.MANIFEST).read_text())
    for info in m["side"].values():
        del info["bytes"]  # a manifest written before side arrays carried their size
    (prepared / layout.MANIFEST).write_text(json.dumps(m))
    SideData(prepared).array("history_offsets")  # intact: fine
    truncate(prepared / layout.SIDE / "history_offsets.npy", keep=0.9)
    with pytest.raises(DataError, match=r"history_offsets\.npy: .*bytes but the manifest lists"):
        SideData(prepared, verify=False).array("history_offsets")


@pytest.mark.parametrize("damage", [truncate, flip_last_byte])
def test_damaged_training_shard_is_named_by_the_stream(prepared, damage):
    damage(prepared / "train" / "part-00001.parquet")
    with pytest.raises(DataError, match=r"train/part-00001\.parquet: train shard (is \d+ bytes|checksum does not)"):
        TrainStream(prepared, global_batch_size=8)


def test_truncated_shard_is_caught_by_size_even_without_verify(prepared):
    truncate(prepared / "train" / "part-00002.parquet", keep=0.97)
    dm = FusionDataModule(dataset_dir=str(prepared), batch_size=8, verify=False)
    dm.setup("fit")  # no hashing at setup
    with pytest.raises(DataError, match=r"train/part-00002\.parquet: train shard is \d+ bytes"):
        dm.train_dataloader()


def test_damaged_side_array_is_named_by_the_stream(prepared):
    truncate(prepared / layout.SIDE / "item_popularity.npy")
    with pytest.raises(DataError, match=r"item_popularity\.npy: side array 'item_popularity' is \d+ bytes"):
        TrainStream(prepared, global_batch_size=8)  # the popularity sampler opens it


@pytest.mark.parametrize("split", ["valid", "test"])
def test_damaged_evaluation_shard_is_named(prepared, split):
    truncate(prepared / split / "part-00000.parquet")
    m = load_manifest(prepared)
    with pytest.raises(DataError, match=rf"{split}/part-00000\.parquet: {split} shard is \d+ bytes"):
        RankingEvalSet(prepared, m, "test", history_len=4)  # the test set also reads valid (conditioning)


def test_a_stray_file_in_train_is_not_streamed(prepared):
    (prepared / "train" / "part-99999.parquet").write_bytes((prepared / "train" / "part-00000.parquet").read_bytes())
    assert TrainStream(prepared, global_batch_size=8).n_rows == load_manifest(prepared)["counts"]["train"]


def test_each_file_is_hashed_once_per_process_until_it_changes(prepared, monkeypatch):
    hashed = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    m = load_manifest(prepared)
    verify_checksums(prepared, m)
    n_files = sum(len(s) for s in m["shards"].values()) + len(m["side"])
    assert len(hashed) == n_files
    side = SideData(prepared, m)
    side.array("history_items")
    TrainStream(prepared, global_batch_size=8)
    RankingEvalSet(prepared, m, "test", history_len=4)
    assert len(hashed) == n_files  # the loaders found every hash already checked in this process
    pop = prepared / layout.SIDE / "item_popularity.npy"
    np.save(pop, np.load(pop) + 1)  # rewritten: same size, new content and mtime
    with pytest.raises(DataError, match="item_popularity.npy: .*checksum does not match"):
        SideData(prepared, m).array("item_popularity")
    assert hashed[n_files:] == ["item_popularity.npy"]
