"""Training objectives over one step's scores: sampled softmax (+ logQ), BPR, BCE, rating MSE, and their mix.

Every loss takes the same `Scores`, so `MultiObjective` can combine any of them without knowing their inputs.
"""

from __future__ import annotations

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
    """(B, B) scores of every user against every positive of the batch; diagonal = `pos`."""
    pos_logq: Tensor | None = None
    """(B,) log sampling probability of each positive (used for it as an in-batch negative)."""
    neg_logq: Tensor | None = None
    """(B, N) log sampling probability of each sampled negative."""
    rating: Tensor | None = None
    """(B,) observed ratings, NaN = none."""
    rating_pred: Tensor | None = None
    """(B,) predicted ratings; MSE falls back to `pos` when None."""

    @classmethod
    def from_vectors(
        cls,
        user: Tensor,
        pos: Tensor,
        neg: Tensor | None,
        batch: Mapping[str, Any],
        rating_pred: Tensor | None = None,
        in_batch: bool = True,
    ) -> Scores:
        """Build from user (B, D), positive (B, D) and negative (B, N, D) vectors and the training batch."""
        return cls(
            pos=(user * pos).sum(-1),
            pos_items=batch["item"],
            neg=torch.einsum("bd,bnd->bn", user, neg) if neg is not None else None,
            neg_items=batch.get("neg_items"),
            in_batch=user @ pos.T if in_batch else None,
            pos_logq=batch.get("pos_logq"),
            neg_logq=batch.get("neg_logq"),
            rating=batch.get("rating"),
            rating_pred=rating_pred,
        )


class SampledSoftmaxLoss(nn.Module):
    """Cross-entropy of the positive against in-batch positives of other users and sampled negatives.

    Logits are scores / temperature. With `logq_correction`, log q is subtracted from every in-batch logit
    (`pos_logq` of its item; the target is one of them) and from every sampled negative (`neg_logq`), so the
    sampled softmax estimates the full softmax instead of penalising items by how often they are sampled. In-batch columns holding the row's own positive item, and sampled
    negatives equal to it (accidental hits), are masked out.
    """

    def __init__(self, temperature: float = 1.0, in_batch: bool = True, logq_correction: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"SampledSoftmaxLoss temperature={temperature}: expected > 0")
        self.temperature, self.in_batch, self.logq_correction = temperature, in_batch, logq_correction

    def forward(self, s: Scores) -> Tensor:
        t = self.temperature
        pos = s.pos / t
        if self.in_batch and s.in_batch is not None and self.logq_correction and s.pos_logq is not None:
            # the target is one of the in-batch columns, so it gets the same correction (Yi et al., RecSys 2019)
            pos = pos - s.pos_logq
        columns = [pos.unsqueeze(1)]  # (B, 1): the target, column 0
        if self.in_batch and s.in_batch is not None:
            logits = s.in_batch / t
            if self.logq_correction and s.pos_logq is not None:
                logits = logits - s.pos_logq.unsqueeze(0)
            same = s.pos_items.unsqueeze(1) == s.pos_items.unsqueeze(0)  # includes the diagonal (the target)
            columns.append(logits.masked_fill(same, float("-inf")))
        if s.neg is not None:
            logits = s.neg / t
            if self.logq_correction and s.neg_logq is not None:
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
