"""`fusionrec export`'s ZeRO consolidation on real DeepSpeed checkpoint folders (2 gloo CPU ranks, ZeRO-2 and
ZeRO-3): the weights-only merge equals DeepSpeed's own `zero_to_fp32` (which unpickles anything, fine on a folder
this test wrote itself), and the client state is found for either stage's file names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.env import child_env
from tests.launch_support.local_slurm import free_port

pytestmark = pytest.mark.distributed

PROBE = Path(__file__).resolve().parent / "zero_save_probe.py"


@pytest.mark.parametrize("stage", [2, 3])
def test_weights_only_consolidation_equals_deepspeeds_own(tmp_path, stage):
    pytest.importorskip("deepspeed")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    out = tmp_path / "last.ckpt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(PROBE), str(stage), str(out)]
    p = subprocess.run(cmd, env=child_env(DS_ACCELERATOR="cpu"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from trainer.engine.strategies import consolidate_zero_checkpoint, zero_client_state

    ours, theirs = consolidate_zero_checkpoint(out), get_fp32_state_dict_from_zero_checkpoint(str(out))
    assert sorted(ours) == sorted(theirs) == ["0.weight", "1.bias", "1.weight"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert ours["0.weight"].shape == (11, 6)  # whole, not one rank's partition
    client = zero_client_state(out)
    assert client["epoch"] == 1 and client["fusionrec_dataset"] == {"fingerprint": "f"}
