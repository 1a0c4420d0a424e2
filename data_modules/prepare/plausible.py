"""Plausibility rules: values that parse but cannot be right. Each is counted, each can be turned off in `clean`.

- ids: surrounding whitespace trimmed (`id_whitespace_trimmed`, rows kept); side and graph rows whose id is empty
  are rejected (`users_missing_id`, `items_missing_id`, `graph_<name>_missing_id`); interactions' empty ids are
  the clean step's `missing_id`.
- timestamps: a column in milliseconds (or micro-, nanoseconds) where the format says seconds is recognised by
  magnitude and converted, and the assumption logged and returned for the manifest; negative
  (`negative_timestamp`) and future (`future_timestamp`) ones are rejected.
- graphs: self-loops (`graph_<name>_self_loop`) and repeated edges (`graph_<name>_duplicate_edge`) removed.

Samples name the file (and line, where the reader recorded it in the `_file` / `_line` provenance columns).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from data_modules.errors import Quarantine
from data_modules.prepare.config import CleanConfig
from data_modules.tables import CanonicalTables

log = logging.getLogger("fusionrec.prepare")

PROVENANCE = ("_file", "_line")  # columns the pipeline adds from CanonicalTables.origin for the clean step only
# (median above, unit, divisor to seconds): 1e11 s is the year 5138, 1e11 ms is 1973
UNITS = ((1e17, "ns", 10**9), (1e14, "us", 10**6), (1e11, "ms", 10**3))
GRAPH_IDS = {"social": ("src", "dst"), "item_item": ("src", "dst"), "kg": ("item", "entity")}
EDGE_KEYS = {"social": ["src", "dst"], "item_item": ["src", "dst", "relation"], "kg": ["item", "relation", "entity"]}


def reject_rows(q: Quarantine, rule: str, rows: pd.DataFrame, source: str, reason: str) -> None:
    """Count every row of `rows` under `rule`; sample the first ones with their file and line when the provenance
    columns are there (else `source` and the 1-based row of the table), and the record without them."""
    if not len(rows):
        return
    sample = rows.head(q.sample_per_rule)
    data = [c for c in rows.columns if c not in PROVENANCE]
    files = sample["_file"].astype(str).tolist() if "_file" in rows.columns else [source] * len(sample)
    lines = sample["_line"].tolist() if "_line" in rows.columns else [int(i) + 1 for i in sample.index]
    for rec, path, line in zip(sample[data].to_dict("records"), files, lines):
        q.reject(rule, path=path, row=int(line), reason=reason, record=rec)
    q.reject_many(rule, len(rows) - len(sample), path=source, reason=reason)


def trim_ids(tables: CanonicalTables, q: Quarantine, source: str) -> None:
    """In place: strip whitespace around every id of every table; reject side / graph rows left without an id."""
    tables.interactions = _trim(tables.interactions, ["user", "item"], q, source, None, "interactions")
    for key in ("user", "item"):
        table = getattr(tables, f"{key}s")
        if table is not None:
            path = tables.files.get(f"{key}s", source)
            setattr(tables, f"{key}s", _trim(table, [key], q, path, f"{key}s_missing_id", f"{key}s"))
    for name, g in list(tables.graphs.items()):
        cols = [c for c in GRAPH_IDS.get(name, ()) if c in g.columns]
        tables.graphs[name] = _trim(g, cols, q, tables.files.get(name, source), f"graph_{name}_missing_id", name)


def _trim(df: pd.DataFrame, cols: list[str], q: Quarantine, path: str, empty_rule: str | None,
          what: str) -> pd.DataFrame:
    changed = np.zeros(len(df), dtype=bool)
    empty = np.zeros(len(df), dtype=bool)
    out = {}
    for c in cols:
        s = df[c].astype("string")
        stripped = s.str.strip()
        diff = (s != stripped).fillna(False).to_numpy(dtype=bool)
        changed |= diff
        empty |= (stripped.isna() | (stripped == "")).to_numpy(dtype=bool)
        if diff.any():
            out[c] = df[c].where(~diff, stripped.astype(object))
    changed &= ~empty  # an id of only whitespace is an empty id, counted once (below, or as the clean step's)
    if changed.any():
        rows = df[changed]
        q.reject_many("id_whitespace_trimmed", int(changed.sum()), path=path,
                      reason=f"{what}: whitespace around an id removed; row kept",
                      records=rows[cols].head(q.sample_per_rule).to_dict("records"))
        df = df.assign(**out)
    if empty_rule is not None and empty.any():
        reject_rows(q, empty_rule, df[empty], path, f"{what}: empty id")
        df = df[~empty]
    return df


def check_timestamps(inter: pd.DataFrame, cfg: CleanConfig, q: Quarantine,
                     source: str) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """(interactions with implausible timestamps removed, the unit assumed when it was not seconds, or None)."""
    if "timestamp" not in inter.columns or not len(inter):
        return inter, None
    t = pd.to_numeric(inter["timestamp"], errors="coerce").to_numpy()
    note = None
    if cfg.detect_timestamp_unit:
        median = float(np.nanmedian(np.abs(t))) if np.isfinite(t).any() else 0.0
        for limit, unit, div in UNITS:
            if median > limit:
                files = sorted(inter["_file"].astype(str).unique()) if "_file" in inter.columns else [source]
                note = {"assumed": unit, "declared": "s", "median": median, "divided_by": div, "files": files}
                log.warning("timestamps of %s: median %.4g is not seconds (that would be the year %d): read as %s, "
                            "divided by %d (clean.detect_timestamp_unit: false keeps them)", ", ".join(files), median,
                            1970 + int(median / 31_556_952), unit, div)
                t = np.floor_divide(t, div)
                inter = inter.assign(timestamp=t.astype(inter["timestamp"].dtype, copy=False))
                break
    if cfg.reject_negative_timestamps:
        neg = t < 0
        reject_rows(q, "negative_timestamp", inter[neg], source, "timestamp before 1970 (negative)")
        inter, t = inter[~neg], t[~neg]
    if cfg.future_timestamp_slack_s is not None:
        limit = time.time() + cfg.future_timestamp_slack_s
        future = t > limit
        reject_rows(q, "future_timestamp", inter[future], source,
                    f"timestamp after the time of preparation ({time.strftime('%Y-%m-%d', time.gmtime(limit))})")
        inter = inter[~future]
    return inter, note


def clean_graphs(tables: CanonicalTables, cfg: CleanConfig, q: Quarantine, source: str) -> None:
    """In place: drop self-loops (social, item_item) and repeated edges from every graph, counted per graph."""
    for name, g in list(tables.graphs.items()):
        path = tables.files.get(name, source)
        if cfg.drop_graph_self_loops and name in ("social", "item_item"):
            loop = (g["src"].astype(str) == g["dst"].astype(str)).to_numpy()
            reject_rows(q, f"graph_{name}_self_loop", g[loop], path, "edge from a node to itself")
            g = g[~loop]
        if cfg.drop_duplicate_edges:
            keys = [c for c in EDGE_KEYS.get(name, list(g.columns)) if c in g.columns]
            dup = g.duplicated(keys).to_numpy()
            reject_rows(q, f"graph_{name}_duplicate_edge", g[dup], path, "the same edge listed again; first kept")
            g = g[~dup]
        tables.graphs[name] = g.reset_index(drop=True)
