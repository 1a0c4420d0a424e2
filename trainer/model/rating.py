"""A rating head: explicit ratings predicted from the two towers' score with learned offsets and scale.

Regressing the cosine of two unit vectors (in [-1, 1]) onto 1-5 stars cannot fit: the score has neither the
range nor the offsets ratings have (a generous user, a well-liked film). As in biased matrix factorisation
(Koren, Bell & Volinsky 2009; surprise's SVD), the prediction adds a global mean and per-user / per-item
biases to the interaction term, here the towers' score scaled by a learned factor:

    r_hat(u, i) = mu + b_u + b_i + scale * score(u, i)

mu starts at the training ratings' mean; the biases at 0; `scale` at a small `init_scale`, so the first steps
predict about mu while the towers' cosines are still noise, and the head grows the scale as they become useful. Users and items without training ratings keep bias 0, so they fall back on mu + the towers' score.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RatingHead(nn.Module):
    """`forward(users (B,), items (B,), score (B,)) -> (B,)` predicted ratings; outside training they are clipped
    to `rating_range` (the scale the data was cleaned to), as surprise and RecBole clip theirs."""

    def __init__(self, n_users: int, n_items: int, global_mean: float = 0.0, init_scale: float = 0.5,
                 rating_range: tuple[float, float] | None = None):
        super().__init__()
        self.rating_range = tuple(rating_range) if rating_range is not None else None
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        # (1,), not 0-d: DeepSpeed ZeRO flattens parameters into byte buffers and refuses 0-d tensors
        self.global_bias = nn.Parameter(torch.tensor([float(global_mean)]))
        self.scale = nn.Parameter(torch.tensor([float(init_scale)]))

    def forward(self, users: Tensor, items: Tensor, score: Tensor) -> Tensor:
        bias = self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)
        pred = self.global_bias + bias + self.scale * score
        if self.rating_range is not None and not self.training:
            pred = pred.clamp(*self.rating_range)
        return pred
