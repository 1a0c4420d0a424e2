"""Encode user/item fields and graphs into dense side arrays, with vocabularies for the manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from data_modules.errors import Quarantine
from data_modules.tables import FieldKind


@dataclass
class EncodedFields:
    """Side arrays of one entity type (users or items) plus the schema that describes them."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    schema: dict[str, Any] = field(default_factory=dict)


def encode_fields(table: pd.DataFrame | None, key: str, fields: dict[str, FieldKind], index: pd.Index, prefix: str,
                  q: Quarantine, source: str, pinned: dict[str, Any] | None = None) -> EncodedFields:
    """Align `table` to the dense `index` (raw ids in index order) and encode each non-text field. `source` is the
    table's file (named in quarantine samples). `pinned`: a parent dataset's schema of this entity (an append,
    prepare/append.py): its vocabularies keep their codes (new values get the next ones) and its numeric fields
    their mean / std.

    Entities without a row get missing values (code 0 / 0.0); rows for entities not in the index are harmless and
    reported as unused (`<prefix>_row_without_interactions` in `q.unused`), not as rejected; the schema says how many.
    """
    out = EncodedFields()
    if table is None or not fields:
        return out
    dup = table[key].duplicated()
    if dup.any():
        q.reject_many(f"{prefix}_duplicate_row", int(dup.sum()), path=source, reason=f"second row for the same {key}",
                      records=table[dup].head(q.sample_per_rule)[[key]].to_dict("records"))
        table = table[~dup]
    unknown = ~table[key].isin(index)
    q.note_unused(f"{prefix}_row_without_interactions", int(unknown.sum()), path=source)
    aligned = table.set_index(key).reindex(index)
    out.schema["missing_rows"] = int(len(index) - (~unknown).sum())
    out.schema["unused_rows"] = int(unknown.sum())
    out.schema["file"] = source
    cat_cols, num_cols = [], []
    old = {f["name"]: f for group in ("categorical", "multi_categorical", "numeric") for f in (pinned or {}).get(group, [])}
    for name, kind in fields.items():
        col = aligned[name]
        if kind == FieldKind.categorical:
            codes, vocab = _categorical(col, old.get(name, {}).get("vocab"))
            cat_cols.append(codes)
            out.schema.setdefault("categorical", []).append({"name": name, "cardinality": len(vocab) + 1, "vocab": vocab})
        elif kind == FieldKind.multi_categorical:
            offsets, values, vocab = _multi(col, old.get(name, {}).get("vocab"))
            out.arrays[f"{prefix}_multi_{name}_offsets"], out.arrays[f"{prefix}_multi_{name}_values"] = offsets, values
            out.schema.setdefault("multi_categorical", []).append({"name": name, "cardinality": len(vocab) + 1, "vocab": vocab})
        elif kind == FieldKind.numeric:
            values, stats = _numeric(col, old.get(name))
            num_cols.append(values)
            out.schema.setdefault("numeric", []).append({"name": name, **stats})
        elif kind == FieldKind.text:
            out.schema.setdefault("text", []).append(name)
    if cat_cols:
        out.arrays[f"{prefix}_cat"] = np.stack(cat_cols, axis=1).astype(np.int32)
    if num_cols:
        out.arrays[f"{prefix}_num"] = np.stack(num_cols, axis=1).astype(np.float32)
    return out


def _categorical(col: pd.Series, vocab: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    s = col.astype("string")
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    if vocab is not None:
        return _pinned(codes, [str(u) for u in uniques], vocab)
    return (codes + 1).astype(np.int32), [str(u) for u in uniques]


def _pinned(codes: np.ndarray, uniques: list[str], vocab: list[str]) -> tuple[np.ndarray, list[str]]:
    """Recode factorized `codes` (-1 = missing) so `vocab`'s values keep their codes (1-based) and values not in it
    follow, in order of appearance; returns (codes + 1, the grown vocabulary)."""
    known = {v: i for i, v in enumerate(vocab)}
    grown = list(vocab) + [u for u in uniques if u not in known]
    where = {v: i for i, v in enumerate(grown)}
    remap = np.array([where[u] for u in uniques] + [-1], dtype=np.int64)  # index -1 (missing) -> -1
    return (remap[codes] + 1).astype(np.int32), grown


def _multi(col: pd.Series, vocab: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    lists = [v if isinstance(v, (list, tuple, np.ndarray)) else ([] if v is None or (isinstance(v, float) and np.isnan(v)) else [v])
             for v in col.tolist()]
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    flat = pd.Series([str(t) for x in lists for t in x], dtype="string")
    codes, uniques = pd.factorize(flat)
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if vocab is not None:
        values, grown = _pinned(codes, [str(u) for u in uniques], vocab)
        return offsets, values, grown
    return offsets, (codes + 1).astype(np.int32), [str(u) for u in uniques]


def _numeric(col: pd.Series, pinned: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, float]]:
    v = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
    ok = ~np.isnan(v)
    mean = float(v[ok].mean()) if ok.any() else 0.0
    std = float(v[ok].std()) if ok.sum() > 1 else 1.0
    std = std or 1.0
    if pinned is not None:
        mean, std = float(pinned["mean"]), float(pinned["std"])
    out = np.where(ok, (v - mean) / std, 0.0)
    return out, {"mean": mean, "std": std, "missing": int((~ok).sum())}


def encode_graphs(graphs: dict[str, pd.DataFrame], users: pd.Index, items: pd.Index, q: Quarantine,
                  source: str, files: dict[str, str] | None = None, known_users: pd.Index | None = None,
                  known_items: pd.Index | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Map graph edges to dense ids. Edges naming an id outside the kept users/items are not kept: those naming an
    id that the data never mentions (`known_users` / `known_items`: ids of the raw interactions and side tables)
    are rejected as `graph_<name>_unknown_id`; those whose ids were only filtered out are unused
    (`graph_<name>_edge_to_removed_id`). Counted per graph, with its file (`files[name]`, else `source`)."""
    arrays: dict[str, np.ndarray] = {}
    schema: dict[str, Any] = {}
    for name, g in graphs.items():
        path = (files or {}).get(name, source)
        if name == "social":
            ends = [(g["src"], users, known_users), (g["dst"], users, known_users)]
            a, b = users.get_indexer(g["src"].astype(str)), users.get_indexer(g["dst"].astype(str))
            ok = (a >= 0) & (b >= 0)
            arrays["graph_social"] = np.stack([a[ok], b[ok]], axis=1).astype(np.int32)
            schema[name] = {"edges": int(ok.sum())}
        elif name == "kg":
            ends = [(g["item"], items, known_items)]
            it = items.get_indexer(g["item"].astype(str))
            ok = it >= 0
            rel_codes, rel_vocab = pd.factorize(g["relation"].astype(str)[ok])
            ent_codes, ent_vocab = pd.factorize(g["entity"].astype(str)[ok])
            arrays["graph_kg"] = np.stack([it[ok], rel_codes, ent_codes], axis=1).astype(np.int32)
            schema[name] = {"edges": int(ok.sum()), "relations": [str(r) for r in rel_vocab], "entities": len(ent_vocab)}
        elif name == "item_item":
            ends = [(g["src"], items, known_items), (g["dst"], items, known_items)]
            a, b = items.get_indexer(g["src"].astype(str)), items.get_indexer(g["dst"].astype(str))
            ok = (a >= 0) & (b >= 0)
            rel_codes, rel_vocab = pd.factorize(g["relation"].astype(str)[ok]) if "relation" in g else (np.zeros(int(ok.sum()), int), ["related"])
            arrays["graph_item_item"] = np.stack([a[ok], b[ok], rel_codes], axis=1).astype(np.int32)
            schema[name] = {"edges": int(ok.sum()), "relations": [str(r) for r in rel_vocab]}
        else:
            raise ValueError(f"unknown graph {name!r}")
        unknown = np.zeros(len(g), dtype=bool)
        for col, kept, known in ends:
            ids = col.astype(str)
            unknown |= ~(ids.isin(known) if known is not None else ids.isin(kept)).to_numpy()
        removed = ~ok & ~unknown
        if unknown.any():
            bad = g[unknown].head(q.sample_per_rule)
            q.reject_many(f"graph_{name}_unknown_id", int(unknown.sum()), path=path, records=bad.to_dict("records"),
                          reason="edge names a user/item that appears nowhere in the interactions or side tables")
        q.note_unused(f"graph_{name}_edge_to_removed_id", int(removed.sum()), path=path)
        schema[name].update(file=path, unknown_id_edges=int(unknown.sum()), edges_to_removed_ids=int(removed.sum()))
    return arrays, schema
