"""Ciao (Tang et al.) product ratings with category, helpfulness and time, plus the trust network.

    read_ciao(folder, *, ratings=None, trust="trust.tsv") -> CanonicalTables

These are the tab-separated conversions (header line) of the original `rating_with_timestamp.mat`
and `trust.mat`, so no scipy is needed:
- ratings: `userid productid categoryid rating helpfulness timestamp` -> interactions user, item,
  rating (float), timestamp (int64 s), plus `helpfulness` (float; ignored downstream unless used).
- items: one row per product with field `category` (categorical). A product is filed under
  several categories in about 100 cases; the first row's category is kept and each such product
  is counted as `item_category_conflict`.
- trust: `userid trusted_userid` -> graphs["social"] (directed: src trusts dst).

The reader reports exactly what is in the files: the invalid zero ratings and the exact duplicate
rows are removed later by the pipeline's clean step, where they are counted.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from data_modules.errors import Quarantine
from data_modules.readers._common import (
    SAMPLE,
    first_existing,
    numeric_column,
    origin,
    read_delimited,
    require_columns,
    require_file,
    seconds_column,
)
from data_modules.tables import CanonicalTables, FieldKind

RATING_COLUMNS = ["userid", "productid", "categoryid", "rating", "helpfulness", "timestamp"]


def read_ciao(
    folder: str | Path, *, ratings: str | None = None, trust: str | None = "trust.tsv"
) -> CanonicalTables:
    """Read `folder/ratings` (default `ratings.tsv.gz`, else `ratings.tsv`) and `folder/trust` when it exists."""
    folder = Path(folder).expanduser()
    q = Quarantine()
    found = first_existing(folder, [ratings] if ratings else ["ratings.tsv.gz", "ratings.tsv"])
    ratings_path = require_file(found or folder / (ratings or "ratings.tsv.gz"), "Ciao ratings file")
    raw = require_columns(read_delimited(ratings_path, "\t", q), RATING_COLUMNS, ratings_path)
    df = numeric_column(raw, "rating", "non_numeric_rating", q, ratings_path)
    df = numeric_column(df, "helpfulness", "non_numeric_helpfulness", q, ratings_path)
    df = seconds_column(df, "timestamp", q, ratings_path)
    inter = pd.DataFrame(
        {
            "user": df["userid"],
            "item": df["productid"],
            "rating": df["rating"],
            "timestamp": df["timestamp"],
            "helpfulness": df["helpfulness"],
        }
    ).reset_index(drop=True)
    out = CanonicalTables(
        interactions=inter, quarantine=q, name="ciao", rows_read={ratings_path.name: raw.attrs.get("rows_read", len(raw))},
        origin=origin(df, ratings_path, 2), files={"items": str(ratings_path)},
    )

    cats = raw[["productid", "categoryid"]].drop_duplicates()
    conflict = cats["productid"].duplicated(keep=False)
    if conflict.any():
        several = cats[conflict].groupby("productid", sort=False)["categoryid"].agg(list)
        q.reject_many(
            "item_category_conflict",
            len(several),
            path=ratings_path,
            reason="product has several categories; first kept",
            records=[{"item": k, "categories": v} for k, v in several.head(SAMPLE).items()],
        )
    items = cats.drop_duplicates("productid").rename(columns={"productid": "item", "categoryid": "category"})
    out.items, out.item_fields = items.reset_index(drop=True), {"category": FieldKind.categorical}

    trust_path = folder / trust if trust else None
    if trust_path is not None and trust_path.is_file():
        edges = read_delimited(trust_path, "\t", q)
        require_columns(edges, ["userid", "trusted_userid"], trust_path)
        out.graphs["social"] = pd.DataFrame({"src": edges["userid"], "dst": edges["trusted_userid"]})
        out.rows_read[trust_path.name] = edges.attrs.get("rows_read", len(edges))
        out.files["social"] = str(trust_path)
    return out
