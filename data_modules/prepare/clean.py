"""Clean interactions: exact duplicates, out-of-range ratings, empty reviews, conflicting duplicate ratings.

Every rule counts what it rejects in the Quarantine (and keeps a sample), so nothing disappears silently. The
optional `_file` / `_line` columns (see plausible.PROVENANCE) say where a row came from; they are not data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from data_modules.errors import Quarantine
from data_modules.prepare.config import CleanConfig
from data_modules.prepare.plausible import PROVENANCE, reject_rows


def clean_interactions(inter: pd.DataFrame, cfg: CleanConfig, q: Quarantine, source: str) -> pd.DataFrame:
    """Return the cleaned interactions (a new frame, index reset). `source` names the input in quarantine records."""
    inter = _drop_missing_ids(inter, q, source)
    if cfg.drop_exact_duplicates:
        dup = inter.duplicated([c for c in inter.columns if c not in PROVENANCE], keep="first")
        _reject(q, "exact_duplicate", inter[dup], source, "row identical to an earlier row")
        inter = inter[~dup]
    if "rating" in inter.columns:
        rating = pd.to_numeric(inter["rating"], errors="coerce")
        bad = rating.isna() & inter["rating"].notna()
        _reject(q, "non_numeric_rating", inter[bad], source, "rating is not a number")
        inter = inter[~bad].assign(rating=rating[~bad].astype("float32"))
        if cfg.rating_range is not None:
            lo, hi = cfg.rating_range
            out = inter["rating"].notna() & ((inter["rating"] < lo) | (inter["rating"] > hi))
            _reject(q, "rating_out_of_range", inter[out], source, f"rating outside [{lo}, {hi}]")
            inter = inter[~out]
    if "review" in inter.columns:
        # an empty review is not a bad interaction: keep the row, flag the text as missing
        empty = inter["review"].isna() | (inter["review"].astype("string").str.strip() == "")
        q.reject_many("empty_review_text", int(empty.sum()), path=source, reason="review text empty; kept the interaction without text")
        inter = inter.assign(review=inter["review"].where(~empty, None))
    inter = _resolve_duplicate_pairs(inter, cfg.duplicate_rule, q, source)
    return inter.reset_index(drop=True)


def _drop_missing_ids(inter: pd.DataFrame, q: Quarantine, source: str) -> pd.DataFrame:
    missing = inter["user"].isna() | inter["item"].isna()
    missing |= (inter["user"].astype("string").str.strip() == "") | (inter["item"].astype("string").str.strip() == "")
    _reject(q, "missing_id", inter[missing], source, "user or item id is empty")
    return inter[~missing]


def _resolve_duplicate_pairs(inter: pd.DataFrame, rule: str, q: Quarantine, source: str) -> pd.DataFrame:
    """Several rows for one (user, item): apply `rule`. The rows merged away are counted as `duplicate_pair`."""
    if rule == "keep":
        return inter
    dup = inter.duplicated(["user", "item"], keep=False)
    if not dup.any():
        return inter
    order = ["user", "item", "timestamp"] if "timestamp" in inter.columns else ["user", "item"]
    inter = inter.sort_values(order, kind="stable")
    keep = "last" if rule in ("last", "mean", "max") else "first"
    kept_mask = ~inter.duplicated(["user", "item"], keep=keep)
    removed = inter[~kept_mask]
    if rule in ("mean", "max") and "rating" in inter.columns:
        agg = inter.groupby(["user", "item"], sort=False)["rating"].agg(rule)
        kept = inter[kept_mask].copy()
        kept["rating"] = agg.loc[list(zip(kept["user"], kept["item"]))].to_numpy(dtype=np.float32)
    else:
        kept = inter[kept_mask]
    _reject(q, "duplicate_pair", removed, source, f"another row has the same (user, item); rule={rule!r}")
    return kept.sort_index(kind="stable")


def _reject(q: Quarantine, rule: str, rows: pd.DataFrame, source: str, reason: str) -> None:
    reject_rows(q, rule, rows, source, reason)  # samples carry file:line when the reader recorded them
