"""AtomicCheckpointIO: a save killed mid-write leaves the previous checkpoint loadable; loads refuse pickled objects;
`fusionrec fit` uses it (and the loader-position callback) by default."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from trainer.engine.checkpointing import (
    AtomicCheckpointIO,
    RestoreLoaderPosition,
    atomic_torch_save,
    load_weights_only,
    with_atomic_checkpoint_io,
)

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[3]


def _checkpoint(step: int) -> dict:
    return {"global_step": step, "state_dict": {"w": torch.full((64, 64), float(step))},
            "hyper_parameters": {"model": {"dim": 16}}, "loops": {"combined_loader": [{"epoch": 1, "batches_done": 2}]}}


def test_save_load_round_trip_leaves_no_temp_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint(_checkpoint(3), path)
    io.save_checkpoint(_checkpoint(6), path)  # overwrite
    got = io.load_checkpoint(path)
    assert got["global_step"] == 6 and torch.equal(got["state_dict"]["w"], torch.full((64, 64), 6.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_exception_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(_checkpoint(3), path)

    def broken_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr("trainer.engine.checkpointing.torch.save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint(_checkpoint(6), path)
    assert io.load_checkpoint(path)["global_step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the temp file is cleaned up


KILLED_MID_WRITE = """
import os, signal, sys, torch
import trainer.engine.checkpointing as c
io, path = c.AtomicCheckpointIO(), sys.argv[1]
io.save_checkpoint({"global_step": 3, "state_dict": {"w": torch.zeros(256, 256)}}, path)
real_save = torch.save
def save_then_die(obj, f):
    real_save(obj, f)
    f.flush()
    f.truncate(f.tell() // 2)       # half of the new checkpoint is on disk ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... when the process is killed (no finally, no atexit)
c.torch.save = save_then_die
io.save_checkpoint({"global_step": 6, "state_dict": {"w": torch.ones(256, 256)}}, path)
"""


def test_sigkill_during_a_save_keeps_the_previous_checkpoint(tmp_path):
    """A real SIGKILL while the second save is half written to disk."""
    path = tmp_path / "last.ckpt"
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_MID_WRITE), str(path)], cwd=REPO,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL, p.stderr
    state = load_weights_only(path)
    assert state["global_step"] == 3 and torch.equal(state["state_dict"]["w"], torch.zeros(256, 256))
    # the kill really came mid-write: the half-written temp file is still there, next to the intact checkpoint
    (leftover,) = [f for f in tmp_path.iterdir() if f.name != "last.ckpt"]
    assert leftover.name.startswith(".last.ckpt.tmp-") and 0 < leftover.stat().st_size < path.stat().st_size * 2
    with pytest.raises(Exception):  # noqa: B017 - a truncated zip (torch raises RuntimeError)
        load_weights_only(leftover)


class Payload:
    """Any class: unpickling it means importing and calling code named by the file."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": Payload()}, path)
    io = AtomicCheckpointIO()
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        io.load_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError):
        io.load_checkpoint(path, weights_only=False)  # forced: a flag cannot turn a path into code execution
    with pytest.raises(pickle.UnpicklingError):
        load_weights_only(path)


def test_deepspeed_shards_load_weights_only_under_the_strategy(tmp_path):
    """DeepSpeed's own loader unpickles anything; the fusionrec strategy swaps in a weights_only load."""
    pytest.importorskip("deepspeed")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from trainer.engine.strategies import _weights_only_deepspeed_loads

    evil, fine = tmp_path / "evil_optim_states.pt", tmp_path / "model_states.pt"
    torch.save({"module": {"w": torch.zeros(2)}, "client": Payload()}, evil)
    torch.save({"module": {"w": torch.ones(2)}, "global_steps": 3, "param_shapes": [{"w": torch.Size([2])}]}, fine)
    engine = TorchCheckpointEngine()
    with _weights_only_deepspeed_loads():
        with pytest.raises(pickle.UnpicklingError):
            engine.load(str(evil))
        assert engine.load(str(fine))["global_steps"] == 3
    assert TorchCheckpointEngine.load is not None  # restored afterwards


def test_atomic_torch_save_creates_the_folder(tmp_path):
    atomic_torch_save({"a": torch.arange(3)}, tmp_path / "x" / "y.pt")
    assert torch.equal(load_weights_only(tmp_path / "x" / "y.pt")["a"], torch.arange(3))


def test_plugins_get_atomic_io_unless_a_checkpoint_io_is_given():
    from lightning_fabric.plugins import TorchCheckpointIO

    assert [type(p) for p in with_atomic_checkpoint_io(None)] == [AtomicCheckpointIO]
    mine = TorchCheckpointIO()
    assert with_atomic_checkpoint_io(mine) == [mine]
    assert [type(p) for p in with_atomic_checkpoint_io(["bf16-mixed"])][1:] == [AtomicCheckpointIO]


def test_fusionrec_cli_trainer_uses_atomic_io_and_restores_loader_position(tmp_path, monkeypatch):
    from trainer.engine import lightning_cli

    built = []

    class NoRun(lightning_cli.FusionCLI):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, run=False, **kwargs)
            built.append(self)

    monkeypatch.setattr(lightning_cli, "FusionCLI", NoRun)
    monkeypatch.chdir(REPO)
    lightning_cli.run_lightning_cli(["--config", "configs/tiny.yaml", "--trainer.default_root_dir", str(tmp_path),
                                     "--trainer.logger.init_args.save_dir", str(tmp_path)])
    trainer = built[0].trainer
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert sum(isinstance(c, RestoreLoaderPosition) for c in trainer.callbacks) == 1
