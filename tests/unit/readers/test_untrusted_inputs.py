"""Files from an untrusted place: a DeepSpeed checkpoint folder cannot run code when exported, and a manifest cannot
point the loader at files outside its dataset folder."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from data_modules import layout
from data_modules.errors import DataError
from data_modules.manifest import load_manifest
from data_modules.prepare import pipeline
from data_modules.prepare.config import PrepareConfig
from data_modules.side import SideData

pytestmark = pytest.mark.unit
FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "tiny"


class Payload:
    """Unpickling this creates `marker`: proof that a load ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _evil_zero_folder(root: Path, marker: Path, shard: str) -> Path:
    """A Lightning-under-DeepSpeed checkpoint layout (`latest` -> tag folder of shards), one shard poisoned."""
    tag = root / "last.ckpt" / "checkpoint"
    tag.mkdir(parents=True)
    (tag.parent / "latest").write_text("checkpoint")
    fine = {"module": {"w": torch.zeros(2)}, "buffer_names": [], "param_shapes": [{"w": torch.Size([2])}],
            "shared_params": {}, "epoch": 1}
    torch.save(fine, tag / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {"zero_stage": 2, "partition_count": 1}}, tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    torch.save({**torch.load(tag / shard, weights_only=False), "client": Payload(marker)}, tag / shard)
    return tag.parent


@pytest.mark.parametrize("shard", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_export_consolidation_of_a_zero_folder_loads_weights_only(tmp_path, shard):
    pytest.importorskip("deepspeed")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from trainer.engine.strategies import consolidate_zero_checkpoint, zero_client_state

    marker = tmp_path / "pwned"
    folder = _evil_zero_folder(tmp_path, marker, shard)
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        consolidate_zero_checkpoint(folder)
    assert not marker.exists(), "zero_to_fp32 unpickled code from the checkpoint"
    if shard.startswith("mp_rank"):
        with pytest.raises(pickle.UnpicklingError):
            zero_client_state(folder)
        assert not marker.exists()
    from deepspeed.utils import zero_to_fp32

    assert zero_to_fp32.torch is torch  # the weights-only load is swapped in only for the call


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("prepared")
    cfg = PrepareConfig.from_dict({
        "source": {"format": "recbole", "path": str(FIXTURE), "name": "tiny"},
        "output": {"dir": str(tmp / "out"), "shard_rows": 64, "block_rows": 16},
    })
    return pipeline.prepare(cfg).path


def _tampered(prepared: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    m = json.loads((copy / layout.MANIFEST).read_text())
    edit(m)
    (copy / layout.MANIFEST).write_text(json.dumps(m))
    return copy


@pytest.mark.parametrize("bad", ["../outside.parquet", "train/../../outside.parquet", "/etc/hostname"])
def test_manifest_shard_path_outside_the_dataset_folder_is_refused(prepared, tmp_path, bad):
    def edit(m):
        m["shards"]["train"][0]["path"] = bad

    copy = _tampered(prepared, tmp_path, edit)
    with pytest.raises(DataError, match=r"manifest\.json: train shard path .* is outside the dataset folder"):
        load_manifest(copy)


def test_manifest_shard_path_through_a_link_out_of_the_folder_is_refused(prepared, tmp_path):
    copy = _tampered(prepared, tmp_path, lambda m: m["shards"]["train"][0].update(path="train/link.parquet"))
    outside = tmp_path / "outside.parquet"
    outside.write_bytes(b"")
    (copy / "train" / "link.parquet").symlink_to(outside)
    with pytest.raises(DataError, match="outside the dataset folder"):
        load_manifest(copy)


@pytest.mark.parametrize("bad", ["../../secret", "/tmp/x", "sub/x", ".."])
def test_manifest_side_name_that_is_not_a_plain_file_name_is_refused(prepared, tmp_path, bad):
    def edit(m):
        m["side"][bad] = m["side"].pop("item_popularity")

    copy = _tampered(prepared, tmp_path, edit)
    with pytest.raises(DataError, match="side array name .* is not a plain file name"):
        SideData(copy)


def test_an_untampered_manifest_still_loads(prepared):
    assert load_manifest(prepared)["counts"]["users"] == 20
