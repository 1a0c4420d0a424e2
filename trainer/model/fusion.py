"""Fusion heads: combine the vectors of a tower's sources into one vector, robust to missing sources.

Every head takes `in_dims` (source name -> vector size, in the order the tower passes sources) and
`forward(sources: dict[name, (B, D_s)], missing: (B, S) bool | None) -> (fused (B, dim), weights (B, S) | None)`.
`missing` declares sources absent per row (e.g. a cold-start item without interactions). During training,
`source_dropout` (name -> rate) additionally drops sources at random so the model learns to do without them;
a dropped or missing source is zeroed, and the gated / attention heads also exclude it from their softmax.
Dropout never removes every available source of a row.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


def _check(in_dims: Mapping[str, int], source_dropout: Mapping[str, float] | None) -> dict[str, float]:
    if not in_dims:
        raise ValueError("fusion head needs at least one source")
    rates = dict(source_dropout or {})
    for name, rate in rates.items():
        if name not in in_dims:
            raise ValueError(f"source_dropout names unknown source {name!r}; sources are {list(in_dims)}")
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"source_dropout[{name!r}]={rate}: expected 0 <= rate < 1")
    return rates


class _SourceMask(nn.Module):
    """Rows x sources that are absent: declared `missing` or dropped by source dropout while training."""

    rates: Tensor

    def __init__(self, names: list[str], rates: dict[str, float]):
        super().__init__()
        self.names = names
        self.register_buffer("rates", torch.tensor([rates.get(n, 0.0) for n in names]), persistent=False)

    def forward(self, batch: int, device: torch.device, missing: Tensor | None) -> Tensor:
        absent = torch.zeros(batch, len(self.names), dtype=torch.bool, device=device)
        if missing is not None:
            if missing.shape != absent.shape:
                raise ValueError(f"missing mask shape {tuple(missing.shape)}, expected {tuple(absent.shape)}")
            absent = missing.to(device=device, dtype=torch.bool)
        if self.training and bool(torch.any(self.rates > 0)):
            dropped = torch.rand(batch, len(self.names), device=device) < self.rates.to(device)
            combined = absent | dropped
            # a row that dropout would empty keeps one of its available sources, chosen at random
            emptied = combined.all(dim=1, keepdim=True) & ~absent.all(dim=1, keepdim=True)
            pick = torch.rand(batch, len(self.names), device=device).masked_fill(absent, -1.0).argmax(1)
            rescue = torch.nn.functional.one_hot(pick, len(self.names)).bool() & emptied
            absent = combined & ~rescue
        return absent


def masked_softmax(logits: Tensor, absent: Tensor) -> Tensor:
    """Softmax over sources (B, S) ignoring `absent` ones; a row with every source absent gets all zeros."""
    # a finite fill (not -inf) keeps fully absent rows finite: uniform, then zeroed below
    filled = logits.masked_fill(absent, torch.finfo(logits.dtype).min)
    return torch.softmax(filled, dim=-1) * (~absent).to(logits.dtype)


class ConcatMLPFusion(nn.Module):
    """Concatenate the sources (absent ones zeroed) and map them by an MLP to `dim`; weights are None."""

    def __init__(
        self,
        in_dims: Mapping[str, int],
        dim: int,
        hidden: int | None = None,
        source_dropout: Mapping[str, float] | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.in_dims, self.names, self.out_dim = dict(in_dims), list(in_dims), dim
        self.mask = _SourceMask(self.names, _check(in_dims, source_dropout))
        total, hidden = sum(in_dims.values()), hidden or 2 * dim
        self.mlp = nn.Sequential(
            nn.Linear(total, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )

    def forward(self, sources: Mapping[str, Tensor], missing: Tensor | None = None) -> tuple[Tensor, None]:
        xs = [sources[n] for n in self.names]
        absent = self.mask(xs[0].shape[0], xs[0].device, missing)
        x = torch.cat([x * (~absent[:, i : i + 1]).to(x.dtype) for i, x in enumerate(xs)], dim=-1)
        return self.mlp(x), None


class GatedFusion(nn.Module):
    """Gated sum: fused = sum_s g_s * W_s x_s, gates g (B, S) = masked softmax of an MLP over the concatenation.

    The gates are returned so they can be logged: which source carried each prediction.
    """

    def __init__(
        self,
        in_dims: Mapping[str, int],
        dim: int,
        hidden: int = 64,
        source_dropout: Mapping[str, float] | None = None,
    ):
        super().__init__()
        self.in_dims, self.names, self.out_dim = dict(in_dims), list(in_dims), dim
        self.mask = _SourceMask(self.names, _check(in_dims, source_dropout))
        self.proj = nn.ModuleList(nn.Linear(d, dim) for d in in_dims.values())
        self.gate = nn.Sequential(
            nn.Linear(sum(in_dims.values()), hidden), nn.GELU(), nn.Linear(hidden, len(in_dims))
        )

    def forward(self, sources: Mapping[str, Tensor], missing: Tensor | None = None) -> tuple[Tensor, Tensor]:
        parts, gates = self.contributions(sources, missing)
        return parts.sum(1), gates

    def contributions(self, sources: Mapping[str, Tensor], missing: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(parts (B, S, dim), gates (B, S)): parts[:, s] = g_s (W_s x_s + b_s), so fused = parts.sum(1) exactly;
        with a dot-product score each source's share of it is the dot product with its part (attribution)."""
        xs = [sources[n] for n in self.names]
        absent = self.mask(xs[0].shape[0], xs[0].device, missing)
        xs = [x * (~absent[:, i : i + 1]).to(x.dtype) for i, x in enumerate(xs)]
        gates = masked_softmax(self.gate(torch.cat(xs, dim=-1)), absent)  # (B, S)
        tokens = torch.stack([p(x) for p, x in zip(self.proj, xs)], dim=1)  # (B, S, dim)
        return gates.unsqueeze(-1) * tokens, gates


class AttentionFusion(nn.Module):
    """A learned query attends over source tokens (B, S, dim) (projection + source-type embedding).

    Single-head so the attention weights (B, S) returned read as per-source importance, like gates.
    """

    def __init__(
        self, in_dims: Mapping[str, int], dim: int, source_dropout: Mapping[str, float] | None = None
    ):
        super().__init__()
        self.in_dims, self.names, self.out_dim = dict(in_dims), list(in_dims), dim
        self.mask = _SourceMask(self.names, _check(in_dims, source_dropout))
        self.proj = nn.ModuleList(nn.Linear(d, dim) for d in in_dims.values())
        self.source_type = nn.Parameter(torch.randn(len(in_dims), dim) * 0.02)
        self.query = nn.Parameter(torch.randn(dim) * 0.02)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, sources: Mapping[str, Tensor], missing: Tensor | None = None) -> tuple[Tensor, Tensor]:
        xs = [sources[n] for n in self.names]
        absent = self.mask(xs[0].shape[0], xs[0].device, missing)
        tokens = torch.stack([p(x) for p, x in zip(self.proj, xs)], dim=1) + self.source_type  # (B, S, dim)
        logits = self.key(tokens) @ self.query / tokens.shape[-1] ** 0.5  # (B, S)
        weights = masked_softmax(logits, absent)
        return self.out((weights.unsqueeze(-1) * self.value(tokens)).sum(1)), weights
