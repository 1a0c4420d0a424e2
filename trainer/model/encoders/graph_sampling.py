"""Neighbour-sampled LightGCN: the propagated vectors of a few target nodes from a fixed fan-out per hop.

Full propagation (`GraphEncoder.tables`) touches every edge every step, so its time and activation memory grow with
the graph. Here a step only touches the targets' sampled K-hop neighbourhood: at most T * prod(1 + fanout) nodes for
T targets, whatever the graph's size (GraphSAGE-style layer-wise sampling over the same normalised CSR adjacency).

Per hop, a node of degree d <= fanout keeps all its edges with their normalised weights A_vu, so with fan-outs at
or above the largest degree the result equals full propagation exactly. A node with d > fanout draws `fanout` of
its edges uniformly *with replacement* and weighs each by A_vu * d / fanout: an unbiased estimate of the full sum
(E[sampled] = sum_u A_vu x_u) at O(fanout) work per node, never O(d) (hubs of a power-law graph cost no more than
any other node; sampling without replacement would need all d edges to draw from).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class NeighbourSampler(nn.Module):
    """Seeded fixed fan-out sampling from a CSR adjacency (crow (N + 1,), col (E,), val (E,)), and propagation.

    The random stream is a `torch.Generator` seeded with `seed` and advanced by every call, so a run is
    deterministic given the seed; its state is part of the module's state_dict (`_extra_state`), so a resumed
    run draws what the uninterrupted run would have drawn.

    Args:
        fanouts: edges drawn per node, one entry per hop, hop 1 (from the targets) first; each >= 1.
        seed: seed of the sampling stream.
    """

    def __init__(self, fanouts: list[int], seed: int = 0):
        super().__init__()
        if not fanouts or any(int(f) < 1 for f in fanouts):
            raise ValueError(f"NeighbourSampler fanouts={fanouts}: expected a non-empty list of ints >= 1")
        self.fanouts = [int(f) for f in fanouts]
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    # the generator lives on the CPU (draws are moved to the adjacency's device): its state is a small byte tensor
    def get_extra_state(self) -> Any:
        return {"generator": self.generator.get_state(), "seed": self.seed}

    def set_extra_state(self, state: Any) -> None:
        self.generator.set_state(state["generator"])

    def sample_hop(
        self, nodes: Tensor, fanout: int, crow: Tensor, col: Tensor, val: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Edges of `nodes` (N,) for one hop: (rows (M,) index into `nodes`, neighbours (M,) node ids, weights (M,)).

        Each node gets at most `fanout` entries, every one a real edge of it; all its edges when its degree is
        <= fanout (weights A_vu), else `fanout` uniform draws with replacement (weights A_vu * degree / fanout)."""
        start = crow[nodes]
        deg = crow[nodes + 1] - start
        whole = deg <= fanout
        pos = torch.arange(len(nodes), device=nodes.device)
        # nodes kept whole: a ragged gather of their edge ranges
        w_deg = deg[whole]
        run = _run_index(w_deg)  # (Mw,) which kept node each entry belongs to
        w_rows = pos[whole][run]
        first = torch.cumsum(w_deg, 0) - w_deg  # where each kept node's entries start
        w_edges = start[whole][run] + (torch.arange(len(run), device=nodes.device) - first[run])
        # nodes sampled: fanout draws each
        big = ~whole
        # float64 draws: r * degree stays exact for degrees past float32's 2^24
        r = torch.rand((int(big.sum()), fanout), generator=self.generator, dtype=torch.float64).to(
            nodes.device
        )
        s_deg = deg[big]
        s_edges = (
            start[big].unsqueeze(1) + (r * s_deg.unsqueeze(1)).long().clamp_max(s_deg.unsqueeze(1) - 1)
        ).reshape(-1)
        s_rows = pos[big].repeat_interleave(fanout)
        s_scale = (s_deg.to(val.dtype) / fanout).repeat_interleave(fanout)
        rows = torch.cat([w_rows, s_rows])
        edges = torch.cat([w_edges, s_edges])
        weights = val[edges] * torch.cat(
            [torch.ones(len(w_edges), dtype=val.dtype, device=val.device), s_scale]
        )
        return rows, col[edges], weights

    def propagate(self, targets: Tensor, weight: Tensor, crow: Tensor, col: Tensor, val: Tensor) -> Tensor:
        """LightGCN output mean(E0, A E0, ..., A^K E0) at `targets` (T,) with A sampled per hop: (T, D).

        `weight` (n_nodes, D) is E0; only rows of the sampled neighbourhood are read, so gradients reach
        exactly those rows. K = len(fanouts)."""
        uniq, inverse = torch.unique(targets, return_inverse=True)
        levels = [uniq]  # node sets N_0 (targets) ⊆ N_1 ⊆ ... ⊆ N_K
        hops = []  # per hop l: (rows into N_l, neighbour positions in N_{l+1}, weights, N_l's positions in N_{l+1})
        for fanout in self.fanouts:
            cur = levels[-1]
            rows, nbrs, w = self.sample_hop(cur, fanout, crow, col, val)
            nxt, inv = torch.unique(torch.cat([cur, nbrs]), return_inverse=True)
            hops.append((rows, inv[len(cur) :], w, inv[: len(cur)]))
            levels.append(nxt)
        # where the targets sit in each level
        where = [torch.arange(len(uniq), device=targets.device)]
        for _, _, _, self_pos in hops:
            where.append(self_pos[where[-1]])
        h = weight[levels[-1]].float()  # h^(0) on N_K
        acc = h[where[-1]]
        for level in range(len(self.fanouts) - 1, -1, -1):  # h^(k) on N_level, k = K - level
            rows, nbr_pos, w, _ = hops[level]
            # scatter_add_ over an expanded index, not index_add_: on CPU index_add_ adds row by row (30x slower here)
            msgs = h[nbr_pos] * w.unsqueeze(1)
            h = torch.zeros(len(levels[level]), h.shape[1], dtype=h.dtype, device=h.device).scatter_add_(
                0, rows.unsqueeze(1).expand_as(msgs), msgs
            )
            acc = acc + h[where[level]]
        return (acc / (len(self.fanouts) + 1))[inverse]


def _run_index(lengths: Tensor) -> Tensor:
    """(sum(lengths),) the run each position belongs to: [2, 0, 3] -> [0, 0, 2, 2, 2]."""
    return torch.arange(len(lengths), device=lengths.device).repeat_interleave(lengths)
