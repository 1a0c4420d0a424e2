"""The canonical tables: the contract between readers and everything downstream.

A reader turns one public format into a `CanonicalTables`; nothing after it knows about MovieLens or Amazon.

- `interactions` (DataFrame): `user` and `item` as strings (raw ids); optional `rating` (float),
  `timestamp` (int64 seconds), `review` (str), `event` (str), `split` ("train" / "valid" / "test"
  when the input comes pre-split).
- `users` / `items` (DataFrame or None): one row per entity, key column `user` / `item` (str); every
  other column is a field whose kind is given in `user_fields` / `item_fields`.
- `graphs`: named edge lists (DataFrames of strings):
    `social`    columns `src`, `dst` (user ids; directed; a symmetric graph lists both directions)
    `kg`        columns `item`, `relation`, `entity` (an item's relation to a knowledge-graph entity)
    `item_item` columns `src`, `dst`, `relation` (item ids, e.g. also_buy)
- `quarantine`: row-level problems the reader met (bad JSON line, invalid UTF-8, ...), counted, sampled.
- `rows_read`: rows the reader saw per file, so a rejected share can be computed.
- `origin` (DataFrame or None): `file` and 1-based `line` of each interaction row, in the same order, so that a
  row rejected later (a duplicate, an impossible timestamp) is reported with its file:line.
- `files`: the file each other table came from (`users`, `items`, and each graph's name), for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import pandas as pd

from data_modules.errors import Quarantine


class FieldKind(str, Enum):
    """How a user or item attribute column is encoded downstream."""

    categorical = "categorical"  # one token per row -> embedding
    multi_categorical = "multi_categorical"  # list of tokens per row (genres) -> embedding bag
    numeric = "numeric"  # float -> normalised
    text = "text"  # free text -> rendered by a template and tokenized


GRAPH_COLUMNS: dict[str, tuple[str, ...]] = {
    "social": ("src", "dst"),
    "kg": ("item", "relation", "entity"),
    "item_item": ("src", "dst", "relation"),
}


@dataclass
class CanonicalTables:
    interactions: pd.DataFrame
    users: pd.DataFrame | None = None
    items: pd.DataFrame | None = None
    user_fields: dict[str, FieldKind] = field(default_factory=dict)
    item_fields: dict[str, FieldKind] = field(default_factory=dict)
    graphs: dict[str, pd.DataFrame] = field(default_factory=dict)
    quarantine: Quarantine = field(default_factory=Quarantine)
    rows_read: dict[str, int] = field(default_factory=dict)
    name: str = "dataset"
    origin: pd.DataFrame | None = None
    files: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        """Check the contract; raise ValueError naming the table and column that break it."""
        for col in ("user", "item"):
            if col not in self.interactions.columns:
                raise ValueError(f"interactions: missing required column {col!r} (have {list(self.interactions.columns)})")
        for tname, table, key, fields in (("users", self.users, "user", self.user_fields), ("items", self.items, "item", self.item_fields)):
            if table is None:
                continue
            if key not in table.columns:
                raise ValueError(f"{tname}: missing key column {key!r}")
            for f in fields:
                if f not in table.columns:
                    raise ValueError(f"{tname}: field {f!r} declared but not a column (have {list(table.columns)})")
        for gname, g in self.graphs.items():
            expected = GRAPH_COLUMNS.get(gname)
            if expected is None:
                raise ValueError(f"graph {gname!r}: unknown graph name, expected one of {sorted(GRAPH_COLUMNS)}")
            missing = [c for c in expected if c not in g.columns]
            if missing:
                raise ValueError(f"graph {gname!r}: missing columns {missing}, expected {expected}")

    def summary(self) -> dict[str, int]:
        inter = self.interactions
        out = {"interactions": len(inter), "users": int(inter["user"].nunique()), "items": int(inter["item"].nunique())}
        if self.users is not None:
            out["user_rows"] = len(self.users)
        if self.items is not None:
            out["item_rows"] = len(self.items)
        for g, df in self.graphs.items():
            out[f"graph_{g}"] = len(df)
        return out
