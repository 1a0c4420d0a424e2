"""torchrun on loopback: two agents as two nodes of a c10d rendezvous, and launch/torchrun.sh on 2 CPU ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launch_support.local_slurm import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "tests" / "distributed" / "ddp_probe.py"
TINY = REPO / "configs" / "tiny.yaml"
ENV = {
    **os.environ,
    "GLOO_SOCKET_IFNAME": "lo",
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
for _k in [
    k for k in ENV if k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "TORCHELASTIC_"))
]:
    del ENV[_k]  # a test run inside a Slurm job or torchrun must not leak that launcher's env


def test_two_torchrun_agents_form_one_world_by_c10d_rendezvous(tmp_path):
    out, port = tmp_path / "probe", free_port()
    agents = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(node),
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                f"127.0.0.1:{port}",
                "--rdzv_id",
                "probe",
                "--local_addr",
                "127.0.0.1",
                "--max_restarts",
                "0",
                str(PROBE),
                str(out),
            ],
            cwd=tmp_path,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    logs = []
    try:
        for a in agents:
            logs.append(a.communicate(timeout=80)[0])
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
    assert [a.returncode for a in agents] == [0, 0], "\n".join(logs)
    records = [json.loads(f.read_text()) for f in sorted(out.glob("rank*.json"))]
    assert [r["rank"] for r in records] == [0, 1], logs
    assert all(r["world_size"] == 2 and r["sum"] == 3.0 and r["launcher"] == "torchrun" for r in records), (
        records
    )
    assert [r["local_rank"] for r in records] == [0, 0]  # one process per "node"


@pytest.mark.skipif(
    not TINY.exists(), reason="configs/tiny.yaml (the lead's tiny LightningModule config) not written yet"
)
def test_torchrun_sh_fits_tiny_config_on_two_cpu_ranks(tmp_path):
    p = subprocess.run(
        [
            "bash",
            str(REPO / "launch" / "torchrun.sh"),
            "fit",
            "--config",
            str(TINY),
            "--strategy_name",
            "ddp",
            "--trainer.max_epochs",
            "1",
            "--data.dataset_dir",
            str(tmp_path / "prepared"),
            "--trainer.default_root_dir",
            str(tmp_path / "runs"),
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"),
        ],
        # configs/tiny.yaml's inputs are relative to the repository; every output goes to tmp_path
        cwd=REPO,
        env={**ENV, "NPROC_PER_NODE": "2", "ACCELERATOR": "cpu"},
        capture_output=True,
        text=True,
        timeout=85,
    )
    log = p.stdout + p.stderr
    assert p.returncode == 0, log
    assert "--trainer.devices 2 --trainer.num_nodes 1" in log, log
    lasts = sorted(tmp_path.rglob("last*.ckpt"))
    events = sorted(tmp_path.rglob("events.out.tfevents.*"))
    assert len(lasts) == 1 and len(events) == 1, (lasts, events, log)  # written by rank 0 only
    assert "TensorBoard logs:" in log, log
