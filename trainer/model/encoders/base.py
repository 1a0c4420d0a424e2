"""The one Protocol a source encoder satisfies; towers and fusion heads rely on nothing more."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class SourceEncoder(Protocol):
    """Maps ids to vectors: `forward(ids (B,) long, ctx) -> (B, out_dim)`.

    `ctx` holds whatever else the source needs for this call (e.g. `history` (B, L) for the sequence encoder,
    precomputed graph tables); encoders that need nothing ignore it. Side features live inside the encoder as
    buffers, so any id (every item, for full ranking) can be encoded without a batch carrying features.
    An encoder whose source is absent for some ids may also define `missing_rows(ids) -> (B,) bool` (the vector
    source: ids without a vector); the tower declares those rows missing to the fusion head.
    """

    name: str
    out_dim: int

    def __call__(self, ids: Tensor, ctx: Mapping[str, Any]) -> Tensor: ...
