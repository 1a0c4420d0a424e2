"""The collectives the training step needs, in one place (models and losses never touch torch.distributed).

`gather_rows` concatenates a per-rank tensor over all ranks in rank order. With `grad=True` the gather is
differentiable (torch.distributed.nn.functional.all_gather: its backward sums every rank's gradient for this
rank's rows), which is how an in-batch softmax over the *global* batch trains the rows each rank encoded,
as CLIP-style contrastive training does. Ranks may hold different row counts (a kept last partial batch):
rows are padded to the largest count for the collective and the padding is dropped afterwards.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(x: Tensor, grad: bool = False) -> Tensor:
    """(b_r, ...) on each rank r -> (sum_r b_r, ...) on every rank, rank 0's rows first."""
    world = world_size()
    if world == 1:
        return x
    counts = torch.tensor([x.shape[0]], device=x.device)
    all_counts = [torch.zeros_like(counts) for _ in range(world)]
    dist.all_gather(all_counts, counts)
    sizes = [int(c) for c in all_counts]
    most = max(sizes)
    padded = F.pad(x, (0, 0) * (x.dim() - 1) + (0, most - x.shape[0])) if x.shape[0] < most else x
    if grad:
        from torch.distributed.nn.functional import all_gather as all_gather_with_grad

        parts = list(all_gather_with_grad(padded.contiguous()))
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.detach().contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _ShardedLookup(torch.autograd.Function):
    """Rows of a table split row-wise over the ranks, looked up by any ids on every rank (see `sharded_lookup`)."""

    @staticmethod
    def forward(ctx, ids: Tensor, shard: Tensor, lo: int, hi: int) -> Tensor:  # type: ignore[override]
        world, rank = dist.get_world_size(), dist.get_rank()
        counts = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
        dist.all_gather(counts, torch.tensor([ids.numel()], dtype=torch.long))
        sizes = [int(c) for c in counts]
        most = max(sizes)
        padded = F.pad(ids.reshape(-1).cpu(), (0, most - ids.numel()), value=-1)
        every = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(every, padded)
        wanted = torch.cat(every)  # (world * most,) every rank's ids, -1 = padding
        mine = (wanted >= lo) & (wanted < hi)
        rows = torch.zeros(wanted.numel(), shard.shape[1], dtype=shard.dtype, device=shard.device)
        rows[mine.to(shard.device)] = shard[(wanted[mine] - lo).to(shard.device)]
        dist.all_reduce(rows)  # each id's row comes from its owner, zeros from the others
        ctx.save_for_backward(wanted, mine)
        ctx.shape, ctx.lo, ctx.most, ctx.n, ctx.rank = shard.shape, lo, most, ids.numel(), rank
        return rows[rank * most: rank * most + ids.numel()].reshape(*ids.shape, shard.shape[1])

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        wanted, mine = ctx.saved_tensors
        world = dist.get_world_size()
        g = F.pad(grad.reshape(ctx.n, -1), (0, 0, 0, ctx.most - ctx.n)).contiguous()
        every = [torch.empty_like(g) for _ in range(world)]
        dist.all_gather(every, g)
        grads = torch.cat(every)
        out = torch.zeros(ctx.shape, dtype=grad.dtype, device=grad.device)
        out.index_add_(0, (wanted[mine] - ctx.lo).to(grad.device), grads[mine.to(grad.device)])
        return None, out / world, None, None  # / world: the mean over ranks DDP takes of replicated gradients


def sharded_lookup(ids: Tensor, shard: Tensor, lo: int, hi: int) -> Tensor:
    """`table[ids]` for a table whose rows [lo, hi) are `shard` on this rank, other rows on other ranks.

    Every rank must call it, equally often (it is two collectives forward, one backward): all ranks' ids are
    gathered (ids (...,) -> (..., D)), each owner fills its rows, one all-reduce assembles them. Backward sends
    each rank's gradients to the owners, who sum them and divide by the world size, so a sharded table trains as
    the same table replicated under DDP does. Traffic per lookup: world x max(len(ids)) x D values.
    """
    if world_size() == 1:
        return shard[ids - lo]
    return _ShardedLookup.apply(ids, shard, lo, hi)


def gather_shards(shard: Tensor, total: int) -> Tensor:
    """The whole row-sharded table on every rank ((hi - lo, D) each -> (total, D)), for checkpoints and export."""
    return gather_rows(shard.detach())[:total]
