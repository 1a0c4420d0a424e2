"""Exact top-K over item blocks with a running merge, so ranking memory is (B x block), not (B x n_items).

The order is total and defined: score descending, then the item's position in a fixed seeded permutation (the tie
order, trainer/engine/metrics.py). `torch.topk` alone does not give it: CPU topk selects with
partial_sort / nth_element on values only and CUDA with a radix select, so which of several tied items it returns
(and in what order) is an accident of the kernel. Here every (score, tie position) pair becomes one int64 key,
unique per item, and topk over keys is unambiguous; so the answer is the same whatever the block size, one block
(dense) included, on any device.

Keys are built only where needed: each block is cut with a plain float topk(k + 1), which is exact as a set unless
the k-th and (k + 1)-th scores are equal; only rows with such a tie at the cut are re-ranked by keys over the
whole block. Continuous model scores almost never tie, so the cost stays that of a float topk per block.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

_LOW = (1 << 32) - 1
ScoreBlock = Callable[[int, int], Tensor]
"""score_block(start, stop) -> (B, stop - start) float scores of items start..stop-1, masked items already -inf."""


@functools.lru_cache(maxsize=8)
def tie_order(n: int, seed: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(perm (n,), position (n,)): the fixed random item order that breaks score ties and each item's place in it;
    made once per catalog size, not per batch."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    pos = torch.empty_like(perm)
    pos[perm] = torch.arange(n)
    return perm.to(device), pos.to(device)


def order_keys(scores: Tensor, pos: Tensor, n: int) -> Tensor:
    """int64 keys (same shape as scores) ordered like (score desc, tie position `pos` asc) over a catalog of `n`.

    High 32 bits: the float32 score's bits made monotone as a signed int (negative floats get their magnitude bits
    flipped; -0.0 is made +0.0 first so equal scores give equal bits). Low 32 bits: n - 1 - pos (earlier = larger).
    """
    bits = (scores.float() + 0.0).contiguous().view(torch.int32)
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (bits.long() << 32) | (n - 1 - pos)


def key_scores(keys: Tensor) -> Tensor:
    """The float32 scores a tensor of `order_keys` was built from."""
    bits = (keys >> 32).int()
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).view(torch.float32)


def key_positions(keys: Tensor, n: int) -> Tensor:
    """The tie positions a tensor of `order_keys` was built from."""
    return n - 1 - (keys & _LOW)


def block_keys(scores: Tensor, pos: Tensor, n: int, k: int) -> Tensor:
    """Keys of the exact top-min(k, w) of one block: scores (B, w), tie positions pos (w,) -> (B, min(k, w)), unsorted."""
    b, w = scores.shape
    if w <= k:
        return order_keys(scores, pos.expand(b, w), n)
    vals, idx = scores.topk(k + 1, dim=1)
    if torch.isnan(vals).any():  # topk puts NaN first, so any NaN in a row shows here
        raise ValueError("scores contain NaN (a diverged model?): ranking is undefined")
    keys = order_keys(vals[:, :k], pos[idx[:, :k]], n)
    tied = (vals[:, k - 1] == vals[:, k]).nonzero().squeeze(1)  # which of the tied items make the cut is ambiguous
    if tied.numel():
        keys[tied] = order_keys(scores[tied], pos.expand(tied.numel(), w), n).topk(k, dim=1).values
    return keys


def top_k(score_block: ScoreBlock, n_items: int, k: int, block: int, tie_seed: int = 0,
          device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """The exact top `k` items per row over all `n_items`, scored `block` items at a time.

    Returns (items (B, k) long, scores (B, k) float32), best first; k is capped at n_items. Memory: one (B, block)
    score block plus (B, 2k) keys, whatever n_items is.
    """
    if block <= 0:
        raise ValueError(f"block={block}: expected > 0 items per block")
    k = min(k, n_items)
    device = torch.device(device)
    perm, pos = tie_order(n_items, tie_seed, device)
    running: Tensor | None = None
    for start in range(0, n_items, block):
        stop = min(start + block, n_items)
        keys = block_keys(score_block(start, stop), pos[start:stop], n_items, k)
        if running is not None:
            keys = torch.cat([running, keys], dim=1)
        running = keys.topk(min(k, keys.shape[1]), dim=1).values if keys.shape[1] > k else keys
    assert running is not None, "n_items must be > 0"
    running = running.sort(dim=1, descending=True).values
    return perm[key_positions(running, n_items)], key_scores(running)


def masked_block(scores: Tensor, rows: Tensor, cols: Tensor, start: int) -> Tensor:
    """`scores` (B, w) of items start..start+w-1 with the (row, item) pairs that fall in the block set to -inf
    (in place: pass a tensor you own)."""
    inside = (cols >= start) & (cols < start + scores.shape[1])
    scores[rows[inside], cols[inside] - start] = float("-inf")
    return scores
