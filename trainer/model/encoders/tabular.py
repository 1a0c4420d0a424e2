"""Attribute encoder: categorical, multi-categorical and numeric fields of users or items."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


class TabularEncoder(nn.Module):
    """Encode an entity's fields, looked up by id from tables held as buffers: `forward(ids (B,), ctx) -> (B, dim)`.

    Each categorical field gets an `nn.Embedding` (code 0 = missing, kept as a zero padding vector), each
    multi-categorical field an `nn.EmbeddingBag(mode="mean")` over its CSR values (an empty bag gives zeros),
    the numeric fields one `nn.Linear`; the pieces are concatenated and mixed by a final `nn.Linear` to `dim`.

    Args:
        cat_codes: (n, F) int codes per categorical field, 0 = missing; None or F = 0 for none.
        cat_cardinalities: F sizes, each including the 0 slot (as in the manifest's `cardinality`).
        num_values: (n, Fn) float numeric fields (standardised, missing = 0) or None.
        multi: field -> (offsets (n + 1,), values (nnz,) codes >= 1, cardinality including the 0 slot).
        dim: output size; also the per-field embedding size unless `field_dim` is given.
        field_dim: size of each field's embedding (default: `dim`).
        name: source name used by the fusion head.
        trained: (n,) bool, the entities training looks up, or None (all). A code that none of them carries
            (e.g. the zip code of a cold-start user alone) has an embedding no gradient ever reached: it is read
            as missing (0), so an untrained random row never enters a cold entity's vector.

    The tables are non-persistent buffers: they are data, rebuilt from the prepared dataset with the model,
    so checkpoints hold only learned weights.
    """

    cat_codes: Tensor | None
    num_values: Tensor | None

    def __init__(
        self,
        cat_codes: np.ndarray | None,
        cat_cardinalities: Sequence[int],
        num_values: np.ndarray | None,
        multi: Mapping[str, tuple[np.ndarray, np.ndarray, int]] | None,
        dim: int,
        field_dim: int | None = None,
        name: str = "tabular",
        trained: np.ndarray | None = None,
    ):
        super().__init__()
        self.name = name
        self.out_dim = dim
        field_dim = field_dim or dim
        multi = dict(multi or {})
        n_cat = 0 if cat_codes is None else int(cat_codes.shape[1])
        if n_cat != len(cat_cardinalities):
            raise ValueError(
                f"cat_codes has {n_cat} fields but cat_cardinalities has {len(cat_cardinalities)}"
            )
        sizes = [len(a) for a in (cat_codes, num_values) if a is not None]
        sizes += [len(off) - 1 for off, _, _ in multi.values()]
        if not sizes:
            raise ValueError(
                "TabularEncoder needs at least one categorical, multi-categorical or numeric field"
            )
        if len(set(sizes)) != 1:
            raise ValueError(f"field tables disagree on the number of entities: {sizes}")
        self.num_entities = sizes[0]
        if trained is not None:
            cat_codes, multi = _untrained_as_missing(np.asarray(trained, dtype=bool), cat_codes, multi)

        codes = _long(cat_codes) if cat_codes is not None and n_cat else None
        self.register_buffer("cat_codes", codes, persistent=False)
        if codes is not None and len(codes):
            bad = [(i, c) for i, c in enumerate(cat_cardinalities) if int(codes[:, i].max()) >= c]
            if bad:
                raise ValueError(f"categorical codes exceed their cardinality (field, cardinality): {bad}")
        self.cat = nn.ModuleList(nn.Embedding(c, field_dim, padding_idx=0) for c in cat_cardinalities)

        self.multi_names = list(multi)
        self.multi = nn.ModuleList()
        for i, (field, (offsets, values, card)) in enumerate(multi.items()):
            if len(values) and int(np.max(values)) >= card:
                raise ValueError(
                    f"multi-categorical field {field!r}: code {int(np.max(values))} >= cardinality {card}"
                )
            self.register_buffer(f"multi_offsets_{i}", _long(offsets), persistent=False)
            self.register_buffer(f"multi_values_{i}", _long(values), persistent=False)
            self.multi.append(nn.EmbeddingBag(card, field_dim, mode="mean", padding_idx=0))

        n_num = 0 if num_values is None else int(num_values.shape[1])
        self.register_buffer(
            "num_values",
            torch.as_tensor(np.asarray(num_values), dtype=torch.float32) if n_num else None,
            persistent=False,
        )
        self.numeric = nn.Linear(n_num, field_dim) if n_num else None

        n_parts = n_cat + len(multi) + (1 if n_num else 0)
        self.mix = nn.Linear(n_parts * field_dim, dim)

    def forward(self, ids: Tensor, ctx: Mapping[str, Any] | None = None) -> Tensor:
        parts: list[Tensor] = []
        if self.cat_codes is not None:
            codes = self.cat_codes[ids]  # (B, F)
            parts += [emb(codes[:, f]) for f, emb in enumerate(self.cat)]
        for i, bag in enumerate(self.multi):
            flat, starts = _csr_rows(
                getattr(self, f"multi_offsets_{i}"), getattr(self, f"multi_values_{i}"), ids
            )
            parts.append(bag(flat, starts))  # (B, field_dim); empty rows -> zeros
        if self.numeric is not None and self.num_values is not None:
            parts.append(self.numeric(self.num_values[ids]))
        return self.mix(torch.cat(parts, dim=-1))


def _untrained_as_missing(
    trained: np.ndarray,
    cat_codes: np.ndarray | None,
    multi: dict[str, tuple[np.ndarray, np.ndarray, int]],
) -> tuple[np.ndarray | None, dict[str, tuple[np.ndarray, np.ndarray, int]]]:
    """Copies of the tables with every code no `trained` entity carries set to 0 (missing)."""
    if cat_codes is not None and cat_codes.ndim == 2 and cat_codes.shape[1]:
        cat_codes = np.array(cat_codes)
        for f in range(cat_codes.shape[1]):
            col = cat_codes[:, f]
            col[~np.isin(col, col[trained])] = 0
    out = {}
    for field, (offsets, values, card) in multi.items():
        owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        values = np.array(values)
        values[~np.isin(values, values[trained[owner]])] = 0
        out[field] = (offsets, values, card)
    return cat_codes, out


def _long(a: np.ndarray) -> Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.long)


def _csr_rows(offsets: Tensor, values: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Rows `ids` of a CSR as EmbeddingBag input: (flat values (nnz_B,), bag starts (B,))."""
    start, end = offsets[ids], offsets[ids + 1]
    lengths = end - start
    bag_starts = torch.cumsum(lengths, 0) - lengths
    # position of every selected value inside the big `values` array
    within = torch.arange(int(lengths.sum()), device=ids.device) - torch.repeat_interleave(
        bag_starts, lengths
    )
    flat = values[torch.repeat_interleave(start, lengths) + within]
    return flat, bag_starts
