"""RecBole atomic files: `<name>.inter .user .item .kg .link .net` with typed headers.

    read_recbole(folder, name=None, *, text_fields=TEXT_FIELDS) -> CanonicalTables

Each file is tab-separated; its header names every column as `name:type` with type one of
`token`, `token_seq` (space-separated tokens), `float`, `float_seq`. This covers MovieLens-100K as
shipped in the `recbole` wheel and the many public datasets converted to this format.

Mapping to the canonical tables:
- `.inter`: `user_id` -> user, `item_id` -> item, `rating` (float), `timestamp` (int64 seconds),
  `review` (text); other columns are kept under their base name (downstream ignores them).
- `.user` / `.item`: key -> user / item; `token` -> categorical, `token_seq` -> multi_categorical
  (list of str) unless the column is text-like (`text_fields`: a title is a sentence, not a bag
  of tokens) -> text; `float` -> numeric. `float_seq` columns are skipped (no canonical kind).
- `.kg` (head_id, relation_id, tail_id) through `.link` (item_id, entity_id) -> graphs["kg"],
  see `_common.link_kg`; `.net` (first two columns, user -> user) -> graphs["social"].
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from data_modules.errors import DataError, Quarantine
from data_modules.readers._common import (
    id_strings,
    link_kg,
    numeric_column,
    numeric_field,
    origin,
    read_delimited,
    seconds_column,
    split_tokens,
)
from data_modules.tables import CanonicalTables, FieldKind

log = logging.getLogger(__name__)

TEXT_FIELDS = frozenset({"movie_title", "title", "description", "text", "review"})
INTER_NAMES = {
    "user_id": "user",
    "item_id": "item",
    "rating": "rating",
    "timestamp": "timestamp",
    "review": "review",
}
TYPES = ("token", "token_seq", "float", "float_seq")


def read_atomic(path: Path, q: Quarantine) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read one atomic file as strings; return the frame (columns renamed to base names) and {name: type}.
    Unreadable rows go to `q` (see `read_delimited`)."""
    df = read_delimited(path, "\t", q)
    types: dict[str, str] = {}
    for col in df.columns:
        base, _, typ = str(col).partition(":")
        if typ not in TYPES:
            raise DataError(
                f"header column {col!r} is not 'name:type' with type in {TYPES}", path=path, row=1
            )
        types[base] = typ
    df.columns = list(types)
    return df, types


def read_recbole(
    folder: str | Path, name: str | None = None, *, text_fields: Iterable[str] = TEXT_FIELDS, interactions: bool = True
) -> CanonicalTables:
    """Read `<folder>/<name>.*` (name defaults to the folder's name, or its only `.inter` file's stem).
    `interactions=False` reads only the side files (the out-of-core engine streams the `.inter` file itself) and
    returns an empty interactions table."""
    folder = Path(folder).expanduser()
    name = name or _guess_name(folder)
    inter_path = folder / f"{name}.inter"
    if not inter_path.is_file():
        raise DataError(f"RecBole interactions file missing (looked for {name}.inter)", path=inter_path)
    q = Quarantine()
    text_fields = frozenset(text_fields)
    if interactions:
        inter, where = _interactions(inter_path, q)
    else:
        inter, where = pd.DataFrame({"user": pd.Series(dtype=str), "item": pd.Series(dtype=str)}), None
    out = CanonicalTables(interactions=inter, quarantine=q, name=name, origin=where)
    if interactions:
        out.rows_read[inter_path.name] = len(out.interactions) + q.total

    for suffix, key in (("user", "user"), ("item", "item")):
        path = folder / f"{name}.{suffix}"
        if path.is_file():
            table, fields = _entities(path, key, text_fields, q)
            out.rows_read[path.name] = len(table)
            setattr(out, f"{suffix}s", table)
            setattr(out, f"{suffix}_fields", fields)
            out.files[f"{suffix}s"] = str(path)

    kg_path, link_path = folder / f"{name}.kg", folder / f"{name}.link"
    if kg_path.is_file() and link_path.is_file():
        kg, _ = read_atomic(kg_path, q)
        links, _ = read_atomic(link_path, q)
        triples = kg.rename(columns={"head_id": "head", "relation_id": "relation", "tail_id": "tail"})
        out.graphs["kg"] = link_kg(
            triples, links.rename(columns={"item_id": "item", "entity_id": "entity"}), q, kg_path
        )
        out.rows_read[kg_path.name], out.rows_read[link_path.name] = len(kg), len(links)
        out.files["kg"] = str(kg_path)
    elif kg_path.is_file():
        log.warning("%s has no %s.link: the KG cannot be joined to items and is skipped", kg_path, name)

    net_path = folder / f"{name}.net"
    if net_path.is_file():
        net, _ = read_atomic(net_path, q)
        out.graphs["social"] = pd.DataFrame({"src": id_strings(net.iloc[:, 0]), "dst": id_strings(net.iloc[:, 1])})
        out.rows_read[net_path.name] = len(net)
        out.files["social"] = str(net_path)
    return out


def _guess_name(folder: Path) -> str:
    if (folder / f"{folder.name}.inter").is_file():
        return folder.name
    inters = sorted(folder.glob("*.inter"))
    if len(inters) == 1:
        return inters[0].stem
    raise DataError(
        f"expected one <name>.inter file, found {[p.name for p in inters]}; pass name=", path=folder
    )


def _interactions(path: Path, q: Quarantine) -> tuple[pd.DataFrame, pd.DataFrame]:
    df, _ = read_atomic(path, q)
    for col in ("user_id", "item_id"):
        if col not in df.columns:
            raise DataError(f"missing column {col!r} (have {list(df.columns)})", path=path, row=1)
    df = df.rename(columns=INTER_NAMES)
    if "rating" in df.columns:
        df = numeric_column(df, "rating", "non_numeric_rating", q, path)
    if "timestamp" in df.columns:
        df = seconds_column(df, "timestamp", q, path)
    return df.reset_index(drop=True), origin(df, path, 2)


def _entities(
    path: Path, key: str, text_fields: frozenset[str], q: Quarantine
) -> tuple[pd.DataFrame, dict[str, FieldKind]]:
    df, types = read_atomic(path, q)
    if f"{key}_id" not in df.columns:
        raise DataError(f"missing key column '{key}_id:token' (have {list(df.columns)})", path=path, row=1)
    cols: dict[str, pd.Series] = {key: df[f"{key}_id"]}
    fields: dict[str, FieldKind] = {}
    for col, typ in types.items():
        if col == f"{key}_id":
            continue
        if col in text_fields:
            cols[col], fields[col] = df[col].fillna(""), FieldKind.text
        elif typ == "token":
            cols[col], fields[col] = df[col], FieldKind.categorical
        elif typ == "token_seq":
            cols[col], fields[col] = split_tokens(df[col]), FieldKind.multi_categorical
        elif typ == "float":
            cols[col], fields[col] = numeric_field(df, col, q, path), FieldKind.numeric
        else:
            log.warning("%s: column %r of type %s has no canonical field kind; skipped", path, col, typ)
    return pd.DataFrame(cols), fields
