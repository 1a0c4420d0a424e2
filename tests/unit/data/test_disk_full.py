"""Disk full (ENOSPC) in the middle of a write, injected in-process (no root, no tiny filesystem needed): during
preparation the previous prepared folder survives byte for byte and a later run completes; during a Lightning
checkpoint save the previous checkpoint still loads and training resumes from it to the uninterrupted result."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.demos.boring_classes import BoringModel

from data_modules.errors import DataError
from data_modules.manifest import load_manifest, verify_checksums
from data_modules.prepare import pipeline
from data_modules.prepare.config import PrepareConfig
from trainer.engine.checkpointing import AtomicCheckpointIO, load_weights_only

pytestmark = pytest.mark.unit
FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "tiny"


def config(out: Path, seed: int = 2020) -> PrepareConfig:
    return PrepareConfig.from_dict({
        "source": {"format": "recbole", "path": str(FIXTURE), "name": "tiny"},
        "clean": {"rating_range": [1, 5], "max_bad_fraction": 0.05},
        "split": {"protocol": "recbole", "seed": seed},
        "output": {"dir": str(out), "shard_rows": 64, "block_rows": 16},
    })


def disk_full_after(n_ok: int, real, target: int):
    """A stand-in for `real` (np.save: target=0, the file is its first argument; torch.save: target=1) that works
    `n_ok` times, then writes a few bytes and raises ENOSPC, as a full disk does part-way through a write."""
    calls = {"n": 0}

    def write(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= n_ok:
            return real(*args, **kwargs)
        f = args[target]
        if isinstance(f, (str, Path)):
            Path(f).write_bytes(b"\x93NUMPY half an array")
        else:
            f.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write, calls


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_disk_full_during_preparation_keeps_the_previous_folder_and_a_rerun_completes(tmp_path, monkeypatch):
    out = tmp_path / "tiny"
    pipeline.prepare(config(out))
    before = snapshot(out)
    save, calls = disk_full_after(2, np.save, 0)  # the third side array hits a full disk
    monkeypatch.setattr("data_modules.prepare.write.np.save", save)
    with pytest.raises(DataError, match=rf"No space left on device while preparing {out}: the temporary folder "
                                        rf"was removed and the prepared folder {out} is unchanged"):
        pipeline.prepare(config(out, seed=7))  # a changed option: a rebuild
    assert calls["n"] == 3
    assert snapshot(out) == before  # byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no temporary folder, no lock file
    verify_checksums(out, load_manifest(out))
    monkeypatch.undo()  # space freed
    again = pipeline.prepare(config(out, seed=7))
    assert not again.reused and load_manifest(out)["split"]["seed"] == 7


def test_disk_full_during_a_first_preparation_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("data_modules.prepare.write.np.save", disk_full_after(0, np.save, 0)[0])
    with pytest.raises(DataError, match="No space left on device .* nothing was written"):
        pipeline.prepare(config(tmp_path / "tiny"))
    assert list(tmp_path.iterdir()) == []


def fit(root: Path, max_epochs: int, ckpt_path: str | None = None) -> tuple[pl.Trainer, BoringModel]:
    pl.seed_everything(0)
    model = BoringModel()
    trainer = pl.Trainer(default_root_dir=root, max_epochs=max_epochs, limit_train_batches=4, limit_val_batches=1,
                         num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         plugins=[AtomicCheckpointIO()],
                         callbacks=[ModelCheckpoint(dirpath=root / "ckpts", save_last=True, save_top_k=1)])
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer, model


def test_disk_full_during_a_checkpoint_save_keeps_the_previous_one_and_resume_loses_nothing(tmp_path, monkeypatch):
    _, reference = fit(tmp_path / "uninterrupted", max_epochs=3)

    root = tmp_path / "run"
    save, calls = disk_full_after(2, torch.save, 1)  # epoch 0 saves epoch=0-step=4.ckpt and last.ckpt; epoch 1 fails
    monkeypatch.setattr("trainer.engine.checkpointing.torch.save", save)
    with pytest.raises(OSError, match=r"No space left on device while writing checkpoint .*epoch=1-step=8\.ckpt: "
                                      r"nothing was replaced") as err:
        fit(root, max_epochs=3)
    assert err.value.errno == errno.ENOSPC and calls["n"] == 3
    monkeypatch.undo()
    ckpts = root / "ckpts"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch=0-step=4.ckpt", "last.ckpt"]  # no half-written file
    last = load_weights_only(ckpts / "last.ckpt")
    assert last["epoch"] == 0 and last["global_step"] == 4

    _, resumed = fit(root, max_epochs=3, ckpt_path=str(ckpts / "last.ckpt"))
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the same weights as the run that never hit a full disk
