"""Amazon reviews (McAuley lab) as JSON lines, gzipped or not: 2014, 2018 and 2023 releases.

    read_amazon(path, *, meta=None) -> CanonicalTables

`path` is a reviews file, or a folder holding exactly one reviews file plus optionally one
`meta_*` file. `meta` names the metadata file explicitly. The release is recognised per file
from the keys of its first record:
- 2014/2018 reviews: reviewerID, asin, overall, summary, reviewText, unixReviewTime (seconds);
  metadata: asin, title, description (list), category (2018) / categories (2014, list of lists),
  brand, also_buy / also_view (2018) or related.{also_bought, also_viewed, bought_together} (2014).
  2014 metadata lines are Python literals, not JSON; they are parsed with `ast.literal_eval`.
- 2023 reviews: user_id, parent_asin, rating, title, text, timestamp (MILLISECONDS);
  metadata: parent_asin, title, description, categories, store (-> brand), bought_together.

Output: interactions user, item, rating, timestamp (s), review = "<summary>. <text>" (2018) or
"<title>. <text>" (2023). Items (only those reviewed: 2023 metadata lists millions) with fields
title, description (text), category (multi_categorical), brand (categorical); graphs["item_item"]
(src, dst, relation=key name) keeping edges whose two ends are reviewed items.

Row problems are quarantined, never fatal here (the pipeline applies the threshold):
`bad_json` / `invalid_utf8` (file + 1-based line), `missing_field` (names the key),
`non_numeric_rating`, `bad_timestamp`; and, keeping the row, `html_title` (an HTML fragment
scraped as a title is blanked), `duplicate_metadata` (second line for an ASIN; first wins).
Reported as *unused* (`Quarantine.unused`, not rejections): `item_metadata_without_reviews`,
`item_item_edge_outside_catalog`. Duplicate reviews are kept: the clean step handles them.
A truncated or corrupt gzip file, or an empty reviews file, is a DataError naming the file (and the line).
"""

from __future__ import annotations

import ast
import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from data_modules.errors import DataError, Quarantine
from data_modules.readers._common import iter_lines, require_file
from data_modules.tables import CanonicalTables, FieldKind

# (user, item, rating, timestamp, timestamp divisor, review title, review body)
REVIEW_KEYS = {
    "2018": ("reviewerID", "asin", "overall", "unixReviewTime", 1, "summary", "reviewText"),
    "2023": ("user_id", "parent_asin", "rating", "timestamp", 1000, "title", "text"),
}
HTML_TAG = re.compile(r"<\s*/?\s*[A-Za-z][A-Za-z0-9-]*(\s|/|>|$)")
ITEM_FIELDS = {
    "title": FieldKind.text,
    "description": FieldKind.text,
    "category": FieldKind.multi_categorical,
    "brand": FieldKind.categorical,
}
SUFFIXES = (".json", ".json.gz", ".jsonl", ".jsonl.gz")


def read_amazon(path: str | Path, *, meta: str | Path | None = None) -> CanonicalTables:
    """Read one category's reviews (and metadata, when given or found next to it)."""
    reviews_path, meta_path = _locate(Path(path).expanduser(), meta)
    q = Quarantine()
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    rows_read: dict[str, int] = {}
    fmt: str | None = None
    for line_no, rec in _records(reviews_path, q, rows_read):
        fmt = fmt or ("2023" if "user_id" in rec or "parent_asin" in rec else "2018")
        row = _review(rec, REVIEW_KEYS[fmt], q, reviews_path, line_no)
        if row is not None:
            rows.append(row)
            lines.append(line_no)
    if not rows and not q.total:
        raise DataError("file is empty (no review lines)", path=reviews_path)
    inter = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp", "review"])
    inter = inter.astype({"user": str, "item": str, "rating": "float64", "timestamp": "int64", "review": str})
    where = pd.DataFrame({"file": pd.Categorical.from_codes([0] * len(lines), [str(reviews_path)]),
                          "line": pd.Series(lines, dtype="int64")})
    out = CanonicalTables(
        interactions=inter, quarantine=q, name=reviews_path.name.split(".")[0], rows_read=rows_read, origin=where
    )
    if meta_path is not None:
        out.files["items"] = out.files["item_item"] = str(meta_path)
        catalog = set(inter["item"])
        out.items, out.graphs["item_item"] = _metadata(meta_path, catalog, q, rows_read)
        out.item_fields = dict(ITEM_FIELDS)
    return out


def _locate(path: Path, meta: str | Path | None) -> tuple[Path, Path | None]:
    meta_path = require_file(meta, "Amazon metadata file") if meta is not None else None
    if path.is_file():
        return path, meta_path
    if not path.is_dir():
        raise DataError("Amazon reviews file or folder not found", path=path)
    found = sorted(p for p in path.iterdir() if p.name.endswith(SUFFIXES))
    reviews = [p for p in found if not p.name.startswith("meta_")]
    metas = [p for p in found if p.name.startswith("meta_")]
    if len(reviews) != 1 or (meta_path is None and len(metas) > 1):
        raise DataError(
            f"expected one reviews file and at most one meta_* file, found {[p.name for p in found]}",
            path=path,
        )
    return reviews[0], meta_path or (metas[0] if metas else None)


def _records(path: Path, q: Quarantine, rows_read: dict[str, int]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, record) for every parseable line; quarantine the others; count the non-blank
    lines (a blank line is no row, as in the delimited readers: rows read = yielded + quarantined)."""
    rows_read[path.name] = 0
    for line_no, raw in iter_lines(path):
        if not raw.strip():
            continue
        rows_read[path.name] += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            q.reject(
                "invalid_utf8",
                path=path,
                row=line_no,
                reason=f"invalid UTF-8 at byte {e.start}",
                record=raw[:200],
            )
            continue
        rec = _parse(text)
        if rec is None:
            q.reject(
                "bad_json",
                path=path,
                row=line_no,
                reason="not a JSON object (truncated or invalid)",
                record=text[:200],
            )
            continue
        yield line_no, rec


def _parse(text: str) -> dict[str, Any] | None:
    try:
        rec = json.loads(text)
    except RecursionError:
        return None
    except json.JSONDecodeError:
        try:  # the 2014 metadata files are Python literals (single quotes)
            rec = ast.literal_eval(text.strip()) if text.lstrip().startswith("{") else None
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    return rec if isinstance(rec, dict) else None


def _review(
    rec: dict[str, Any], keys: tuple, q: Quarantine, path: Path, line_no: int
) -> dict[str, Any] | None:
    user_k, item_k, rating_k, ts_k, ts_div, head_k, body_k = keys
    for k in (user_k, item_k, rating_k):
        if rec.get(k) in (None, ""):
            q.reject("missing_field", path=path, row=line_no, reason=f"missing key {k!r}", record=rec)
            return None
    try:
        rating = float(rec[rating_k])
    except (TypeError, ValueError):
        q.reject(
            "non_numeric_rating", path=path, row=line_no, reason=f"{rating_k!r} is not a number", record=rec
        )
        return None
    try:
        ts = int(float(rec[ts_k])) // ts_div
    except (KeyError, TypeError, ValueError):
        q.reject(
            "bad_timestamp", path=path, row=line_no, reason=f"{ts_k!r} missing or not a number", record=rec
        )
        return None
    review = ". ".join(
        s for s in (str(rec.get(head_k) or "").strip(), str(rec.get(body_k) or "").strip()) if s
    )
    return {
        "user": str(rec[user_k]),
        "item": str(rec[item_k]),
        "rating": rating,
        "timestamp": ts,
        "review": review,
    }


def _metadata(
    path: Path, catalog: set[str], q: Quarantine, rows_read: dict[str, int]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Item rows and item-item edges (src, dst, relation) for reviewed items."""
    items: dict[str, dict[str, Any]] = {}
    edges: list[tuple[str, str, str]] = []
    outside = unreviewed = 0
    for line_no, rec in _records(path, q, rows_read):
        asin = str(rec.get("parent_asin") or rec.get("asin") or "")
        if not asin:
            q.reject("missing_field", path=path, row=line_no, reason="missing key 'asin'", record=rec)
            continue
        if asin not in catalog:
            unreviewed += 1
            continue
        if asin in items:
            q.reject(
                "duplicate_metadata",
                path=path,
                row=line_no,
                reason=f"second line for {asin}; first kept",
                record=asin,
            )
            continue
        title = html.unescape(str(rec.get("title") or "")).strip()
        if HTML_TAG.search(title):
            q.reject(
                "html_title",
                path=path,
                row=line_no,
                reason="title is an HTML fragment; blanked",
                record=title[:200],
            )
            title = ""
        items[asin] = {
            "item": asin,
            "title": title,
            "description": _text(rec.get("description")),
            "category": _categories(rec),
            "brand": _brand(rec),
        }
        for relation, targets in _related(rec):
            for dst in targets:
                if str(dst) in catalog:
                    edges.append((asin, str(dst), relation))
                else:
                    outside += 1
    # harmless: metadata covers the whole category, reviews a part of it
    q.note_unused("item_metadata_without_reviews", unreviewed, path=path)
    q.note_unused("item_item_edge_outside_catalog", outside, path=path)
    table = pd.DataFrame(list(items.values()), columns=["item", *ITEM_FIELDS])
    return table, pd.DataFrame(edges, columns=["src", "dst", "relation"], dtype=str)


def _text(value: Any) -> str:
    parts = value if isinstance(value, list) else [value]
    text = " ".join(html.unescape(str(p)).strip() for p in parts if p)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]*>", " ", text)).strip()


def _categories(rec: dict[str, Any]) -> list[str]:
    raw = rec.get("category") or rec.get("categories") or []
    flat = [c for group in raw for c in (group if isinstance(group, list) else [group])]
    return list(dict.fromkeys(html.unescape(str(c)).strip() for c in flat if c))  # unique, in order


def _brand(rec: dict[str, Any]) -> str | None:
    details = rec.get("details") if isinstance(rec.get("details"), dict) else {}
    brand = html.unescape(str(rec.get("brand") or rec.get("store") or details.get("Brand") or "")).strip()
    return brand or None


def _related(rec: dict[str, Any]) -> Iterator[tuple[str, list]]:
    related = rec.get("related") if isinstance(rec.get("related"), dict) else {}
    for key in ("also_buy", "also_view", "bought_together", "also_bought", "also_viewed"):
        targets = rec.get(key) or related.get(key)
        if isinstance(targets, list):
            yield key, targets
