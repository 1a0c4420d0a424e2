"""DeepSpeed checkpoint folders carry a sha256 manifest written last: a folder verifies exactly when every file is
as saved, and a truncated, changed or missing file, an unfinished save (no manifest) or a damaged manifest is a
CheckpointCorruptError naming it. The manifest is `sha256sum -c`'s format (the launchers check folders with it).
The real save path (FusionDeepSpeedStrategy under ZeRO-2, 2 ranks) is tests/e2e/test_elastic_zero.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from trainer.engine.checkpoint_checksums import (
    MANIFEST,
    invalidate_checksums,
    main,
    verify_checksums,
    write_checksums,
)
from trainer.engine.checkpointing import CheckpointCorruptError

pytestmark = pytest.mark.unit


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder shaped like a ZeRO checkpoint, with real torch files."""
    ckpt = tmp_path / "last.ckpt"
    (ckpt / "checkpoint").mkdir(parents=True)
    torch.save({"module": {"w": torch.arange(1000.0)}}, ckpt / "checkpoint" / "mp_rank_00_model_states.pt")
    for r in (0, 1):
        torch.save({"optimizer_state_dict": {"p": torch.ones(500) * r}},
                   ckpt / "checkpoint" / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
    (ckpt / "latest").write_text("checkpoint")
    write_checksums(ckpt)
    return ckpt


def test_manifest_lists_every_file_and_verifies(folder):
    lines = (folder / MANIFEST).read_text().splitlines()
    assert [ln.split("  ", 1)[1] for ln in lines] == [
        "checkpoint/mp_rank_00_model_states.pt", "checkpoint/zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "checkpoint/zero_pp_rank_1_mp_rank_00_optim_states.pt", "latest"]
    verify_checksums(folder)
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name]  # the temp file was renamed


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="coreutils sha256sum not installed")
def test_manifest_is_sha256sum_format(folder):
    p = subprocess.run(["sha256sum", "--strict", "-c", MANIFEST], cwd=folder, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.count(": OK") == 4, p.stdout + p.stderr


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip, Path.unlink])
def test_a_damaged_or_missing_file_is_named(folder, damage):
    shard = folder / "checkpoint" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    damage(shard)
    what = "is missing" if not shard.exists() else rf"\({shard.stat().st_size} bytes\) fails its sha256 check"
    with pytest.raises(CheckpointCorruptError,
                       match=rf"folder {folder}: checkpoint/zero_pp_rank_1_mp_rank_00_optim_states\.pt {what}"):
        verify_checksums(folder)


def test_an_unfinished_save_has_no_manifest_and_is_refused(folder):
    invalidate_checksums(folder)  # what a save does first; a kill before the manifest leaves the folder so
    assert not (folder / MANIFEST).exists()
    with pytest.raises(CheckpointCorruptError, match=rf"{folder} has no {MANIFEST}: .* the save did not finish"):
        verify_checksums(folder)


@pytest.mark.parametrize("line", ["not a checksum line", "0" * 64 + "  ../../etc/passwd", "0" * 64 + "  /abs"])
def test_a_damaged_or_escaping_manifest_is_refused(folder, line):
    with open(folder / MANIFEST, "a") as f:
        f.write(line + "\n")
    with pytest.raises(CheckpointCorruptError, match=rf"{MANIFEST}, line 5: not '<sha256>  <relative path>'"):
        verify_checksums(folder)


def test_command_line_verify_and_write(folder, capsys):
    main(["verify", str(folder)])
    assert "every file matches" in capsys.readouterr().out
    _truncate(folder / "latest")
    with pytest.raises(SystemExit, match=r"latest \(3 bytes\) fails its sha256 check"):
        main(["verify", str(folder)])
