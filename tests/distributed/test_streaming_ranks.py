"""Two real gloo ranks, each with a 2-worker DataLoader: every training row is seen once in an epoch."""

from __future__ import annotations

import os
import pickle
import socket
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from data_modules.streaming import TrainStream
from tests.helpers.tiny_dataset import row_keys, write_tiny_dataset

pytestmark = pytest.mark.distributed

WORLD_SIZE, WORKERS = 2, 2
SETTINGS = dict(
    global_batch_size=64, history_len=5, num_negatives=2, seed=5, buffer_blocks=3, drop_last=False
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_rank(rank: int, root: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60))
    try:
        stream = TrainStream(root, rank=rank, world_size=dist.get_world_size(), **SETTINGS)
        loader = DataLoader(stream, batch_size=None, num_workers=WORKERS)
        # batch i of the loader comes from worker i % WORKERS (round robin from worker 0)
        seen = [
            (
                rank,
                i % WORKERS,
                np.stack([b["user"].numpy(), b["item"].numpy(), b["seq_pos"].numpy()], axis=1),
            )
            for i, b in enumerate(loader)
        ]
        gathered: list[list | None] = [None] * WORLD_SIZE
        dist.all_gather_object(gathered, seen)
        if rank == 0:
            Path(out).write_bytes(pickle.dumps(gathered))
    finally:
        dist.destroy_process_group()


def test_two_ranks_with_two_workers_see_every_row_exactly_once(tmp_path):
    data = write_tiny_dataset(tmp_path / "tiny")
    out = tmp_path / "seen.pkl"
    mp.spawn(_run_rank, args=(str(data.root), _free_port(), str(out)), nprocs=WORLD_SIZE, join=True)
    gathered = pickle.loads(out.read_bytes())

    parts: dict[tuple[int, int], set[int]] = {}
    for per_rank in gathered:
        for rank, worker, triples in per_rank:
            parts.setdefault((rank, worker), set()).update(row_keys(triples[:, 0], triples[:, 2]).tolist())
    assert sorted(parts) == [(r, w) for r in range(WORLD_SIZE) for w in range(WORKERS)]
    assert sum(len(p) for p in parts.values()) == data.n_rows  # disjoint ...
    assert set().union(*parts.values()) == set(data.keys().tolist())  # ... and complete

    # rank 0's rows then rank 1's rows of each batch are the global batch of a single process
    single = [
        torch.stack([b["user"], b["item"], b["seq_pos"]], dim=1).numpy()
        for b in TrainStream(data.root, **SETTINGS)
    ]
    merged = [np.concatenate([r0[2], r1[2]]) for r0, r1 in zip(*gathered)]
    assert len(merged) == len(single) and all(np.array_equal(a, b) for a, b in zip(merged, single))
