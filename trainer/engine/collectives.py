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
