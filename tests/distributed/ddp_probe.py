"""Launcher probe: join the process group the launcher describes, all_reduce, write one JSON line per rank.

    torchrun --nproc_per_node 2 tests/distributed/ddp_probe.py OUT_DIR
    srun -n 2 python tests/distributed/ddp_probe.py OUT_DIR        (inside an sbatch job)

Rank and world size come from torchrun's env:// variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or, when
those are absent, from Slurm's (SLURM_PROCID, SLURM_NTASKS; MASTER_ADDR defaults to 127.0.0.1 and MASTER_PORT
to one derived from SLURM_JOB_ID). Each rank contributes rank + 1, so the all_reduce sum is n(n+1)/2. Writes
OUT_DIR/rank<R>.json: {"rank", "world_size", "sum", "expected", "launcher", "local_rank", "host", "pid"}.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


def _from_launcher() -> tuple[str, int, int, int]:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return "torchrun", int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env:
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        return "slurm", int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    raise SystemExit("ddp_probe: no launcher environment (neither RANK/WORLD_SIZE nor SLURM_PROCID is set)")


def main(out_dir: str) -> None:
    launcher, rank, world_size, local_rank = _from_launcher()
    dist.init_process_group(
        "gloo", init_method="env://", rank=rank, world_size=world_size, timeout=timedelta(seconds=60)
    )
    try:
        t = torch.tensor([float(rank + 1)])
        dist.all_reduce(t)
        record = {
            "rank": dist.get_rank(),
            "world_size": dist.get_world_size(),
            "sum": t.item(),
            "expected": world_size * (world_size + 1) / 2,
            "launcher": launcher,
            "local_rank": local_rank,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{rank}.json").write_text(json.dumps(record) + "\n")
        print(f"ddp_probe: {json.dumps(record)}", flush=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
