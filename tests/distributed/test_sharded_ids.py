"""Row-sharded id tables (trainer/engine/sharded_embedding.py) on 2 real gloo ranks: lookups and gradients equal a
replicated table's under DDP, and a checkpoint round trip (whole table + Adam moments gathered at save, sliced at
load) restores every rank's rows exactly. `fusionrec fit` with `--model.shard_id_tables true` is compared with plain
ddp and one process in tests/distributed/test_strategies.py."""

from __future__ import annotations

import os
import pickle
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tests.launch_support.local_slurm import free_port
from trainer.engine.sharded_embedding import (
    RowShardedEmbedding,
    gather_into_checkpoint,
    shard_id_tables,
    sharded_tables,
    slice_from_checkpoint,
)
from trainer.model.encoders.id import IdEmbedding

pytestmark = pytest.mark.distributed
N, D = 11, 4  # 11 rows over 2 ranks: 6 + 5


def _table() -> torch.Tensor:
    return torch.randn(N, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _ids(rank: int) -> torch.Tensor:
    # unequal counts, duplicates, ids of both shards on both ranks
    return [torch.tensor([0, 10, 10, 3, 7]), torch.tensor([[5, 6], [0, 10]])][rank]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    res = {}
    full = _table()
    emb = RowShardedEmbedding(full, rank, 2)
    res["rows"] = (emb.lo, emb.hi)
    ids = _ids(rank)
    target = torch.randn(*ids.shape, D, generator=torch.Generator().manual_seed(10 + rank), dtype=torch.float64)
    out_ = emb(ids)
    res["lookup_ok"] = torch.equal(out_, full[ids])
    (out_ * target).sum().backward()
    res["grad"] = emb.weight.grad.clone()
    # a module with two id tables, sharded after build; Adam steps; checkpoint round trip
    torch.manual_seed(1)
    model = nn.ModuleDict({"user": IdEmbedding(7, D), "item": IdEmbedding(N, D)})
    names = shard_id_tables(model, rank, 2)
    res["names"] = names
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(2):
        loss = (model["user"](torch.tensor([0, 6, rank])) ** 2).sum() + model["item"](torch.tensor([1, 9])).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
    ckpt = {"state_dict": {k: v.clone() for k, v in model.state_dict().items()}, "optimizer_states": [opt.state_dict()]}
    gather_into_checkpoint(model, ckpt, [opt])
    res["saved_shapes"] = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    res["saved_moment_shape"] = [tuple(s["exp_avg"].shape) for s in ckpt["optimizer_states"][0]["state"].values()]
    torch.manual_seed(2)  # a fresh model with other initial weights restores this rank's rows
    fresh = nn.ModuleDict({"user": IdEmbedding(7, D), "item": IdEmbedding(N, D)})
    shard_id_tables(fresh, rank, 2)
    slice_from_checkpoint(fresh, ckpt)
    fresh.load_state_dict(ckpt["state_dict"])
    opt2 = torch.optim.Adam(fresh.parameters(), lr=0.1)
    opt2.load_state_dict(ckpt["optimizer_states"][0])
    res["restored"] = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    res["moments"] = all(torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[q]["exp_avg_sq"])
                         for p, q in zip(model.parameters(), fresh.parameters()))
    res["tables"] = sorted(sharded_tables(model))
    with open(os.path.join(out, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(res, f)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    return [pickle.loads((out / f"rank{r}.pkl").read_bytes()) for r in range(2)]


def test_rows_are_split_and_lookups_return_the_whole_tables_rows(results):
    assert [r["rows"] for r in results] == [(0, 6), (6, 11)]
    assert all(r["lookup_ok"] for r in results)


def test_gradients_are_the_ddp_mean_of_the_replicated_tables_gradients(results):
    full = _table().requires_grad_(True)
    total = 0
    for rank in range(2):
        ids = _ids(rank)
        target = torch.randn(*ids.shape, D, generator=torch.Generator().manual_seed(10 + rank), dtype=torch.float64)
        total = total + (full[ids] * target).sum()
    (total / 2).backward()  # DDP: each rank's gradient, averaged over the 2 ranks
    got = torch.cat([results[0]["grad"], results[1]["grad"]])
    torch.testing.assert_close(got, full.grad, rtol=1e-12, atol=1e-12)


def test_a_checkpoint_holds_whole_tables_and_restores_each_ranks_rows(results):
    for r in results:
        assert r["names"] == ["user.embedding.weight", "item.embedding.weight"]
        assert r["saved_shapes"] == {"user.embedding.weight": (7, D), "item.embedding.weight": (N, D)}
        assert sorted(r["saved_moment_shape"]) == [(7, D), (N, D)]
        assert r["restored"] and r["moments"]
        assert r["tables"] == ["item.embedding.weight", "user.embedding.weight"]
