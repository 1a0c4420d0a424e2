"""The ranking evaluator's two protocols over one batch of user vectors: full ranking over the catalog, ranked block
by block (trainer/engine/topk.py) so memory does not grow with it, and sampled negatives (RecBole's uni<N> /
pop<N>: a user's held-out items and the negatives stored for them, data_modules/prepare/negatives.py).

Both rank with the same exact order (score, then the seeded tie position) and feed the same metric code
(trainer/engine/metrics.py), so a protocol differs from another only by which items it ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from data_modules.prepare.negatives import parse_protocol
from trainer.engine.metrics import RankingAccumulator
from trainer.engine.topk import masked_block, order_keys, tie_order, top_k


@dataclass
class EvalConfig:
    """How evaluation ranks."""

    block_items: int = 65536
    """(int) full ranking scores the catalog this many items at a time and keeps a running top-K, so memory is
    (eval batch x block_items) instead of (eval batch x n_items); a catalog up to this size is one block (dense).
    The result is the same for any value (exact order, trainer/engine/topk.py)."""
    sampled: list[str] | None = None
    """(list of str) sampled-negative protocols to evaluate beside full ranking, logged as <stage>/<protocol>/
    <metric> (e.g. val/uni100/ndcg@10); they must be stored with the prepared split (prepare config
    `negatives.protocols`). null = every protocol the dataset stores; [] = none. Each ranks only its own
    candidates (the held-out items and their negatives): `cold_start_eval` restricts full ranking alone."""

    def __post_init__(self) -> None:
        if self.block_items <= 0:
            raise ValueError(f"evaluation.block_items={self.block_items}: expected > 0")
        for name in self.sampled or []:
            parse_protocol(name)

    def protocols(self, stored: Sequence[str], dataset: str) -> list[str]:
        """The protocols to evaluate on a dataset storing `stored`; one asked for but not stored is an error."""
        if self.sampled is None:
            return sorted(stored)
        missing = [p for p in self.sampled if p not in stored]
        if missing:
            raise ValueError(f"evaluation.sampled={self.sampled}: {missing} not stored with the prepared dataset "
                             f"{dataset} (it has {sorted(stored) or 'none'}); add them to the prepare config's "
                             "negatives.protocols and run `fusionrec data prepare` again")
        return list(self.sampled)


def full_ranking_top(user: Tensor, items: Tensor, k: int, seen_rows: Tensor, seen_cols: Tensor, block: int,
                     allowed: Tensor | None = None, tie_seed: int = 0) -> tuple[Tensor, Tensor]:
    """Top-k items of every user over the whole catalog: user (B, D), items (n_items, D); the (row, item) pairs
    seen_rows / seen_cols (nnz,) are masked, and items where `allowed` (n_items,) bool is False. Returns
    (items (B, k), scores (B, k)), best first; memory (B x block)."""
    def score_block(start: int, stop: int) -> Tensor:
        s = masked_block((user @ items[start:stop].T).float(), seen_rows, seen_cols, start)
        return s if allowed is None else s.masked_fill(~allowed[start:stop], float("-inf"))

    return top_k(score_block, items.shape[0], k, block, tie_seed, user.device)


def candidate_top(scores: Tensor, rows: Tensor, cols: Tensor, batch: int, n_items: int, k: int,
                  tie_seed: int = 0) -> Tensor:
    """Top-k of each row's own candidates: scores / rows / cols (nnz,) (rows sorted, a row's items distinct).
    Returns (B, min(k, n_items)) item ids, best first, -1 where a row has fewer candidates than k (such a slot
    is empty, as the -inf items of RecBole's masked score matrix: never relevant)."""
    k = min(k, n_items)
    counts = torch.bincount(rows, minlength=batch)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(rows.numel(), device=rows.device) - start[rows]
    _, pos = tie_order(n_items, tie_seed, scores.device)
    keys = torch.full((batch, width), torch.iinfo(torch.int64).min, dtype=torch.long, device=scores.device)
    keys[rows, slot] = order_keys(scores, pos[cols], n_items)
    ids = torch.full((batch, width), -1, dtype=torch.long, device=scores.device)
    ids[rows, slot] = cols
    top = ids.gather(1, keys.topk(min(k, width), dim=1).indices)
    return torch.cat([top, top.new_full((batch, k - top.shape[1]), -1)], dim=1) if top.shape[1] < k else top


class SampledEval:
    """One RankingAccumulator per sampled protocol; `update` ranks each protocol's candidates of a batch."""

    def __init__(self, protocols: Sequence[str], ks: Sequence[int]):
        self.accumulators = {name: RankingAccumulator(ks) for name in protocols}

    def update(self, user: Tensor, items: Tensor, batch: dict[str, Tensor], relevant: tuple[Tensor, Tensor],
               tie_seed: int = 0) -> None:
        """user (B, D), items (n_items, D); batch holds sampled_<protocol>_rows / _cols; relevant: CSR of targets."""
        for name, acc in self.accumulators.items():
            rows, cols = batch[f"sampled_{name}_rows"], batch[f"sampled_{name}_cols"]
            scores = (user[rows] * items[cols]).sum(-1).float()
            top = candidate_top(scores, rows, cols, user.shape[0], items.shape[0], max(acc.ks), tie_seed)
            acc.update_top(top, relevant, items.shape[0])

    def reset(self) -> None:
        for acc in self.accumulators.values():
            acc.reset()
