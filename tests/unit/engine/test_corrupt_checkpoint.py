"""A truncated or damaged checkpoint file is a CheckpointCorruptError naming it — from the loaders, from a
Lightning resume, and from `fusionrec fit --ckpt_path`, `test`, `predict` and `export` — never a miniz or
unpickler trace, and a flipped bit in a tensor (which torch.load accepts silently) is caught by the CRC-32s."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.demos.boring_classes import BoringModel

from trainer.engine.checkpointing import AtomicCheckpointIO, CheckpointCorruptError, load_weights_only

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[3]


def good_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.arange(4096, dtype=torch.float32)}, "global_step": 3,
                "hyper_parameters": {"dim": 16}}, buf)
    return buf.getvalue()


def flip_in(member: str):
    def damage(data: bytes) -> bytes:
        info = next(i for i in zipfile.ZipFile(io.BytesIO(data)).infolist() if i.filename.endswith(member))
        out = bytearray(data)
        out[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2] ^= 0x01
        return bytes(out)
    return damage


DAMAGE = {
    "truncated_half": lambda d: d[: len(d) // 2],
    "truncated_tail": lambda d: d[:-8],
    "empty": lambda d: b"",
    "not_a_checkpoint": lambda d: b"epoch,loss\n0,1.5\n" * 20,
    "bit_in_a_tensor": flip_in("data/0"),  # torch.load alone returns the wrong weights without a word
    "bit_in_the_pickle": flip_in("data.pkl"),
}


@pytest.fixture(params=sorted(DAMAGE))
def damaged(request, tmp_path) -> Path:
    path = tmp_path / f"{request.param}.ckpt"
    path.write_bytes(DAMAGE[request.param](good_bytes()))
    return path


def test_damaged_checkpoint_is_a_clear_error_naming_the_file(damaged):
    for load in (load_weights_only, AtomicCheckpointIO().load_checkpoint):
        with pytest.raises(CheckpointCorruptError, match=rf"checkpoint {damaged}.* damaged") as err:
            load(damaged)
        assert err.value.__context__ is None or err.value.__suppress_context__  # no miniz / unpickler trace chained under it


def test_an_intact_checkpoint_still_loads(tmp_path):
    path = tmp_path / "good.ckpt"
    path.write_bytes(good_bytes())
    assert load_weights_only(path)["global_step"] == 3


def test_lightning_resume_from_a_damaged_checkpoint_names_it(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(good_bytes()[:-100])
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, plugins=[AtomicCheckpointIO()])
    with pytest.raises(CheckpointCorruptError, match=rf"checkpoint {path} .*truncated or damaged"):
        trainer.fit(BoringModel(), ckpt_path=str(path))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from data_modules.prepare import pipeline
    from data_modules.prepare.config import PrepareConfig

    cfg = PrepareConfig.from_yaml(REPO / "configs" / "data" / "tiny.yaml")
    cfg.source.path = str(REPO / cfg.source.path)
    cfg.output.dir = str(tmp_path_factory.mktemp("tiny") / "data")
    return pipeline.prepare(cfg).path


@pytest.mark.parametrize("subcommand", ["fit", "test", "predict"])
def test_fusionrec_commands_name_a_damaged_checkpoint(subcommand, tiny_data, tmp_path, monkeypatch, capsys):
    from trainer.cli import main

    monkeypatch.chdir(REPO)  # the shipped config's paths are relative to the repository
    path = tmp_path / "last.ckpt"
    path.write_bytes(good_bytes()[: 2000])
    try:
        rc = main([subcommand, "--config", "configs/tiny.yaml", "--data.dataset_dir", str(tiny_data),
                   "--trainer.default_root_dir", str(tmp_path / "root"),
                   "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--ckpt_path", str(path)])
    except CheckpointCorruptError as e:  # raised through LightningCLI, or ...
        message = str(e)
    else:  # ... printed as a one-line error by trainer/cli.py
        assert rc == 2
        message = capsys.readouterr().err
    assert re.search(rf"checkpoint {re.escape(str(path))} .*truncated or damaged", message), message


def test_fusionrec_export_names_a_damaged_checkpoint(tiny_data, tmp_path, monkeypatch, capsys):
    from trainer.cli import main

    monkeypatch.chdir(REPO)
    run = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    run["data"]["dataset_dir"] = str(tiny_data)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(run))  # where Lightning saves a run's config
    path = tmp_path / "best.ckpt"
    path.write_bytes(flip_in("data/0")(good_bytes()))
    assert main(["export", str(path), "--out", str(tmp_path / "export"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"fusionrec export: error: checkpoint {path}: its part" in err and "fails its CRC-32 check" in err
    assert not (tmp_path / "export").exists() or not any((tmp_path / "export").iterdir())
