"""Top-K items of chosen users, scored as evaluation scores them, with each score attributed to sources.

Conditioning follows `fusionrec test` / `predict` / `export` (trainer/inference/export.py `all_embeddings`): the
catalog is encoded once by `FusionModule._all_items` (cold items without id / graph), users by
`encode_eval_users` on the split's RankingEvalSet batch (history = train items, + valid items for test; cold users
without id / sequence), and seen items are masked before taking the top K.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from data_modules.evaluation import RankingEvalSet
from data_modules.side import SideData
from trainer.inference.explain.attribution import Shares, attribute, encode_sources


@dataclass
class Catalog:
    """What every batch of users is scored against: item vectors (n_items, D) and the eval context."""

    items: Tensor
    ctx: dict[str, Any]
    eval_set: RankingEvalSet


@dataclass
class BatchExplanation:
    """One batch of B users and their top-K items.

    users (B,) dense ids; items (B, K); scores (B, K); all_scores (B, n_items) with excluded items at -inf;
    item (B, K, S_i) shares of each score by item source; user (B, K, S_u) shares by user source;
    history: per row, the items the user is conditioned on (every seen item, time order);
    the rest is kept for re-scoring with a source masked (the deletion test): u (B, D), item_sources
    {name: (B*K, D_s)}, item_missing (B*K, S_i) | None, user_sources {name: (B, D_s)}, user_missing (B, S_u)."""

    users: Tensor
    items: Tensor
    scores: Tensor
    all_scores: Tensor
    item: Shares
    user: Shares
    history: list[np.ndarray]
    u: Tensor
    item_sources: dict[str, Tensor]
    item_missing: Tensor | None
    user_sources: dict[str, Tensor]
    user_missing: Tensor


@torch.no_grad()
def catalog(model, dataset_dir: Path, split: str, history_len: int) -> Catalog:
    side = SideData(dataset_dir)
    ds = RankingEvalSet(dataset_dir, side.manifest, split, history_len)
    ctx = model.towers.context()
    return Catalog(model._all_items(ctx), ctx, ds)


def item_missing(model, ids: Tensor) -> Tensor | None:
    """(M, S_i) as `_all_items` declares it: cold items lack their learned id / graph sources."""
    tower = model.towers.item
    learned = torch.tensor([n in ("id", "graph") for n in tower.names])
    if not bool(learned.any()):
        return None
    return model.item_cold[ids].unsqueeze(1) & learned.unsqueeze(0)


@dataclass
class Attributed:
    """Both towers' attributions of the scores of B users against K items each.

    item (B, K, S_i) shares by item source; user (B, K, S_u) shares by user source; and what re-scoring with a
    source masked needs: item_sources {name: (B*K, D_s)}, item_missing (B*K, S_i) | None, user_sources
    {name: (B, D_s)}, user_missing (B, S_u)."""

    item: Shares
    user: Shares
    item_sources: dict[str, Tensor]
    item_missing: Tensor | None
    user_sources: dict[str, Tensor]
    user_missing: Tensor


@torch.no_grad()
def attribute_items(model, cat: Catalog, batch: dict[str, Tensor], ctx: dict[str, Any], u: Tensor, items: Tensor,
                    method: str = "auto") -> Attributed:
    """Attribute u (B, D) . v for the given items (B, K) (dense ids): the users of `batch` (the eval set's collate)
    with their fused vectors u, scored against `cat.items[items]`. Used by explain (top K of exact scores) and by
    `fusionrec recommend` (top K from the retrieval index)."""
    normalize = bool(model.model_cfg.normalize)
    b, kk = items.shape
    flat = items.reshape(-1)
    it = model.towers.item
    isrc = encode_sources(it, flat, ctx)
    imiss = it.declared_missing(flat, item_missing(model, flat))  # + rows the encoders lack (no precomputed vector)
    u_rep = u.repeat_interleave(kk, dim=0)  # (B*K, D)
    ish = attribute(it.fusion, isrc, imiss, u_rep, normalize, method)
    ut = model.towers.user
    usrc = encode_sources(ut, batch["user"], ctx)
    umiss = ut.declared_missing(batch["user"], model.user_missing(batch["user"]))
    v = cat.items[items]  # (B, K, D)
    ush = attribute(ut.fusion, usrc, umiss, v, normalize, method)
    item_shares = Shares(ish.names, ish.shares.view(b, kk, -1), ish.score.view(b, kk), ish.baseline.view(b, kk),
                         None if ish.gates is None else ish.gates.view(b, kk, -1), ish.method)
    return Attributed(item_shares, ush, isrc, imiss, usrc, umiss)


@torch.no_grad()
def explain_batch(model, cat: Catalog, users: list[int], k: int, method: str = "auto") -> BatchExplanation:
    """Top-K unseen items of `users` (dense ids) and both towers' attributions of each score."""
    batch = cat.eval_set.collate(users)
    ctx = {**cat.ctx, **batch}
    u, _ = model.encode_eval_users(batch, ctx)  # (B, D)
    scores = u @ cat.items.T
    scores[batch["seen_rows"], batch["seen_cols"]] = float("-inf")
    if model.cold_start_eval:
        scores = scores.masked_fill(~model.item_cold, float("-inf"))
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    att = attribute_items(model, cat, batch, ctx, u, top.indices, method)
    ds = cat.eval_set
    history = [np.asarray(ds.seq_items[ds.seq_offsets[x]:ds.seq_offsets[x + 1]]) for x in users]
    return BatchExplanation(batch["user"], top.indices, top.values, scores, att.item, att.user, history, u,
                            att.item_sources, att.item_missing, att.user_sources, att.user_missing)


def supporting_history(cat: Catalog, item: int, history: np.ndarray, n: int = 3) -> list[tuple[int, float]]:
    """The n history items whose fused item vectors are closest (cosine) to `item`'s: [(item, cosine)], best first."""
    if len(history) == 0:
        return []
    hist = np.unique(history)
    vecs = torch.nn.functional.normalize(cat.items[torch.as_tensor(hist, dtype=torch.long)], dim=-1)
    cos = vecs @ torch.nn.functional.normalize(cat.items[item], dim=-1)
    order = torch.argsort(cos, descending=True, stable=True)[:n]
    return [(int(hist[j]), float(cos[j])) for j in order]


def rank_of(scores_row: Tensor, item: int, value: float) -> int:
    """Rank of `item` if it scored `value`, the other items unchanged: 1 + the number of other rankable items
    scoring strictly above it (excluded items are -inf)."""
    return 1 + int((scores_row > value).sum()) - int(bool(scores_row[item] > value))
