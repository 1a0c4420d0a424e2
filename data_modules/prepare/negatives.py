"""Fixed, seeded negatives for sampled evaluation, written with the split so every model ranks the same ones.

RecBole 1.2.1's `uniN` / `popN` eval modes, reproduced (recbole/sampler/sampler.py `Sampler`,
recbole/data/dataloader/general_dataloader.py `NegSampleEvalDataLoader`, recbole/trainer/trainer.py
`_neg_sample_batch_eval`):

* N negatives are drawn for every held-out interaction (so a user with m valid items gets m x N draws), with
  replacement, each draw repeated until it is not an item the user has in the phase's *used* set: train + valid
  for the valid phase, train + valid + test for the test phase (a valid-phase negative may be a test item);
* uniform: every item equally likely; popularity: item i with probability proportional to (c_i / total) ** alpha,
  c_i its interactions in train + valid + test together (RecBole's candidate list spans all three phases);
* a user's candidates are all their held-out items plus the distinct negatives, ranked by score (other items are
  not ranked); metrics are the full-ranking ones over that list (trainer/engine/evaluator.py).

The draws come from numpy's PCG64 seeded by (seed, protocol, split), not RecBole's global numpy state, so the same
options give the same negatives on any machine; the definitions, not RecBole's random stream, are reproduced.

Files: `negatives/<protocol>_<split>.parquet`, one row per held-out interaction in the split's shard order
(user, item), columns user int32, item int32 (the held-out item), negatives fixed_size_list<int32>[N]; listed in
the manifest under `negatives.<protocol>.<split>` with rows, bytes and sha256 like a shard.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data_modules.errors import DataError
from data_modules.prepare.write import sha256_file

FOLDER = "negatives"
_PROTOCOL = re.compile(r"^(uni|pop)([1-9][0-9]*)$")
_MAX_ROUNDS = 1000


def parse_protocol(name: str) -> tuple[str, int]:
    """`uni100` -> ("uniform", 100), `pop50` -> ("popularity", 50); anything else is a ValueError."""
    m = _PROTOCOL.match(name)
    if m is None:
        raise ValueError(f"sampled protocol {name!r}: expected uni<N> or pop<N> (RecBole's eval modes), e.g. uni100")
    return ("uniform" if m.group(1) == "uni" else "popularity"), int(m.group(2))


@dataclass
class NegativesConfig:
    """Negatives for sampled-negative evaluation, drawn once at preparation (none by default)."""

    protocols: list[str] = field(default_factory=list)
    """(list of str) RecBole eval modes to store, e.g. [uni100, pop100]: uni<N> / pop<N> = N uniform / popularity
    negatives per held-out interaction; evaluated beside full ranking as val/<protocol>/<metric>."""
    seed: int = 2020
    """(int) seed of the draws (each protocol and split gets its own stream from it)."""
    popularity_alpha: float = 1.0
    """(float) pop<N> draws item i with probability proportional to count_i ** alpha (RecBole's default 1.0)."""

    def __post_init__(self) -> None:
        self.protocols = list(self.protocols or [])
        for name in self.protocols:
            parse_protocol(name)
        if len(set(self.protocols)) != len(self.protocols):
            raise ValueError(f"negatives.protocols={self.protocols}: a protocol is listed twice")
        if self.popularity_alpha < 0:
            raise ValueError(f"negatives.popularity_alpha={self.popularity_alpha}: expected >= 0")


def draw(users: np.ndarray, used: np.ndarray, n_items: int, num: int, rng: np.random.Generator,
         cdf: np.ndarray | None = None) -> np.ndarray:
    """(R, num) int32 negatives for rows of `users` (R,): uniform over items, or by the cumulative weights `cdf`
    (n_items,); each draw repeated until (user, item) is not in `used` (sorted int64 codes user * n_items + item)."""
    def sample(size: int) -> np.ndarray:
        if cdf is None:
            return rng.integers(0, n_items, size=size)
        return np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right").clip(max=n_items - 1)

    def taken(rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        codes = users[rows].astype(np.int64) * n_items + items
        at = np.searchsorted(used, codes).clip(max=max(len(used) - 1, 0))
        return used[at] == codes if len(used) else np.zeros(len(codes), dtype=bool)

    out = sample(len(users) * num).reshape(len(users), num)
    bad = np.flatnonzero(taken(np.repeat(np.arange(len(users)), num), out.ravel()))
    for _ in range(_MAX_ROUNDS):
        if not len(bad):
            return out.astype(np.int32)
        flat = out.reshape(-1)
        flat[bad] = sample(len(bad))
        bad = bad[taken(bad // num, flat[bad])]
    user = int(users[bad[0] // num])
    raise DataError(f"cannot draw negatives for user index {user}: after {_MAX_ROUNDS} rounds every draw was an item "
                    "the user has (the user has interacted with (nearly) all items that can be drawn); filter such "
                    "users (filter.min_item_interactions / a smaller N)", field="negatives")


def write_negatives(cfg: NegativesConfig, inter: pd.DataFrame, part: np.ndarray, n_items: int, root: Path,
                    splits: dict[str, int]) -> dict[str, Any]:
    """Draw and write every protocol's negatives for the evaluation splits (`splits`: name -> code in `part`, in
    phase order after train = 0); return the manifest's `negatives` section ({} when no protocol is asked)."""
    if not cfg.protocols:
        return {}
    (root / FOLDER).mkdir(exist_ok=True)
    user, item = inter["user"].to_numpy().astype(np.int64), inter["item"].to_numpy().astype(np.int64)
    counts = np.bincount(item, minlength=n_items).astype(np.float64)  # train + valid + test, as RecBole's candidates
    weights = (counts / counts.sum()) ** cfg.popularity_alpha
    weights[counts == 0] = 0.0
    out: dict[str, Any] = {}
    for name in cfg.protocols:
        dist, num = parse_protocol(name)
        entry: dict[str, Any] = {"distribution": dist, "num": num, "seed": cfg.seed}
        if dist == "popularity":
            entry["alpha"] = cfg.popularity_alpha
        for split, code in splits.items():
            used = np.unique(user[part <= code] * n_items + item[part <= code])  # train .. this phase
            rows = inter[part == code].sort_values(["user", "item"], kind="stable")  # the split's shard order
            stream = np.random.default_rng([cfg.seed, zlib.crc32(name.encode()), code])
            negs = draw(rows["user"].to_numpy(), used, n_items, num, stream,
                        np.cumsum(weights) if dist == "popularity" else None)
            entry[split] = _write(root, f"{FOLDER}/{name}_{split}.parquet", rows, negs)
        out[name] = entry
    return out


def _write(root: Path, rel: str, rows: pd.DataFrame, negs: np.ndarray) -> dict[str, Any]:
    num = negs.shape[1]
    flat = pa.array(negs.reshape(-1), pa.int32())
    table = pa.table({"user": pa.array(rows["user"].to_numpy().astype(np.int32)),
                      "item": pa.array(rows["item"].to_numpy().astype(np.int32)),
                      "negatives": pa.FixedSizeListArray.from_arrays(flat, num)})
    path = root / rel
    pq.write_table(table, path, compression="zstd")
    return {"path": rel, "rows": len(rows), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def stored(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The manifest's negatives per protocol ({} for datasets prepared without them)."""
    return dict(manifest.get("negatives") or {})


def files(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, file entry) of every negatives file the manifest lists, for path and checksum checks."""
    return [(f"{name} negatives ({split})", e[split]) for name, e in stored(manifest).items()
            for split in ("valid", "test") if split in e]
