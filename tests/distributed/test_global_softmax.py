"""The in-batch softmax at 2 ranks x B/2 has the loss and gradients of 1 rank x B (issue: per-rank negatives).

Two real gloo ranks run `global_candidates` (the training step's gather + mixed log Q) and the sampled softmax
on halves of one batch of 8 rows with 3 sampled negatives each; the gradients are averaged over ranks as DDP
and ZeRO do. One process runs the same code on all 8 rows. Tolerance: 1e-6 relative (float64 here; the only
difference is summation order). An uneven split (5 + 3 rows, a kept last partial batch) still sees all 8
candidates on every rank. Without the gather each rank's softmax sees 4 candidates and the loss differs.
"""

from __future__ import annotations

import os
import pickle
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer.engine.module import global_candidates
from trainer.model.losses import SampledSoftmaxLoss, Scores

pytestmark = pytest.mark.distributed
N_ITEMS, DIM, B, N = 12, 4, 8, 3


def _problem():
    g = torch.Generator().manual_seed(0)
    users = torch.randn(6, DIM, generator=g, dtype=torch.float64)
    items = torch.randn(N_ITEMS, DIM, generator=g, dtype=torch.float64)
    pop = torch.randint(1, 20, (N_ITEMS,), generator=g).double()
    batch = {
        "user": torch.randint(0, 6, (B,), generator=g),
        "item": torch.tensor([0, 3, 3, 5, 7, 7, 1, 11]),  # duplicates across the two halves
        "neg_items": torch.randint(0, N_ITEMS, (B, N), generator=g),
    }
    batch["neg_items"][0, 0] = batch["item"][0]  # an accidental hit
    uniform = torch.full((N_ITEMS,), 1.0 / N_ITEMS, dtype=torch.float64).log()
    batch["pos_logq"] = uniform[batch["item"]]
    batch["neg_logq"] = uniform[batch["neg_items"]]
    return users, items, (pop / pop.sum()).log(), batch


def _loss(users_w, items_w, log_pop, batch):
    user = users_w[batch["user"]]
    pos = items_w[batch["item"]]
    neg = items_w[batch["neg_items"]]
    candidates, b = global_candidates(pos, batch, log_pop)
    return SampledSoftmaxLoss(temperature=0.5)(Scores.from_vectors(user, pos, neg, b, candidates=candidates))


def _single(rows=slice(None)):
    users, items, log_pop, batch = _problem()
    users.requires_grad_(True)
    items.requires_grad_(True)
    loss = _loss(users, items, log_pop, {k: v[rows] for k, v in batch.items()})
    loss.backward()
    return loss.item(), users.grad, items.grad


def _rank(rank: int, port: int, split: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        users, items, log_pop, batch = _problem()
        users.requires_grad_(True)
        items.requires_grad_(True)
        rows = slice(0, split) if rank == 0 else slice(split, B)
        loss = _loss(users, items, log_pop, {k: v[rows] for k, v in batch.items()})
        loss.backward()
        # DDP / ZeRO: gradients averaged over ranks; the reported loss: the mean over ranks
        for g in (users.grad, items.grad):
            dist.all_reduce(g)
            g /= 2
        total = loss.detach().clone()
        dist.all_reduce(total)
        with open(f"{out}.{rank}", "wb") as f:
            pickle.dump((float(total) / 2, users.grad, items.grad), f)
    finally:
        dist.destroy_process_group()


def _two_ranks(tmp_path, split: int):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank")
    mp.start_processes(_rank, args=(port, split, out), nprocs=2, start_method="spawn")
    results = []
    for r in range(2):
        with open(f"{out}.{r}", "rb") as f:
            results.append(pickle.load(f))
    return results


def test_two_ranks_half_batches_match_one_rank_full_batch(tmp_path):
    loss, gu, gi = _single()
    for r_loss, r_gu, r_gi in _two_ranks(tmp_path, split=4):
        assert r_loss == pytest.approx(loss, rel=1e-6)
        torch.testing.assert_close(r_gu, gu, rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(r_gi, gi, rtol=1e-6, atol=1e-12)
    # the per-rank objective this replaces is a different one: half the candidates
    half = (_single(slice(0, 4))[0] + _single(slice(4, 8))[0]) / 2
    assert abs(half - loss) > 1e-3


def test_uneven_split_gathers_every_candidate(tmp_path):
    # 5 + 3 rows: each rank's loss is a mean over its own rows, so compare the per-row sum instead
    (l0, *_), (l1, *_) = _two_ranks(tmp_path, split=5)
    assert l0 == pytest.approx(l1)  # both ranks report the same mean over ranks
    users, items, log_pop, batch = _problem()
    per_row = []
    for rows in (slice(0, 5), slice(5, 8)):
        # the single-process loss restricted to these rows, over all 8 candidates
        user = users[batch["user"]]
        pos = items[batch["item"]]
        neg = items[batch["neg_items"]]
        candidates, b = global_candidates(pos, batch, log_pop)
        local = {k: v if k.startswith("cand_") else v[rows] for k, v in b.items()}  # candidates stay global
        s = Scores.from_vectors(user[rows], pos[rows], neg[rows], local, candidates=candidates)
        per_row.append(float(SampledSoftmaxLoss(temperature=0.5)(s)))
    assert l0 == pytest.approx(sum(per_row) / 2, rel=1e-6)
