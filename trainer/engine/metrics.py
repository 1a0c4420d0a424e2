"""Full-ranking top-K metrics and rating errors, as per-user sums that reduce across batches and ranks.

Definitions follow RecBole (binary relevance, ranks 1-based, users without relevant items not counted):
    hit@K       = 1 if any relevant item is in the top K
    recall@K    = |rel in top K| / |rel|
    precision@K = |rel in top K| / K
    mrr@K       = 1 / rank of the first relevant item in the top K (0 if none)
    ndcg@K      = DCG / IDCG, DCG = sum over hits of 1 / log2(rank + 1), IDCG = sum_{i=1..min(|rel|, K)} 1 / log2(i + 1)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from trainer.engine.topk import masked_block, top_k

METRICS = ("recall", "ndcg", "mrr", "hit", "precision")
Items = Sequence[Sequence[int]] | tuple[Tensor, Tensor]
"""Items per row: a list of lists, or a CSR (offsets (B + 1,), items (nnz,))."""


def _pairs(items: Items, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(row, item) index pairs of a per-row item collection."""
    if isinstance(items, tuple) and len(items) == 2 and isinstance(items[0], Tensor):
        offsets, values = items[0].to(device), items[1].to(device)
        rows = torch.repeat_interleave(torch.arange(batch, device=device), offsets[1:] - offsets[:-1])
        return rows, values.long()
    if len(items) != batch:
        raise ValueError(f"{len(items)} rows of items for a batch of {batch}")
    row_ids = [r for r, row in enumerate(items) for _ in row]
    flat = [int(i) for row in items for i in row]
    return torch.tensor(row_ids, dtype=torch.long, device=device), torch.tensor(
        flat, dtype=torch.long, device=device
    )


def ranking_metrics(
    scores: Tensor,
    relevant: Items,
    ks: Sequence[int],
    seen: Items | None = None,
    tie_seed: int = 0,
    block: int | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """Per-user top-K metrics for a score matrix (B, n_items).

    `seen` items (training interactions) are set to -inf before ranking. Equal scores are ordered by a fixed random
    permutation of the items (`tie_seed`), not by item index: dense ids follow the order items first appear in the
    data, which correlates with popularity, so index order would reward a model that cannot tell items apart (an
    id-only model on cold-start items scores them all alike and must land at chance). The order is exact (score,
    then place in the permutation; trainer/engine/topk.py), so ranking `block` items at a time (default: all at once)
    gives the same result. Returns ({f"{metric}@{k}": (B,)}, valid (B,) bool = user has at least one relevant
    item); values of invalid rows are 0.
    """
    b, n = scores.shape
    rows, cols = _pairs(seen, b, scores.device) if seen is not None else (None, None)

    def score_block(start: int, stop: int) -> Tensor:
        s = scores[:, start:stop].float().clone()
        return s if rows is None else masked_block(s, rows, cols, start)

    top, _ = top_k(score_block, n, max(ks), block or n, tie_seed, scores.device)
    return metrics_at(top, relevant, ks, n)


def metrics_at(top: Tensor, relevant: Items, ks: Sequence[int], n_items: int) -> tuple[dict[str, Tensor], Tensor]:
    """Metrics of ranked lists top (B, k_max) (item ids, best first; -1 = an empty slot) against the relevant items;
    k_max may be below max(ks) when the catalog is smaller. Returns what `ranking_metrics` returns."""
    b, k_max = top.shape
    device = top.device
    rows, cols = _pairs(relevant, b, device)
    codes = torch.unique(rows * n_items + cols)  # sorted; repeated (row, item) pairs count once
    n_rel = torch.bincount(codes // n_items, minlength=b).float()  # (B,)
    valid = n_rel > 0
    query = torch.arange(b, device=device).unsqueeze(1) * n_items + top
    at = torch.searchsorted(codes, query).clamp(max=max(len(codes) - 1, 0))
    hits = ((codes[at] == query) & (top >= 0)).float() if len(codes) else torch.zeros_like(top, dtype=torch.float32)
    ranks = torch.arange(1, k_max + 1, device=device, dtype=torch.float32)
    discount = 1.0 / torch.log2(ranks + 1)
    out: dict[str, Tensor] = {}
    for k in ks:
        h = hits[:, :k]
        n_hit = h.sum(1)
        first = torch.where(h.any(1), h.argmax(1).float() + 1, torch.full_like(n_hit, float("inf")))
        ideal = torch.cumsum(discount[:k], 0)  # ideal[j] = IDCG with j + 1 relevant items
        idcg = ideal[(n_rel.clamp(min=1, max=h.shape[1]) - 1).long()]
        vals = {
            "recall": n_hit / n_rel.clamp(min=1),
            "ndcg": (h * discount[: h.shape[1]]).sum(1) / idcg,
            "mrr": 1.0 / first,
            "hit": (n_hit > 0).float(),
            "precision": n_hit / k,
        }
        for name, v in vals.items():
            out[f"{name}@{k}"] = torch.where(valid, v, torch.zeros_like(v))
    return out, valid


class RankingAccumulator:
    """Sums of per-user top-K metrics and the user count; `state()` is what a distributed run all-reduces.

    `update(scores, relevant, seen)` per batch; `compute()` -> {"recall@10": mean, ...}. Across ranks:
    all-reduce `sums` and `count` from `state()` (SUM), then `compute(sums, count)`.
    """

    def __init__(self, ks: Sequence[int] = (10, 20), metrics: Sequence[str] = METRICS):
        bad = [m for m in metrics if m not in METRICS]
        if bad or not ks or min(ks) <= 0:
            raise ValueError(
                f"RankingAccumulator(ks={list(ks)}, metrics={list(metrics)}): metrics in {METRICS}, ks > 0"
            )
        self.ks, self.metrics = list(ks), list(metrics)
        self.names = [f"{m}@{k}" for m in self.metrics for k in self.ks]
        self.sums = torch.zeros(len(self.names), dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)

    def update(self, scores: Tensor, relevant: Items, seen: Items | None = None) -> None:
        self.update_values(*ranking_metrics(scores, relevant, self.ks, seen))

    def update_top(self, top: Tensor, relevant: Items, n_items: int) -> None:
        """Add ranked lists top (B, k) already cut (trainer/engine/topk.py), e.g. by block-wise ranking."""
        self.update_values(*metrics_at(top, relevant, self.ks, n_items))

    def update_values(self, values: dict[str, Tensor], valid: Tensor) -> None:
        sums = torch.stack([values[n].sum() for n in self.names]).double()
        self.sums = self.sums.to(sums.device) + sums
        self.count = self.count.to(sums.device) + valid.sum()

    def state(self) -> tuple[Tensor, Tensor]:
        """(sums (M,) float64 in the order of `names`, count () float64)."""
        return self.sums, self.count

    def compute(self, sums: Tensor | None = None, count: Tensor | None = None) -> dict[str, float]:
        sums = self.sums if sums is None else sums
        count = self.count if count is None else count
        n = max(float(count), 1.0)
        return {name: float(v) / n for name, v in zip(self.names, sums.tolist())}

    def reset(self) -> None:
        self.sums, self.count = torch.zeros_like(self.sums), torch.zeros_like(self.count)


class RatingAccumulator:
    """Squared and absolute error sums over rated rows (NaN ratings skipped); `compute()` -> rmse, mae."""

    def __init__(self) -> None:
        self.sums = torch.zeros(2, dtype=torch.float64)  # (sum squared error, sum absolute error)
        self.count = torch.zeros((), dtype=torch.float64)

    def update(self, pred: Tensor, rating: Tensor) -> None:
        has = ~torch.isnan(rating)
        err = (pred.double() - rating.double())[has]
        self.sums = self.sums.to(err.device) + torch.stack([(err**2).sum(), err.abs().sum()])
        self.count = self.count.to(err.device) + has.sum()

    def state(self) -> tuple[Tensor, Tensor]:
        return self.sums, self.count

    def compute(self, sums: Tensor | None = None, count: Tensor | None = None) -> dict[str, float]:
        sums = self.sums if sums is None else sums
        n = max(float(self.count if count is None else count), 1.0)
        return {"rmse": (float(sums[0]) / n) ** 0.5, "mae": float(sums[1]) / n}

    def reset(self) -> None:
        self.sums, self.count = torch.zeros_like(self.sums), torch.zeros_like(self.count)
