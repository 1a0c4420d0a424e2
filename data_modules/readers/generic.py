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
A missing file or mapped column is a `DataError` naming it; rows with a non-numeric rating
(`non_numeric_rating`), a bad timestamp (`bad_timestamp`) or no user/item (`missing_id`) are removed and
counted, with their line numbers (CSV: the header is line 1; JSONL: line; Parquet: 1-based row).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_modules.errors import DataError, Quarantine
from data_modules.readers._common import SAMPLE, numeric_column, require_file, seconds_column, split_tokens
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


def read_generic(schema: Mapping[str, Any], base_dir: str | Path | None = None) -> CanonicalTables:
    """Read the files named by `schema` (see the module docstring)."""
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
        parts = [
            _interactions({**spec, "path": rel}, base, q, rows_read).assign(split=split)
            for split, rel in splits.items()
        ]
        inter = pd.concat(parts, ignore_index=True)
    elif spec.get("path"):
        inter = _interactions(spec, base, q, rows_read)
    else:
        raise DataError("schema needs interactions.path or splits {train, valid, test}")
    out = CanonicalTables(
        interactions=inter, quarantine=q, rows_read=rows_read, name=str(schema.get("name", base.name))
    )
    for key in ("user", "item"):
        if schema.get(f"{key}s"):
            table, fields = _entities(schema[f"{key}s"], key, base)
            setattr(out, f"{key}s", table)
            setattr(out, f"{key}_fields", fields)
    for gname, gspec in (schema.get("graphs") or {}).items():
        if gname not in GRAPH_COLUMNS:
            raise DataError(f"graphs: unknown graph {gname!r}, expected one of {sorted(GRAPH_COLUMNS)}")
        out.graphs[gname] = _graph(gname, gspec, base)
    return out


def load_table(path: Path, fmt: str | None = None, sep: str | None = None) -> pd.DataFrame:
    """Read one file; delimited text is read as strings so that ids keep their exact spelling."""
    path = require_file(path)
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    fmt = fmt or FORMATS.get(Path(name).suffix.lower())
    try:
        if fmt in ("csv", "tsv"):
            return pd.read_csv(
                path,
                sep=sep or ("," if fmt == "csv" else "\t"),
                dtype=str,
                keep_default_na=False,
                na_values=[""],
            )
        if fmt == "parquet":
            return pd.read_parquet(path)
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, dtype=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read as {fmt}: {e}", path=path) from e
    raise DataError(
        f"unknown format {fmt!r}: expected one of csv, tsv, parquet, jsonl (or a known extension)", path=path
    )


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


def _interactions(spec: dict[str, Any], base: Path, q: Quarantine, rows_read: dict[str, int]) -> pd.DataFrame:
    path = base / spec["path"]
    fmt = spec.get("format")
    raw = load_table(path, fmt, spec.get("sep"))
    rows_read[path.name] = len(raw)
    first = (
        2 if (fmt or FORMATS.get(Path(path.name.removesuffix(".gz")).suffix.lower())) in ("csv", "tsv") else 1
    )
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
    df = df.astype({"user": str, "item": str})
    if "rating" in df.columns:
        df = numeric_column(df, "rating", "non_numeric_rating", q, path, first_line=first)
    if "timestamp" in df.columns:
        df = seconds_column(df, "timestamp", q, path, unit=spec.get("timestamp_unit", "s"), first_line=first)
    for col in ("review", "event"):
        if col in df.columns:
            df[col] = df[col].fillna("").astype(str)
    return df.reset_index(drop=True)


def _entities(spec: Mapping[str, Any], key: str, base: Path) -> tuple[pd.DataFrame, dict[str, FieldKind]]:
    path = base / spec["path"]
    raw = load_table(path, spec.get("format"), spec.get("sep"))
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
    df[key] = df[key].astype(str)
    for col, kind in fields.items():
        if kind == FieldKind.multi_categorical:
            s = df[col]
            if s.map(lambda v: isinstance(v, (list, tuple, np.ndarray))).all():
                df[col] = s.map(lambda v: [str(t) for t in v]).astype(object)
            else:
                df[col] = split_tokens(s.astype("string"), spec.get("list_sep", "|"))
        elif kind == FieldKind.numeric:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        elif kind == FieldKind.text:
            df[col] = df[col].fillna("").astype(str)
        else:
            df[col] = df[col].astype("string")
    return df, fields


def _graph(name: str, spec: Mapping[str, Any], base: Path) -> pd.DataFrame:
    path = base / spec["path"]
    raw = load_table(path, spec.get("format"), spec.get("sep"))
    wanted = [
        c for c in GRAPH_COLUMNS[name] if not (name == "item_item" and c == "relation" and c not in spec)
    ]
    df = _columns(raw, {c: spec.get(c, c) for c in wanted}, path).astype(str)
    if name == "item_item" and "relation" not in df.columns:
        df["relation"] = "related"
    return df.reset_index(drop=True)
