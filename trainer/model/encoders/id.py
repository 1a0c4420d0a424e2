"""Plain id embedding: the collaborative signal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn


class IdEmbedding(nn.Module):
    """One learned vector per id: `forward(ids (B,), ctx) -> (B, dim)`.

    Args:
        num: number of ids (dense, 0..num-1).
        dim: vector size.
        name: source name used by the fusion head.
        init_std: std of the normal initialisation (small, so initial dot products are near 0).
    """

    def __init__(self, num: int, dim: int, name: str = "id", init_std: float = 0.02):
        super().__init__()
        if num <= 0 or dim <= 0:
            raise ValueError(f"IdEmbedding(num={num}, dim={dim}): both must be > 0")
        self.name = name
        self.out_dim = dim
        self.embedding = nn.Embedding(num, dim)
        nn.init.normal_(self.embedding.weight, std=init_std)

    @property
    def num(self) -> int:
        return self.embedding.num_embeddings

    def forward(self, ids: Tensor, ctx: Mapping[str, Any] | None = None) -> Tensor:
        return self.embedding(ids)
