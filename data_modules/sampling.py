"""Negative samplers: draw item ids and report their log sampling probability (for logQ correction).

Both samplers invert a cumulative distribution at `rng.random(shape)`, so a call consumes exactly one
64-bit draw per sample, row-major. That contract lets the stream skip to any row of a global batch by
advancing the bit generator (`PCG64.advance`) instead of drawing and discarding the rows before it, so
the negatives of a row never depend on how a global batch is split across ranks.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np


class NegativeSampler(Protocol):
    """Draws item ids; `log_prob` is the log of the probability with which `sample` draws each id."""

    n_items: int

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Item ids of `shape`, int64; consumes exactly `prod(shape)` doubles of `rng.random`."""
        ...

    def log_prob(self, items: np.ndarray) -> np.ndarray:
        """log P(item) for an int array of any shape, float64 of the same shape (-inf when never drawn)."""
        ...


class UniformSampler:
    """Every item id in `0..n_items-1` with probability `1 / n_items`."""

    def __init__(self, n_items: int):
        if n_items <= 0:
            raise ValueError(f"UniformSampler needs n_items > 0, got {n_items}")
        self.n_items = int(n_items)
        self._logp = -float(np.log(self.n_items))

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        # floor(u * n) instead of rng.integers: integers() uses rejection sampling, which would break the
        # one-draw-per-sample contract (its bias is at most n / 2**53, irrelevant here).
        items = (rng.random(shape) * self.n_items).astype(np.int64)
        return np.minimum(items, self.n_items - 1, out=items)

    def log_prob(self, items: np.ndarray) -> np.ndarray:
        return np.full(np.shape(items), self._logp, dtype=np.float64)


class PopularitySampler:
    """Item i with probability `popularity[i] ** alpha / sum_j popularity[j] ** alpha`.

    With `alpha > 0` an item of popularity 0 is never drawn (its log-probability is -inf);
    `alpha == 0` is uniform over all items, unseen ones included.
    """

    def __init__(self, popularity: np.ndarray, alpha: float = 0.75):
        if alpha < 0:
            raise ValueError(f"PopularitySampler needs alpha >= 0, got {alpha}")
        pop = np.asarray(popularity, dtype=np.float64)
        if pop.ndim != 1 or pop.size == 0 or (pop < 0).any():
            raise ValueError(
                f"popularity must be a non-empty 1-d array of counts >= 0, got shape {pop.shape}"
            )
        weights = np.ones_like(pop) if alpha == 0 else pop**alpha
        self._cum = np.cumsum(weights)
        self._total = float(self._cum[-1])
        if self._total <= 0:
            raise ValueError("popularity sums to 0: every item has popularity 0, nothing can be sampled")
        # Rounding can put u * total at or past the end of the table; such draws go to the last item
        # that can be drawn at all, never to a trailing zero-weight item.
        self._last = int(np.flatnonzero(weights > 0)[-1])
        with np.errstate(divide="ignore"):
            self._logp = np.log(weights / self._total)
        self.n_items = int(pop.size)
        self.alpha = float(alpha)

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        # Item i owns [cum[i-1], cum[i]); side="right" gives zero-width (popularity 0) items no draw.
        items = np.searchsorted(self._cum, rng.random(shape) * self._total, side="right").astype(np.int64)
        return np.minimum(items, self._last, out=items)

    def log_prob(self, items: np.ndarray) -> np.ndarray:
        return self._logp[np.asarray(items)]


def build_sampler(
    kind: Literal["uniform", "popularity"], item_popularity: np.ndarray, alpha: float = 0.75
) -> NegativeSampler:
    """The sampler named by `kind` over the items of `item_popularity` `(n_items,)`."""
    if kind == "uniform":
        return UniformSampler(len(item_popularity))
    if kind == "popularity":
        return PopularitySampler(item_popularity, alpha)
    raise ValueError(f"negative_sampler must be 'uniform' or 'popularity', got {kind!r}")
