"""Memory and step time of a large id table replicated under DDP vs row-sharded over the ranks (2 gloo CPU ranks).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sharded_ids_memory.py --rows 2000000 --dim 64 \
        --json benchmarks/results/sharded_ids_memory.json

Each rank builds the same (rows, dim) fp32 IdEmbedding from one seed; `replicated` wraps it in DDP, `sharded` keeps
rows [r * rows / 2, (r + 1) * rows / 2) (trainer/engine/sharded_embedding.py). Both train --steps Adam steps on
--batch random ids per rank (a dot-product loss against random targets; sparse ids, dense Adam as fusionrec uses).
Printed per mode: the bytes each rank holds in table + gradient + Adam moments after training, the largest rank's
peak RSS (ru_maxrss: includes the full table built once at init before the slice is kept), and ms per step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _worker(rank: int, a: argparse.Namespace, port: int, mode: str, out: str) -> None:
    from trainer.engine.sharded_embedding import shard_id_tables
    from trainer.model.encoders.id import IdEmbedding

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=600))
    torch.manual_seed(0)
    model = IdEmbedding(a.rows, a.dim)
    if mode == "sharded":
        shard_id_tables(model, rank, 2)  # the lookup averages the gradients itself
        net: torch.nn.Module = model
    else:
        net = torch.nn.parallel.DistributedDataParallel(model)  # all-reduces the whole table's gradient
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(rank)
    times = []
    for _ in range(a.steps):
        ids = torch.randint(0, a.rows, (a.batch,), generator=g)
        target = torch.randn(a.batch, a.dim, generator=g)
        t = time.perf_counter()
        loss = (net(ids) * target).sum(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        times.append(time.perf_counter() - t)
    held = sum(p.numel() * 4 * 2 for p in model.parameters()) + sum(
        v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    rec = {"rank": rank, "held_bytes": held, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "ms_per_step": 1000 * sorted(times[1:])[len(times[1:]) // 2]}
    Path(out, f"{mode}-{rank}.json").write_text(json.dumps(rec))
    dist.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--out", default="/tmp/sharded_ids_memory")
    p.add_argument("--json")
    a = p.parse_args()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    from tests.launch_support.local_slurm import free_port

    rows = {}
    for mode in ("replicated", "sharded"):
        mp.spawn(_worker, args=(a, free_port(), mode, a.out), nprocs=2, join=True)
        recs = [json.loads(Path(a.out, f"{mode}-{r}.json").read_text()) for r in range(2)]
        rows[mode] = {"held_gib_per_rank": max(r["held_bytes"] for r in recs) / 2**30,
                      "peak_rss_gib_max_rank": max(r["peak_rss_bytes"] for r in recs) / 2**30,
                      "ms_per_step": max(r["ms_per_step"] for r in recs)}
        print(mode, json.dumps(rows[mode]), flush=True)
    table = a.rows * a.dim * 4 / 2**30
    print(f"\n{a.rows:,} x {a.dim} fp32 table = {table:.2f} GiB; 2 gloo ranks, batch {a.batch}/rank, Adam")
    print("| mode | table + grad + Adam per rank (GiB) | peak RSS, max rank (GiB) | ms / step |\n|---|---|---|---|")
    for mode, r in rows.items():
        print(f"| {mode} | {r['held_gib_per_rank']:.2f} | {r['peak_rss_gib_max_rank']:.2f} | {r['ms_per_step']:.0f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": a.rows, "dim": a.dim, "batch": a.batch, "table_gib": table, **rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
