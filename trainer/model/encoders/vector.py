"""Precomputed-vector source: embeddings made elsewhere (an image model, a foundation model run offline), projected."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class VectorEncoder(nn.Module):
    """Project fixed vectors looked up by id: `forward(ids (B,), ctx) -> (B, dim)`; `missing_rows(ids) -> (B,) bool`.

    The vectors are data, not weights: a non-persistent buffer rebuilt from the prepared dataset with the model
    (checkpoints hold only the projection). Entities without a vector have a zero row and are declared missing
    (`missing_rows`), which the tower passes to the fusion head, so their fused vector comes from the other
    sources alone (as a cold item's id); their output here is zero as well, for heads that read it anyway.

    Args:
        vectors: (n, D_in) float vectors, row = dense id (zeros where there is none).
        present: (n,) bool, True = the entity has a vector.
        dim: output size.
        hidden: size of a hidden layer (Linear -> GELU -> Linear); None = one Linear.
        dropout: dropout on the input vectors in training.
        center: subtract the mean vector of the entities that have one first: embeddings pooled from a language
            model share one dominant direction (cosines of 0.9 between unrelated items), which centering removes.
        normalize_input: L2-normalise each (centered) vector (files differ in scale; the direction is what they carry).
        name: source name used by the fusion head.
    """

    vectors: Tensor  # (n, D_in), centered when asked
    present: Tensor

    def __init__(self, vectors: np.ndarray, present: np.ndarray, dim: int, hidden: int | None = None,
                 dropout: float = 0.0, center: bool = True, normalize_input: bool = True, name: str = "vector"):
        super().__init__()
        vectors, present = np.asarray(vectors), np.asarray(present, dtype=bool)
        if vectors.ndim != 2 or present.shape != (len(vectors),):
            raise ValueError(f"VectorEncoder: vectors {vectors.shape} must be (n, D) and present {present.shape} (n,)")
        if dim <= 0 or (hidden is not None and hidden <= 0):
            raise ValueError(f"VectorEncoder(dim={dim}, hidden={hidden}): sizes must be > 0")
        self.name, self.out_dim, self.in_dim = name, dim, int(vectors.shape[1])
        self.normalize_input = normalize_input
        vectors = vectors.astype(np.float32)
        if center and present.any():
            vectors = np.where(present[:, None], vectors - vectors[present].mean(0, dtype=np.float64), 0.0).astype(np.float32)
        self.register_buffer("vectors", torch.as_tensor(vectors), persistent=False)
        self.register_buffer("present", torch.as_tensor(present), persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.proj = (nn.Linear(self.in_dim, dim) if hidden is None
                     else nn.Sequential(nn.Linear(self.in_dim, hidden), nn.GELU(), nn.Linear(hidden, dim)))

    @property
    def num(self) -> int:
        return int(self.vectors.shape[0])

    def missing_rows(self, ids: Tensor) -> Tensor:
        """(B,) bool: ids without a vector."""
        return ~self.present[ids]

    def forward(self, ids: Tensor, ctx: Mapping[str, Any] | None = None) -> Tensor:
        x = self.vectors[ids]  # (B, D_in)
        if self.normalize_input:
            x = F.normalize(x, dim=-1)  # a zero row stays zero
        out = self.proj(self.dropout(x))  # (B, dim)
        return out * self.present[ids].unsqueeze(-1).to(out.dtype)
