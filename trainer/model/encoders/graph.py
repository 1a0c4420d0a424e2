"""LightGCN-style propagation over the user-item graph, optionally joined with social and kg edges."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trainer.model.encoders.graph_sampling import NeighbourSampler

GRAPH_TABLES = "graph_tables"
"""ctx key under which `GraphEncoder.tables()` output may be passed, so one step propagates once."""


class GraphEncoder(nn.Module):
    """Node embeddings smoothed over a normalised graph (LightGCN): E = mean(E0, A E0, ..., A^K E0).

    Nodes are users [0, n_users), items [n_users, n_users + n_items) and kg entities after them. Edges,
    all made symmetric and deduplicated: training (user, item) pairs; optional social (user, user); optional
    kg (item, relation, entity) with the relation ignored. A = D^-1/2 (A) D^-1/2, isolated nodes keep E0 / (K+1).

    `tables() -> (users (n_users, D), items (n_items, D))` propagates the whole graph once (fine up to ~1e5
    nodes); `user_view()` / `item_view()` are the source encoders the two towers hold. They read the tables
    from `ctx[GRAPH_TABLES]` when present, else propagate themselves — so a training step should compute
    `ctx[GRAPH_TABLES] = graph.tables()` once and pass the same ctx to both towers.

    With `fanouts` (one per layer), training steps propagate only over a sampled neighbourhood of the step's
    nodes instead (`sampled()`, graph_sampling.py): time and activation memory per step independent of the graph's
    size; `sampling()` says when that applies (fanouts set and the module in training mode). Evaluation still
    propagates the whole graph once, without gradients, and exactly.

    Args:
        n_users, n_items: graph sizes (dense ids).
        train_users, train_items: (E,) the training interactions; never valid/test ones (leakage).
        dim: embedding size; n_layers: propagation steps K.
        social: (Es, 2) user -> user edges, or None.
        kg: (Ek, 3) item, relation, entity edges, or None; n_entities: entity count (default max + 1).
        fanouts: edges sampled per node and hop in training (len == n_layers), or None for full propagation.
        sample_seed: seed of the sampling stream.
    """

    crow: Tensor
    col: Tensor
    val: Tensor

    def __init__(
        self,
        n_users: int,
        n_items: int,
        train_users: np.ndarray,
        train_items: np.ndarray,
        dim: int,
        n_layers: int = 2,
        social: np.ndarray | None = None,
        kg: np.ndarray | None = None,
        n_entities: int | None = None,
        init_std: float = 0.1,
        name: str = "graph",
        fanouts: list[int] | None = None,
        sample_seed: int = 0,
    ):
        super().__init__()
        if n_layers < 0:
            raise ValueError(f"GraphEncoder: n_layers={n_layers}, expected >= 0")
        if fanouts is not None and len(fanouts) != n_layers:
            raise ValueError(f"GraphEncoder: fanouts={fanouts}: expected one per layer ({n_layers})")
        self.name = name
        self.out_dim = dim
        self.n_users, self.n_items, self.n_layers = n_users, n_items, n_layers
        src = [np.asarray(train_users, np.int64), np.asarray(train_items, np.int64) + n_users]
        dst = [src[1], src[0]]
        if social is not None and len(social):
            s = np.asarray(social, np.int64)
            src += [s[:, 0], s[:, 1]]
            dst += [s[:, 1], s[:, 0]]
        n_ent = 0
        if kg is not None and len(kg):
            k = np.asarray(kg, np.int64)
            n_ent = int(n_entities if n_entities is not None else k[:, 2].max() + 1)
            item_nodes, ent_nodes = k[:, 0] + n_users, k[:, 2] + n_users + n_items
            src += [item_nodes, ent_nodes]
            dst += [ent_nodes, item_nodes]
        self.n_nodes = n_users + n_items + n_ent
        crow, col, val = normalized_adjacency(np.concatenate(src), np.concatenate(dst), self.n_nodes)
        # Derived from data, rebuilt with the model: kept out of checkpoints.
        self.register_buffer("crow", crow, persistent=False)
        self.register_buffer("col", col, persistent=False)
        self.register_buffer("val", val, persistent=False)
        self.embedding = nn.Embedding(self.n_nodes, dim)
        nn.init.normal_(self.embedding.weight, std=init_std)
        self.sampler = NeighbourSampler(fanouts, sample_seed) if fanouts and n_layers else None

    def adjacency(self) -> Tensor:
        """The normalised adjacency as a sparse CSR tensor (n_nodes, n_nodes), float32."""
        # torch warns "sparse CSR support is in beta"; sparse @ dense is all we use, and it works
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                self.crow, self.col, self.val, (self.n_nodes, self.n_nodes), check_invariants=False
            )

    def tables(self) -> tuple[Tensor, Tensor]:
        """Propagate once: (user table (n_users, D), item table (n_items, D)), differentiable w.r.t. E0."""
        # Sparse kernels want float32; propagation stays in fp32 under autocast.
        with torch.autocast(device_type=str(self.crow.device.type), enabled=False):
            adj = self.adjacency()
            e = self.embedding.weight.float()
            acc = e
            for _ in range(self.n_layers):
                e = torch.sparse.mm(adj, e)
                acc = acc + e
            # back to the weights' dtype: under DeepSpeed bf16 the weights are bf16 and there is no autocast
            out = (acc / (self.n_layers + 1)).to(self.embedding.weight.dtype)
        return out[: self.n_users], out[self.n_users : self.n_users + self.n_items]

    def sampling(self) -> bool:
        """True when the views should call `sampled()` rather than read full tables: fanouts set, training mode."""
        return self.sampler is not None and self.training

    def sampled(self, nodes: Tensor) -> Tensor:
        """Propagated vectors (T, D) of graph nodes (T,) (users [0, n_users), items offset by n_users) over a
        neighbourhood sampled with `fanouts`; differentiable w.r.t. the sampled rows of E0."""
        if self.sampler is None:
            raise RuntimeError("GraphEncoder.sampled(): no fanouts configured (full propagation: tables())")
        with torch.autocast(device_type=str(self.crow.device.type), enabled=False):
            out = self.sampler.propagate(nodes, self.embedding.weight, self.crow, self.col, self.val)
        return out.to(self.embedding.weight.dtype)

    def isolated_users(self) -> Tensor:
        """(n_users,) bool: users whose node has no edge (no training interaction, no social link), so their
        propagated vector is only their own, never-trained initial row."""
        return (self.crow[1 : self.n_users + 1] - self.crow[: self.n_users]) == 0

    def user_view(self) -> GraphSide:
        return GraphSide(self, "user")

    def item_view(self) -> GraphSide:
        return GraphSide(self, "item")


class GraphSide(nn.Module):
    """One side of a GraphEncoder as a source encoder: `forward(ids (B,), ctx) -> (B, D)`."""

    def __init__(self, graph: GraphEncoder, side: str):
        super().__init__()
        if side not in ("user", "item"):
            raise ValueError(f"GraphSide side={side!r}: expected 'user' or 'item'")
        self.graph = graph
        self.side = side
        self.name = graph.name
        self.out_dim = graph.out_dim

    def forward(self, ids: Tensor, ctx: Mapping[str, Any] | None = None) -> Tensor:
        tables = (ctx or {}).get(GRAPH_TABLES)
        if tables is None and self.graph.sampling():
            return self.graph.sampled(ids if self.side == "user" else ids + self.graph.n_users)
        users, items = tables if tables is not None else self.graph.tables()
        return (users if self.side == "user" else items)[ids]


def normalized_adjacency(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Symmetric-normalised 0/1 adjacency of the edges (src, dst), duplicates merged: CSR (crow, col, val)."""
    keys = np.unique(src * n + dst)  # sorted by (row, col): already CSR order
    rows, cols = keys // n, keys % n
    deg = np.bincount(rows, minlength=n).astype(np.float64)
    inv_sqrt = np.zeros(n)
    np.divide(1.0, np.sqrt(deg), out=inv_sqrt, where=deg > 0)
    val = inv_sqrt[rows] * inv_sqrt[cols]
    crow = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=crow[1:])
    return (
        torch.from_numpy(crow),
        torch.from_numpy(cols.astype(np.int64)),
        torch.from_numpy(val.astype(np.float32)),
    )
