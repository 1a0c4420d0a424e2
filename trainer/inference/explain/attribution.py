"""How much each source of a tower contributed to a dot-product score u . v.

Two methods, both on the fusion head's inputs (the source encoders run once; only the head is re-run):

* **gated-exact** (GatedFusion): fused = sum_s g_s (W_s x_s + b_s) (`GatedFusion.contributions`), so with
  score = other . fused each source's share is other . part_s, and the shares sum to the score exactly. When the
  model L2-normalises the fused vector (`model.normalize`) the normalisation is a positive scale 1 / ||fused||, so
  the shares are scaled by it and still sum to the score exactly.
* **shapley-exact** (any head, the default for concat / attention): Shapley values of the game
  v(T) = score with only the sources in T present (the others declared missing, as the towers handle a cold item or
  a dropped source), by enumeration over all 2^S source subsets (S <= MAX_SHAPLEY_SOURCES). They sum to
  v(all) - v(none). A source already missing for a row (a cold item's id) is a dummy player: its value is 0.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.model.fusion import GatedFusion

MAX_SHAPLEY_SOURCES = 8  # 256 head evaluations per row; towers have at most 5 sources
METHODS = ("auto", "gated-exact", "shapley-exact")


@dataclass
class Shares:
    """Per-source shares of a score.

    names: the tower's sources in order; shares (..., S); score (...): the score explained (all sources present);
    baseline (...): the score with no source present (0 for gated-exact: the shares sum to the score itself);
    gates (..., S) | None: the head's weights; method: how the shares were computed."""

    names: list[str]
    shares: Tensor
    score: Tensor
    baseline: Tensor
    gates: Tensor | None
    method: str


def resolve_method(fusion: nn.Module, method: str = "auto") -> str:
    if method not in METHODS:
        raise ValueError(f"attribution method {method!r}: expected one of {METHODS}")
    if method == "auto":
        return "gated-exact" if isinstance(fusion, GatedFusion) else "shapley-exact"
    if method == "gated-exact" and not isinstance(fusion, GatedFusion):
        raise ValueError(f"attribution gated-exact needs a GatedFusion head, this tower has {type(fusion).__name__}")
    return method


def encode_sources(tower: nn.Module, ids: Tensor, ctx: Mapping) -> dict[str, Tensor]:
    """The tower's source vectors {name: (B, D_s)}, as `Tower.forward` computes them before fusion."""
    return {name: enc(ids, ctx) for name, enc in tower.encoders.items()}


def fuse(fusion: nn.Module, sources: Mapping[str, Tensor], missing: Tensor | None, normalize: bool) -> Tensor:
    """(B, D): the tower's output vector from its source vectors, as FusionModule._vectors returns it."""
    v = fusion(sources, missing)[0]
    return F.normalize(v, dim=-1) if normalize else v


def _score(vec: Tensor, other: Tensor) -> Tensor:
    """vec (B, D) against other (B, D) -> (B,), or against other (B, K, D) -> (B, K)."""
    return (vec * other).sum(-1) if other.dim() == 2 else torch.einsum("bd,bkd->bk", vec, other)


def gated_shares(fusion: GatedFusion, sources: Mapping[str, Tensor], missing: Tensor | None, other: Tensor,
                 normalize: bool) -> Shares:
    """Exact decomposition for a gated head. `other` (B, D) or (B, K, D): the vector(s) the tower's output is
    scored against. shares (B, S) or (B, K, S)."""
    parts, gates = fusion.contributions(sources, missing)  # (B, S, D)
    if normalize:  # F.normalize divides by max(||fused||, eps): the same scale for every part
        parts = parts / parts.sum(1).norm(dim=-1).clamp_min(1e-12)[:, None, None]
    if other.dim() == 2:
        shares = torch.einsum("bsd,bd->bs", parts, other)
    else:
        shares = torch.einsum("bsd,bkd->bks", parts, other)
    score = _score(fuse(fusion, sources, missing, normalize), other)
    return Shares(list(fusion.names), shares, score, torch.zeros_like(score), gates, "gated-exact")


def shapley_values(value: Callable[[Tensor], Tensor], n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Exact Shapley values of an n-player game. value(absent (n,) bool) -> payoff tensor (...,) for the coalition
    of the players not absent. Returns (phi (..., n), v(all), v(none)); phi.sum(-1) == v(all) - v(none)."""
    if n > MAX_SHAPLEY_SOURCES:
        raise ValueError(f"exact Shapley over {n} sources (2^{n} evaluations): at most {MAX_SHAPLEY_SOURCES}")
    values = {}
    for present in itertools.product((False, True), repeat=n):
        values[present] = value(~torch.tensor(present, dtype=torch.bool))
    full, empty = (True,) * n, (False,) * n
    phi = torch.zeros((*values[full].shape, n), dtype=values[full].dtype, device=values[full].device)
    for present, v in values.items():
        size = sum(present)
        for i in range(n):
            if present[i]:
                continue
            with_i = present[:i] + (True,) + present[i + 1:]
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            phi[..., i] += weight * (values[with_i] - v)
    return phi, values[full], values[empty]


def shapley_shares(fusion: nn.Module, sources: Mapping[str, Tensor], missing: Tensor | None, other: Tensor,
                   normalize: bool) -> Shares:
    """Exact Shapley values over source masks (masking = declaring the source missing). `other` (B, D) or
    (B, K, D); shares (B, S) or (B, K, S)."""
    names = list(fusion.names)
    b = next(iter(sources.values())).shape[0]
    base = missing if missing is not None else torch.zeros(b, len(names), dtype=torch.bool)

    def value(absent: Tensor) -> Tensor:
        return _score(fuse(fusion, sources, base | absent.to(base.device).unsqueeze(0), normalize), other)

    phi, full, empty = shapley_values(value, len(names))
    out = fusion(sources, missing)
    return Shares(names, phi, full, empty, out[1], "shapley-exact")


def attribute(fusion: nn.Module, sources: Mapping[str, Tensor], missing: Tensor | None, other: Tensor,
              normalize: bool, method: str = "auto") -> Shares:
    if resolve_method(fusion, method) == "gated-exact":
        return gated_shares(fusion, sources, missing, other, normalize)  # type: ignore[arg-type]
    return shapley_shares(fusion, sources, missing, other, normalize)


def masked_score(fusion: nn.Module, sources: Mapping[str, Tensor], missing: Tensor | None, drop: Tensor,
                 other: Tensor, normalize: bool) -> Tensor:
    """Score with source `drop[r]` (B,) long of each row additionally declared missing (the deletion test)."""
    b = drop.shape[0]
    base = missing if missing is not None else torch.zeros(b, len(fusion.names), dtype=torch.bool)
    absent = base | F.one_hot(drop, len(fusion.names)).bool().to(base.device)
    return _score(fuse(fusion, sources, absent, normalize), other)
