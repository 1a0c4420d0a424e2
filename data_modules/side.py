"""Read-only view of a prepared dataset's side data, memory-mapped once per process.

The model builds its feature tables (categorical codes, token ids, graph edges) from this; batches then carry
only ids, so the item tower can encode every item for full ranking.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from data_modules.integrity import check_side, load_npy
from data_modules.manifest import load_manifest


class SideData:
    """Side arrays of the prepared folder `root`; each is checked against the manifest when first opened (size,
    and sha256 once per process unless `verify=False`: data_modules/integrity.py)."""

    def __init__(self, root: str | Path, manifest: dict[str, Any] | None = None, verify: bool = True):
        self.root = Path(root)
        self.manifest = manifest or load_manifest(self.root)
        self.verify = verify
        self._cache: dict[str, np.ndarray] = {}

    @property
    def n_users(self) -> int:
        return int(self.manifest["counts"]["users"])

    @property
    def n_items(self) -> int:
        return int(self.manifest["counts"]["items"])

    def has(self, name: str) -> bool:
        return name in self.manifest.get("side", {})

    def array(self, name: str) -> np.ndarray:
        """Side array `name` (see layout.py), memory-mapped; KeyError naming what exists if absent."""
        if name not in self._cache:
            if not self.has(name):
                raise KeyError(f"side array {name!r} not in {self.root} (have {sorted(self.manifest.get('side', {}))})")
            path = check_side(self.root, name, self.manifest["side"][name], hash=self.verify)
            self._cache[name] = load_npy(path)
        return self._cache[name]

    def fields(self, entity: str) -> dict[str, Any]:
        """Field schema of `users` or `items`: categorical / multi_categorical / numeric lists as in the manifest."""
        return self.manifest["schema"].get(entity) or {}

    def text_info(self, entity: str) -> dict[str, Any] | None:
        return (self.manifest["schema"].get("text") or {}).get(entity)

    def vector_info(self, entity: str) -> dict[str, Any] | None:
        """`user` / `item` precomputed vectors: {file, dim, rows, matched, missing, not_in_catalog, unknown}, or None."""
        return (self.manifest["schema"].get("vectors") or {}).get(entity)

    @cached_property
    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) of every training interaction, from the history CSR (no shard read needed)."""
        off = np.asarray(self.array("history_offsets"))
        users = np.repeat(np.arange(len(off) - 1, dtype=np.int64), np.diff(off))
        return users, np.asarray(self.array("history_items"), dtype=np.int64)
