"""Filter interactions: rating threshold (explicit -> implicit) and iterative k-core on users and items."""

from __future__ import annotations

import pandas as pd

from data_modules.errors import DataError, Quarantine
from data_modules.prepare.config import FilterConfig


def filter_interactions(inter: pd.DataFrame, cfg: FilterConfig, q: Quarantine, source: str) -> pd.DataFrame:
    """Apply the threshold, then k-core until no user or item falls below its minimum. Raises if nothing is left."""
    n0 = len(inter)
    if cfg.rating_threshold is not None:
        if "rating" not in inter.columns:
            raise DataError(f"filter.rating_threshold={cfg.rating_threshold} but the data has no rating column", path=source)
        low = inter["rating"] < cfg.rating_threshold
        q.reject_many("below_rating_threshold", int(low.sum()), path=source, reason=f"rating < {cfg.rating_threshold} (implicit feedback)")
        inter = inter[~low]
    if cfg.min_user_interactions > 1 or cfg.min_item_interactions > 1:
        before = len(inter)
        for _ in range(1000):  # converges in a handful of rounds on real data
            uc = inter["user"].map(inter["user"].value_counts())
            ic = inter["item"].map(inter["item"].value_counts())
            keep = (uc >= cfg.min_user_interactions) & (ic >= cfg.min_item_interactions)
            if keep.all():
                break
            inter = inter[keep]
        q.reject_many("k_core", before - len(inter), path=source,
                      reason=f"user with < {cfg.min_user_interactions} or item with < {cfg.min_item_interactions} interactions")
    if len(inter) == 0:
        raise DataError(
            f"no interactions left after filtering ({n0} before; rating_threshold={cfg.rating_threshold}, "
            f"min_user_interactions={cfg.min_user_interactions}, min_item_interactions={cfg.min_item_interactions}): loosen the filter",
            path=source,
        )
    return inter.reset_index(drop=True)
