"""`sbatch` + `srun` on a real one-node Slurm cluster (tests/launch_support/local_slurm.py).

Needs root and Debian's slurm-wlm + munge (CI installs them); skips with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.launch_support.local_slurm import LocalSlurm, free_port, unavailable_reason

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "tests" / "distributed" / "ddp_probe.py"
SBATCH = REPO / "launch" / "slurm.sbatch"
TINY = REPO / "configs" / "tiny.yaml"
# loopback only: rendezvous address, and the interface gloo binds
LOOPBACK = {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def slurm():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with LocalSlurm() as cluster:
        yield cluster


def _job_output(tmp_path: Path, pattern: str) -> str:
    outs = sorted(tmp_path.glob(pattern))
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in outs)


def test_sbatch_srun_starts_two_ranks_that_all_reduce(slurm, tmp_path):
    out = tmp_path / "probe"
    job = tmp_path / "probe.sh"
    job.write_text(f"#!/bin/bash\nsrun {sys.executable} {PROBE} {out}\n")
    env = {**LOOPBACK, "MASTER_PORT": str(free_port())}
    p = slurm.sbatch_wait(
        ["-N1", "-n2", "--output", str(tmp_path / "probe-%j.out"), str(job)],
        cwd=tmp_path,
        env=env,
        timeout=80,
    )
    log = _job_output(tmp_path, "probe-*.out")
    assert p.returncode == 0, f"{p.stdout}\n{p.stderr}\n{log}\n{slurm.logs()}"
    records = [json.loads(f.read_text()) for f in sorted(out.glob("rank*.json"))]
    assert [r["rank"] for r in records] == [0, 1], log
    assert all(r["world_size"] == 2 and r["launcher"] == "slurm" for r in records), records
    assert all(r["sum"] == 3.0 == r["expected"] for r in records), records  # (0+1) + (1+1)
    assert len({r["pid"] for r in records}) == 2


def _fit_with_sbatch(slurm, tmp_path: Path, max_epochs: int, tag: str) -> str:
    """Submit launch/slurm.sbatch with 2 CPU tasks from tmp_path; return the job's output."""
    # submitted from the repository (configs/tiny.yaml's relative inputs); every output goes to tmp_path
    args = [
        "-N1",
        "-n2",
        "--ntasks-per-node",
        "2",
        "--output",
        str(tmp_path / f"{tag}-%j.out"),
        str(SBATCH),
        "fit",
        "--config",
        str(TINY),
        "--strategy_name",
        "ddp",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_epochs",
        str(max_epochs),
        "--data.dataset_dir",
        str(tmp_path / "prepared"),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
    ]
    env = {
        **LOOPBACK,
        "MASTER_PORT": str(free_port()),
        "RUN_DIR": str(tmp_path / "runs"),
        "FUSIONREC": str(REPO / ".venv" / "bin" / "fusionrec") if (REPO / ".venv").exists() else "fusionrec",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    p = slurm.sbatch_wait(args, cwd=REPO, env=env, timeout=85)
    log = _job_output(tmp_path, f"{tag}-*.out")
    assert p.returncode == 0, f"{p.stdout}\n{p.stderr}\n{log}\n{slurm.logs()}"
    return log


@pytest.mark.skipif(
    not TINY.exists(), reason="configs/tiny.yaml (the lead's tiny LightningModule config) not written yet"
)
def test_slurm_sbatch_trains_on_two_tasks_and_resumes_after_requeue(slurm, tmp_path):
    import torch

    runs = tmp_path / "runs"
    log = _fit_with_sbatch(slurm, tmp_path, max_epochs=1, tag="first")
    assert "starting fresh" in log, log
    assert "2 task(s)" in log, log
    lasts = sorted(runs.rglob("last*.ckpt"))
    events = sorted(runs.rglob("events.out.tfevents.*"))
    # rank 0 alone writes: one last checkpoint, one event file, in one logger version
    assert len(lasts) == 1 and len(events) == 1, (lasts, events, log)
    assert "TensorBoard logs:" in log and f"last checkpoint {lasts[0]}" in log, log
    first = torch.load(lasts[0], map_location="cpu", weights_only=False)

    # a requeue runs the same batch script again: it must pick up the last checkpoint, not start over
    log2 = _fit_with_sbatch(slurm, tmp_path, max_epochs=2, tag="second")
    m = re.search(r"resuming from the last checkpoint in the run dir: --ckpt_path (\S+)", log2)
    assert m and Path(m.group(1)) == lasts[0], log2
    assert "Restoring states from the checkpoint path" in log2, log2
    newest = max(runs.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    second = torch.load(newest, map_location="cpu", weights_only=False)
    assert second["epoch"] == first["epoch"] + 1 and second["global_step"] > first["global_step"], (
        first["epoch"],
        first["global_step"],
        second["epoch"],
        second["global_step"],
    )
