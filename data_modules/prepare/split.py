"""Split protocols. Each returns an int8 array aligned with the interactions: 0 = train, 1 = valid, 2 = test.

`recbole` reproduces RecBole 1.2.1's default protocol exactly (RS 0.8/0.1/0.1, RO, grouped by user): the whole
interaction table, in file order, is permuted by `torch.randperm` right after `torch.manual_seed(seed)`; each
user's rows, in that permuted order, are cut with RecBole's rounding rule (`_calcu_split_ids`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from data_modules.errors import DataError
from data_modules.prepare.config import SplitConfig

TRAIN, VALID, TEST = 0, 1, 2


def split_interactions(inter: pd.DataFrame, cfg: SplitConfig) -> np.ndarray:
    """Dispatch on `cfg.protocol`; `inter` has dense int `user`, `item` and optional `timestamp`, `split`."""
    if cfg.protocol == "presplit":
        return presplit(inter)
    if cfg.protocol == "recbole":
        perm = torch.randperm(len(inter), generator=torch.Generator().manual_seed(cfg.seed)).numpy()
        return _per_user_ratio(inter["user"].to_numpy(), perm, cfg.ratios)
    if cfg.protocol == "ratio":
        if cfg.order == "time":
            perm = _time_order(inter)
        else:
            perm = np.random.default_rng(cfg.seed).permutation(len(inter))
        return _per_user_ratio(inter["user"].to_numpy(), perm, cfg.ratios)
    if cfg.protocol == "leave_one_out":
        return leave_one_out(inter)
    if cfg.protocol == "temporal":
        return temporal(inter, cfg.ratios)
    if cfg.protocol == "cold_item":
        return cold_item(inter, cfg.ratios, cfg.seed)
    if cfg.protocol == "cold_user":
        return cold_user(inter, cfg.ratios, cfg.seed)
    raise ValueError(f"unknown split protocol {cfg.protocol!r}")


def recbole_split_counts(total: int, ratios: tuple[float, ...]) -> list[int]:
    """RecBole's `Dataset._calcu_split_ids` rounding, as counts per part."""
    cnt = [int(ratios[i] * total) for i in range(len(ratios))]
    cnt[0] = total - sum(cnt[1:])
    for i in range(1, len(ratios)):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * total < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return cnt


def _per_user_ratio(users: np.ndarray, order: np.ndarray, ratios: tuple[float, ...]) -> np.ndarray:
    """Cut each user's rows, taken in `order`, into train/valid/test by `recbole_split_counts`."""
    u = users[order]
    # rank of each row within its user, in `order`
    ranked = pd.DataFrame({"u": u}).groupby("u", sort=False).cumcount().to_numpy()
    counts = np.bincount(u, minlength=users.max() + 1)[u]
    n_train = np.empty_like(counts)
    n_valid = np.empty_like(counts)
    for total in np.unique(counts):
        c = recbole_split_counts(int(total), ratios)
        sel = counts == total
        n_train[sel], n_valid[sel] = c[0], c[1]
    part = np.where(ranked < n_train, TRAIN, np.where(ranked < n_train + n_valid, VALID, TEST)).astype(np.int8)
    out = np.empty(len(users), dtype=np.int8)
    out[order] = part
    return out


def _time_order(inter: pd.DataFrame) -> np.ndarray:
    if "timestamp" not in inter.columns:
        raise DataError("this split needs a `timestamp` column, and the data has none", field="timestamp")
    return np.argsort(inter["timestamp"].to_numpy(), kind="stable")


def leave_one_out(inter: pd.DataFrame) -> np.ndarray:
    """Per user in time order: the last interaction is test, the second-to-last valid (users with >= 3), the rest train."""
    order = _time_order(inter)
    u = inter["user"].to_numpy()[order]
    from_end = pd.DataFrame({"u": u}).groupby("u", sort=False).cumcount(ascending=False).to_numpy()
    counts = np.bincount(u)[u]
    part = np.full(len(u), TRAIN, dtype=np.int8)
    part[(from_end == 0) & (counts >= 2)] = TEST
    part[(from_end == 1) & (counts >= 3)] = VALID
    out = np.empty(len(u), dtype=np.int8)
    out[order] = part
    return out


def temporal(inter: pd.DataFrame, ratios: tuple[float, ...]) -> np.ndarray:
    """A global time cut: the earliest `ratios[0]` share of interactions trains, then valid, then test."""
    order = _time_order(inter)
    n = len(order)
    a, b = int(round(ratios[0] * n)), int(round((ratios[0] + ratios[1]) * n))
    out = np.empty(n, dtype=np.int8)
    out[order[:a]], out[order[a:b]], out[order[b:]] = TRAIN, VALID, TEST
    return out


def cold_item(inter: pd.DataFrame, ratios: tuple[float, ...], seed: int) -> np.ndarray:
    """Hold out whole items: valid and test items have no training interactions (cold-start evaluation)."""
    return _hold_out(inter["item"].to_numpy(), ratios, seed, "cold_item", "items")


def cold_user(inter: pd.DataFrame, ratios: tuple[float, ...], seed: int) -> np.ndarray:
    """Hold out whole users: a seeded `ratios[1]` share of the users are validation users and `ratios[2]` test users.

    Every interaction of a held-out user is in its one evaluation split, so it has no training interaction and, at
    evaluation, an empty history and nothing seen (test users have no valid rows either): cold-start users.
    """
    return _hold_out(inter["user"].to_numpy(), ratios, seed, "cold_user", "users")


def _hold_out(keys: np.ndarray, ratios: tuple[float, ...], seed: int, protocol: str, what: str) -> np.ndarray:
    """Assign whole entities (`keys`: the rows' dense user or item ids) to train / valid / test by seeded shares."""
    entities = np.unique(keys)
    perm = np.random.default_rng(seed).permutation(entities)
    n_valid = int(round(ratios[1] * len(entities)))
    n_test = int(round(ratios[2] * len(entities)))
    if n_valid + n_test >= len(entities):
        raise DataError(f"{protocol} split leaves no training {what} ({len(entities)} {what}, ratios {ratios})")
    role = np.zeros(entities.max() + 1, dtype=np.int8)
    role[perm[:n_valid]] = VALID
    role[perm[n_valid:n_valid + n_test]] = TEST
    return role[keys]


def presplit(inter: pd.DataFrame) -> np.ndarray:
    """Use the `split` column the reader filled from separate train / valid / test files."""
    if "split" not in inter.columns:
        raise DataError("split.protocol=presplit but the reader gave no `split` column (give train/valid/test files)", field="split")
    codes = {"train": TRAIN, "valid": VALID, "test": TEST}
    mapped = inter["split"].map(codes)
    if mapped.isna().any():
        row = int(np.flatnonzero(mapped.isna().to_numpy())[0])
        raise DataError(f"split value {inter['split'].iloc[row]!r}: expected train|valid|test", row=row + 1, field="split")
    return mapped.to_numpy().astype(np.int8)
