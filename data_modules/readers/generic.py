"""Any CSV / TSV / Parquet / JSON-lines data, mapped to the canonical tables by a small schema.

    read_generic(schema, base_dir=None) -> CanonicalTables

`schema` is a dict as loaded from YAML; relative paths are resolved against `base_dir`:

    interactions:                      # optional when `splits` is given
      path: ratings.csv
      format: csv                      # csv | tsv | parquet | jsonl; default from the extension (.gz ok)
      columns: {user: userId, item: movieId, rating: rating, timestamp: ts, review: text}
      timestamp_unit: s                # s | ms
    users: {path: users.csv, key: userId, fields: {age: numeric, gender: categorical}, list_sep: "|"}
    items: {path: items.jsonl, key: id, fields: {title: text, genres: multi_categorical}}
    graphs:
      social: {path: trust.csv, src: a, dst: b}
      kg: {path: kg.tsv, item: item, relation: rel, entity: tail}
      item_item: {path: also.csv, src: a, dst: b, relation: kind}   # no relation column -> "related"
    splits: {train: train.csv, valid: valid.csv, test: test.csv}    # pre-split input -> column `split`

`columns` defaults to the canonical names themselves (user, item, rating, timestamp, review, event)
where present: the layout written by RecBole's dumper (`user,item,rating,timestamp`) needs no mapping.
Multi-categorical fields are lists already (Parquet, JSON) or strings split on `list_sep`.
Compression (gzip, bz2, xz) is recognised by content, not by name. CSV / TSV follow CSV quoting (`"a, b"`).
A missing, empty, header-only or unreadable file (a truncated gzip, a corrupt Parquet, a JSON array instead of
lines) or a missing mapped column is a `DataError` naming it. A row that cannot be read is removed and counted
with its line and raw text: `malformed_row` (wrong number of fields), `broken_quoting`, `invalid_utf8`,
`bad_json`; so are rows with a non-numeric rating (`non_numeric_rating`), a bad timestamp (`bad_timestamp`) or no
user/item (`missing_id`) (CSV: the header is line 1; JSONL: line; Parquet: 1-based row). A numeric attribute that
is not a number is counted as `non_numeric_field` and left missing; its row is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_modules.errors import DataError, Quarantine
from data_modules.readers._common import (
    SAMPLE,
    id_strings,
    numeric_column,
    numeric_field,
    origin,
    read_delimited,
    read_jsonl,
    read_parquet_file,
    require_file,
    seconds_column,
    split_tokens,
)
from data_modules.tables import GRAPH_COLUMNS, CanonicalTables, FieldKind

INTERACTION_COLUMNS = ("user", "item", "rating", "timestamp", "review", "event")
FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".txt": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
}


Loader = Callable[[Path, Mapping[str, Any], Quarantine], pd.DataFrame]
"""(path, the section's spec, quarantine) -> the raw table of one schema section (interactions, users, ...)."""


def read_generic(schema: Mapping[str, Any], base_dir: str | Path | None = None, *,
                 loader: Loader | None = None) -> CanonicalTables:
    """Read the files named by `schema` (see the module docstring). `loader` replaces reading files (default:
    `load_table` on `base_dir / spec["path"]`): the Hugging Face `datasets` reader passes one that returns a
    dataset split as a frame, so both map columns, fields and graphs by the same code."""
    load = loader or _read_file
    base = Path(base_dir).expanduser() if base_dir is not None else Path(".")
    base = base.parent if base.is_file() else base
    q = Quarantine()
    spec = dict(schema.get("interactions") or {})
    splits = dict(schema.get("splits") or {})
    rows_read: dict[str, int] = {}
    if splits:
        unknown = set(splits) - {"train", "valid", "test"}
        if unknown:
            raise DataError(f"splits: unknown split(s) {sorted(unknown)}, expected train / valid / test")
        parts = [_interactions({**spec, "path": rel}, base, q, rows_read, load) for rel in splits.values()]
        inter = pd.concat([df.assign(split=split) for (df, _), split in zip(parts, splits)], ignore_index=True)
        where = pd.concat([o for _, o in parts], ignore_index=True)
        where["file"] = where["file"].astype("category")
    elif spec.get("path"):
        inter, where = _interactions(spec, base, q, rows_read, load)
    else:
        raise DataError("schema needs interactions.path or splits {train, valid, test}")
    out = CanonicalTables(
        interactions=inter, quarantine=q, rows_read=rows_read, name=str(schema.get("name", base.name)), origin=where
    )
    for key in ("user", "item"):
        if schema.get(f"{key}s"):
            table, fields = _entities(schema[f"{key}s"], key, base, q, load)
            setattr(out, f"{key}s", table)
            setattr(out, f"{key}_fields", fields)
            out.files[f"{key}s"] = str(base / schema[f"{key}s"]["path"])
    for gname, gspec in (schema.get("graphs") or {}).items():
        if gname not in GRAPH_COLUMNS:
            raise DataError(f"graphs: unknown graph {gname!r}, expected one of {sorted(GRAPH_COLUMNS)}")
        out.graphs[gname] = _graph(gname, gspec, base, q, load)
        out.files[gname] = str(base / gspec["path"])
    return out


def load_table(path: Path, fmt: str | None, sep: str | None, q: Quarantine) -> pd.DataFrame:
    """Read one file; delimited text is read as strings so that ids keep their exact spelling. Compression is
    recognised by content (`x.csv.gz` holding plain text reads); rows that cannot be read go to `q` with their
    line (see `_common.read_delimited`); an empty or unreadable file is a DataError naming it."""
    path = require_file(path)
    fmt = fmt or format_of(path)
    if fmt in ("csv", "tsv"):
        return read_delimited(path, sep or ("," if fmt == "csv" else "\t"), q, quoting=True)
    if fmt == "parquet":
        return read_parquet_file(path)
    if fmt == "jsonl":
        return read_jsonl(path, q)
    raise DataError(
        f"unknown format {fmt!r}: expected one of csv, tsv, parquet, jsonl (or a known extension)", path=path
    )


def _read_file(path: Path, spec: Mapping[str, Any], q: Quarantine) -> pd.DataFrame:
    return load_table(path, spec.get("format"), spec.get("sep"), q)


def format_of(path: Path) -> str | None:
    """The format named by the extension (a trailing `.gz` etc. ignored), or None."""
    name = path.name
    for ext in (".gz", ".bz2", ".xz"):
        name = name.removesuffix(ext)
    return FORMATS.get(Path(name).suffix.lower())


def _columns(df: pd.DataFrame, mapping: Mapping[str, str], path: Path) -> pd.DataFrame:
    """Select and rename `mapping` {canonical: source column}; a missing column is an error naming both."""
    stripped = {str(c).strip(): c for c in df.columns}  # tolerate " reviewerID"-style headers
    cols = {}
    for canon, col in mapping.items():
        src = col if col in df.columns else stripped.get(str(col).strip())
        if src is None:
            raise DataError(
                f"mapped column {col!r} (for {canon}) not found; columns present: {list(df.columns)}",
                path=path,
                field=str(col),
            )
        cols[canon] = df[src]
    return pd.DataFrame(cols, index=df.index)


def _interactions(
    spec: dict[str, Any], base: Path, q: Quarantine, rows_read: dict[str, int], load: Loader
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the interactions of one file, their origin: file and line per row)."""
    path = base / spec["path"]
    fmt = spec.get("format")
    raw = load(path, spec, q)
    rows_read[path.name] = raw.attrs.get("rows_read", len(raw))
    first = 2 if (fmt or format_of(path)) in ("csv", "tsv") else 1
    mapping = spec.get("columns") or {c: c for c in INTERACTION_COLUMNS if c in raw.columns}
    unknown = set(mapping) - set(INTERACTION_COLUMNS)
    if unknown:
        raise DataError(
            f"interactions.columns: unknown canonical names {sorted(unknown)}, expected {INTERACTION_COLUMNS}"
        )
    df = _columns(raw, {"user": "user", "item": "item", **mapping}, path)
    missing = (df["user"].isna() | df["item"].isna()).to_numpy()
    if missing.any():
        bad = df[missing].head(SAMPLE)
        q.reject_many(
            "missing_id",
            int(missing.sum()),
            path=path,
            reason="empty user or item",
            rows=[int(i) + first for i in bad.index],
            records=bad.to_dict("records"),
        )
        df = df[~missing]
    df = df.assign(user=id_strings(df["user"]), item=id_strings(df["item"]))
    if "rating" in df.columns:
        df = numeric_column(df, "rating", "non_numeric_rating", q, path, first_line=first)
    if "timestamp" in df.columns:
        df = seconds_column(df, "timestamp", q, path, unit=spec.get("timestamp_unit", "s"), first_line=first)
    for col in ("review", "event"):
        if col in df.columns:
            df[col] = df[col].fillna("").astype(str)
    return df.reset_index(drop=True), origin(df, path, first)


def _entities(
    spec: Mapping[str, Any], key: str, base: Path, q: Quarantine, load: Loader
) -> tuple[pd.DataFrame, dict[str, FieldKind]]:
    path = base / spec["path"]
    raw = load(path, spec, q)
    fields: dict[str, FieldKind] = {}
    for col, kind in (spec.get("fields") or {}).items():
        try:
            fields[col] = FieldKind(kind)
        except ValueError:
            raise DataError(
                f"{key}s.fields: kind {kind!r} for {col!r}, expected one of {[k.value for k in FieldKind]}",
                path=path,
                field=col,
            ) from None
    df = _columns(raw, {key: spec.get("key", key), **{c: c for c in fields}}, path)
    first = 2 if (spec.get("format") or format_of(path)) in ("csv", "tsv") else 1
    df[key] = id_strings(df[key])
    for col, kind in fields.items():
        if kind == FieldKind.multi_categorical:
            s = df[col]
            is_list = s.map(lambda v: isinstance(v, (list, tuple, np.ndarray)))
            if (is_list | s.isna()).all() and is_list.any():  # Parquet / JSON lists (a missing one is empty)
                df[col] = s.map(lambda v: [str(t) for t in v] if isinstance(v, (list, tuple, np.ndarray)) else [])
                df[col] = df[col].astype(object)
            else:
                df[col] = split_tokens(s.astype("string"), spec.get("list_sep", "|"))
        elif kind == FieldKind.numeric:
            df[col] = numeric_field(df, col, q, path, first_line=first)
        elif kind == FieldKind.text:
            df[col] = df[col].fillna("").astype(str)
        else:
            df[col] = df[col].astype("string")
    return df, fields


def _graph(name: str, spec: Mapping[str, Any], base: Path, q: Quarantine, load: Loader) -> pd.DataFrame:
    path = base / spec["path"]
    raw = load(path, spec, q)
    wanted = [
        c for c in GRAPH_COLUMNS[name] if not (name == "item_item" and c == "relation" and c not in spec)
    ]
    df = _columns(raw, {c: spec.get(c, c) for c in wanted}, path).apply(id_strings)
    if name == "item_item" and "relation" not in df.columns:
        df["relation"] = "related"
    return df.reset_index(drop=True)
