"""Training objectives over one step's scores: sampled softmax (+ logQ), BPR, BCE, rating MSE, and their mix.

Every loss takes the same `Scores`, so `MultiObjective` can combine any of them without knowing their inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Scores:
    """One step's scores and the batch facts the losses need (B users, N sampled negatives per user)."""

    pos: Tensor
    """(B,) score of each user's positive item."""
    pos_items: Tensor
    """(B,) long positive item ids (to mask in-batch duplicates and accidental hits)."""
    neg: Tensor | None = None
    """(B, N) scores of the sampled negatives."""
    neg_items: Tensor | None = None
    """(B, N) long sampled negative ids."""
    in_batch: Tensor | None = None
    """(B, C) scores of every user against the C in-batch candidates (the positives of the batch; of the global
    batch when gathered across ranks); the row's own positive is among them."""
    cand_items: Tensor | None = None
    """(C,) long item ids of the in-batch candidates; None = `pos_items` (C = B, not gathered)."""
    cand_logq: Tensor | None = None
    """(C,) log Q of each in-batch candidate (see `mixed_log_q`); None = `pos_logq`."""
    pos_logq: Tensor | None = None
    """(B,) log Q of each row's positive, the target (see `mixed_log_q`)."""
    neg_logq: Tensor | None = None
    """(B, N) log Q of each sampled negative (see `mixed_log_q`)."""
    rating: Tensor | None = None
    """(B,) observed ratings, NaN = none."""
    rating_pred: Tensor | None = None
    """(B,) predicted ratings; MSE falls back to `pos` when None."""
    catalog: Tensor | None = None
    """(B, n_items) scores of every user against every item (full-catalog softmax); `pos_items` index the targets."""

    @classmethod
    def from_vectors(
        cls,
        user: Tensor,
        pos: Tensor,
        neg: Tensor | None,
        batch: Mapping[str, Any],
        rating_pred: Tensor | None = None,
        in_batch: bool = True,
        candidates: Tensor | None = None,
    ) -> Scores:
        """Build from user (B, D), positive (B, D) and negative (B, N, D) vectors and the training batch.
        `candidates` (C, D): the in-batch candidate vectors (default `pos`); with them the batch carries
        `cand_items` (C,) and `cand_logq` (C,)."""
        cand = pos if candidates is None else candidates
        return cls(
            pos=(user * pos).sum(-1),
            pos_items=batch["item"],
            neg=torch.einsum("bd,bnd->bn", user, neg) if neg is not None else None,
            neg_items=batch.get("neg_items"),
            in_batch=user @ cand.T if in_batch else None,
            cand_items=batch.get("cand_items"),
            cand_logq=batch.get("cand_logq"),
            pos_logq=batch.get("pos_logq"),
            neg_logq=batch.get("neg_logq"),
            rating=batch.get("rating"),
            rating_pred=rating_pred,
        )


def mixed_log_q(log_q_batch: Tensor, log_q_sampler: Tensor, n_batch: int, n_sampled: int) -> Tensor:
    """log Q(j) = log(C * q_b(j) + N * q_s(j)): the expected count of item j among one row's candidates.

    Why. A row's softmax normaliser Z = sum_j exp(s_j) over the whole catalog is estimated from its candidate
    multiset: C in-batch candidates (the positives of the global batch, so drawn with q_b = training popularity)
    and N sampled negatives drawn with the sampler's q_s. Weighting every candidate c by 1 / Q(c),

        E[ sum_{c in candidates} exp(s_c) / Q(c) ] = sum_j exp(s_j) * (C q_b(j) + N q_s(j)) / Q(j) = Z,

    exactly, whichever source each candidate came from (the "balance heuristic" of multiple importance
    sampling; Yang et al., WWW 2020, mixed negative sampling). In logits this is `s_c - log Q(c)`, applied to
    every in-batch candidate, every sampled negative and the target alike (one consistent correction, so the
    target is not favoured over an equal candidate). Correcting each source by its own q alone would also be
    unbiased but weights the two sources' estimates of Z equally whatever C and N are; and the per-rank C of
    in-batch negatives would make the objective depend on the world size. With N = 0 this is
    log C + log q_b (Yi et al., RecSys 2019, up to a constant), with C = 0 it is log N + log q_s.

    Args: log_q_batch, log_q_sampler: log q_b and log q_s of the same items (any shape); n_batch = C, the
    candidates per row after any gather; n_sampled = N, sampled negatives per row.
    """
    terms = []
    if n_batch > 0:
        terms.append(log_q_batch + math.log(n_batch))
    if n_sampled > 0:
        terms.append(log_q_sampler + math.log(n_sampled))
    if not terms:
        raise ValueError("mixed_log_q: no candidates (n_batch = n_sampled = 0)")
    return terms[0] if len(terms) == 1 else torch.logaddexp(*terms)


class SampledSoftmaxLoss(nn.Module):
    """Cross-entropy of the positive against the in-batch candidates and the row's sampled negatives.

    Logits are scores / temperature. With `logq_correction`, log Q is subtracted from every logit — the
    in-batch candidates (`cand_logq`), the sampled negatives (`neg_logq`) and the target (`pos_logq`) — so the
    sampled softmax estimates the full softmax (`mixed_log_q` says which Q). In-batch columns holding the
    row's own positive item (its own column and duplicates), and sampled negatives equal to it (accidental
    hits), are masked out; the target is column 0. With `Scores.catalog` (every item scored) it is the exact
    cross-entropy over the catalog instead: nothing is sampled, so nothing is corrected or masked.
    """

    def __init__(self, temperature: float = 1.0, in_batch: bool = True, logq_correction: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"SampledSoftmaxLoss temperature={temperature}: expected > 0")
        self.temperature, self.in_batch, self.logq_correction = temperature, in_batch, logq_correction

    def forward(self, s: Scores) -> Tensor:
        t = self.temperature
        if s.catalog is not None:
            return F.cross_entropy(s.catalog / t, s.pos_items)
        correct = self.logq_correction
        pos = s.pos / t
        if correct and s.pos_logq is not None:
            pos = pos - s.pos_logq
        columns = [pos.unsqueeze(1)]  # (B, 1): the target, column 0
        if self.in_batch and s.in_batch is not None:
            items = s.pos_items if s.cand_items is None else s.cand_items
            logq = s.pos_logq if s.cand_logq is None else s.cand_logq
            logits = s.in_batch / t
            if correct and logq is not None:
                logits = logits - logq.unsqueeze(0)
            same = s.pos_items.unsqueeze(1) == items.unsqueeze(0)  # the row's own column and its duplicates
            columns.append(logits.masked_fill(same, float("-inf")))
        if s.neg is not None:
            logits = s.neg / t
            if correct and s.neg_logq is not None:
                logits = logits - s.neg_logq
            if s.neg_items is not None:
                logits = logits.masked_fill(s.neg_items == s.pos_items.unsqueeze(1), float("-inf"))
            columns.append(logits)
        logits = torch.cat(columns, dim=1)
        return -torch.log_softmax(logits, dim=1)[:, 0].mean()


class BPRLoss(nn.Module):
    """Bayesian personalised ranking: mean over (row, negative) of -log sigmoid(pos - neg); hits excluded."""

    def forward(self, s: Scores) -> Tensor:
        if s.neg is None:
            raise ValueError("BPRLoss needs sampled negatives (Scores.neg)")
        terms = -F.logsigmoid(s.pos.unsqueeze(1) - s.neg)  # (B, N)
        return _masked_mean(terms, _not_hit(s))


class BCELoss(nn.Module):
    """Pointwise binary cross-entropy: positives labelled 1, sampled negatives 0, mean over all B + B*N terms."""

    def forward(self, s: Scores) -> Tensor:
        if s.neg is None:
            raise ValueError("BCELoss needs sampled negatives (Scores.neg)")
        pos = F.binary_cross_entropy_with_logits(s.pos, torch.ones_like(s.pos), reduction="none")
        neg = F.binary_cross_entropy_with_logits(s.neg, torch.zeros_like(s.neg), reduction="none")
        keep = _not_hit(s)
        return (pos.sum() + (neg * keep).sum()) / (pos.numel() + keep.sum())


class RatingMSELoss(nn.Module):
    """Mean squared error over rows with a rating (NaN = none); 0 (still differentiable) when none has one."""

    def forward(self, s: Scores) -> Tensor:
        pred = s.rating_pred if s.rating_pred is not None else s.pos
        if s.rating is None:
            return pred.sum() * 0.0
        has = ~torch.isnan(s.rating)
        diff = torch.where(has, pred - torch.nan_to_num(s.rating), torch.zeros_like(pred))
        return (diff**2).sum() / has.sum().clamp(min=1)


class MultiObjective(nn.Module):
    """Weighted sum of named losses: `forward(scores) -> (total, {name: term})`, terms detached for logging.

    Args:
        losses: name -> loss module taking `Scores`.
        weights: name -> weight (default 1.0 each); a name absent from `losses` is an error.
    """

    def __init__(self, losses: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None):
        super().__init__()
        if not losses:
            raise ValueError("MultiObjective needs at least one loss")
        weights = dict(weights or {})
        unknown = set(weights) - set(losses)
        if unknown:
            raise ValueError(f"weights name unknown losses {sorted(unknown)}; losses are {list(losses)}")
        self.losses = nn.ModuleDict(dict(losses))
        self.weights = {name: float(weights.get(name, 1.0)) for name in losses}

    def forward(self, scores: Scores) -> tuple[Tensor, dict[str, Tensor]]:
        terms = {name: loss(scores) for name, loss in self.losses.items()}
        total = sum(
            (self.weights[n] * v for n, v in terms.items()), torch.zeros((), device=scores.pos.device)
        )
        return total, {n: v.detach() for n, v in terms.items()}


def _not_hit(s: Scores) -> Tensor:
    """(B, N) float: 1 where the sampled negative is not the row's positive."""
    assert s.neg is not None
    if s.neg_items is None:
        return torch.ones_like(s.neg)
    return (s.neg_items != s.pos_items.unsqueeze(1)).to(s.neg.dtype)


def _masked_mean(x: Tensor, keep: Tensor) -> Tensor:
    return (x * keep).sum() / keep.sum().clamp(min=1)
