"""Towers: named source encoders + a fusion head; the two-tower model scores users against items by dot product."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from trainer.model.encoders.base import SourceEncoder
from trainer.model.encoders.graph import GRAPH_TABLES, GraphEncoder


class Tower(nn.Module):
    """`forward(ids (B,), ctx, missing (B, S) bool | None) -> (vectors (B, D), weights (B, S) | None)`.

    `encoders` (name -> source encoder) must list the same sources, in the same order, as `fusion.names`,
    with matching sizes; the weights are the fusion head's per-source gates / attention (None for concat).
    """

    def __init__(self, encoders: Mapping[str, SourceEncoder], fusion: nn.Module):
        super().__init__()
        # every fusion head carries `in_dims` (name -> size, in order) and `out_dim`
        in_dims = cast(dict[str, int], fusion.in_dims)
        have = {name: int(enc.out_dim) for name, enc in encoders.items()}
        if list(have.items()) != list(in_dims.items()):
            raise ValueError(
                f"tower encoders {have} != fusion sources {in_dims} (same names, order and sizes)"
            )
        self.encoders = nn.ModuleDict(dict(encoders))  # type: ignore[arg-type]
        self.fusion = fusion
        self.out_dim = int(cast(int, fusion.out_dim))

    @property
    def names(self) -> list[str]:
        return list(self.encoders)

    def forward(
        self, ids: Tensor, ctx: Mapping[str, Any] | None = None, missing: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        ctx = ctx or {}
        sources = {name: enc(ids, ctx) for name, enc in self.encoders.items()}
        return self.fusion(sources, self.declared_missing(ids, missing))

    def declared_missing(self, ids: Tensor, missing: Tensor | None = None) -> Tensor | None:
        """(B, S) bool: `missing` (B, S) or'ed with the rows each encoder declares absent for itself (an encoder
        with `missing_rows(ids) -> (B,) bool`, e.g. the vector source for ids without a vector); None if neither."""
        own = {i: enc.missing_rows(ids) for i, enc in enumerate(self.encoders.values()) if hasattr(enc, "missing_rows")}
        if not own:
            return missing
        out = (torch.zeros(ids.shape[0], len(self.encoders), dtype=torch.bool, device=ids.device)
               if missing is None else missing.to(device=ids.device, dtype=torch.bool).clone())
        for i, rows in own.items():
            out[:, i] |= rows
        return out

    def forward_unique(self, ids: Tensor, ctx: Mapping[str, Any] | None = None) -> tuple[Tensor, Tensor | None]:
        """`forward` over the distinct ids only, gathered back to `ids`' shape (B,): for many rows of few items
        (history items, sampled negatives of a small catalog) it is the same vectors at a fraction of the work.
        In training, source dropout is then drawn per distinct item of the step, not per row."""
        uniq, inverse = torch.unique(ids, return_inverse=True)
        if uniq.numel() == ids.numel():
            return self(ids, ctx)
        vectors, weights = self(uniq, ctx)
        return vectors[inverse], (None if weights is None else weights[inverse])


class TwoTower(nn.Module):
    """User and item towers in one vector space; `score` is the dot product.

    Args:
        user, item: the towers (same `out_dim`).
        n_items: catalog size, for `all_item_vectors`.
        graph: the GraphEncoder shared by both towers' graph views, if any; `context()` propagates it once.
    """

    def __init__(self, user: Tower, item: Tower, n_items: int, graph: GraphEncoder | None = None):
        super().__init__()
        if user.out_dim != item.out_dim:
            raise ValueError(f"user tower dim {user.out_dim} != item tower dim {item.out_dim}")
        self.user, self.item, self.n_items, self.graph = user, item, n_items, graph

    def context(self, batch: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The ctx for one step: the batch's entries plus the graph tables, propagated once for both towers
        (not when the graph samples neighbourhoods per step: its views then propagate their own ids)."""
        ctx = dict(batch or {})
        if self.graph is not None and GRAPH_TABLES not in ctx and not self.graph.sampling():
            ctx[GRAPH_TABLES] = self.graph.tables()
        return ctx

    def encode_users(
        self, ids: Tensor, ctx: Mapping[str, Any] | None = None, missing: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        return self.user(ids, ctx, missing)

    def encode_items(
        self, ids: Tensor, ctx: Mapping[str, Any] | None = None, missing: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        return self.item(ids, ctx, missing)

    def all_item_vectors(self, batch_size: int = 4096, ctx: Mapping[str, Any] | None = None) -> Tensor:
        """Vectors of every item (n_items, D), encoded in chunks; call under `torch.no_grad()` for evaluation."""
        ctx = self.context(ctx)
        device = next(self.parameters()).device
        chunks = [
            self.item(torch.arange(s, min(s + batch_size, self.n_items), device=device), ctx)[0]
            for s in range(0, self.n_items, batch_size)
        ]
        return torch.cat(chunks)

    @staticmethod
    def score(user_vecs: Tensor, item_vecs: Tensor) -> Tensor:
        """Dot products: (B, D) x (M, D) -> (B, M); or (B, D) x (B, N, D) -> (B, N) for per-row candidates."""
        if item_vecs.dim() == 3:
            return torch.einsum("bd,bnd->bn", user_vecs, item_vecs)
        return user_vecs @ item_vecs.T
