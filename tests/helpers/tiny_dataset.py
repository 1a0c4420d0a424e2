"""Write a tiny prepared dataset (train shards + side arrays) following `data_modules/layout.py`.

It does not use the preparation pipeline: the files are written directly, so streaming tests depend
only on the layout contract. The rows are kept in memory (`TinyDataset`) for brute-force expectations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_modules.layout import SIDE

SCHEMA = pa.schema(
    [
        ("user", pa.int32()),
        ("item", pa.int32()),
        ("rating", pa.float32()),
        ("timestamp", pa.int64()),
        ("seq_pos", pa.int32()),
    ]
)


@dataclass
class TinyDataset:
    """A written dataset and its training rows in file order (shard 0 first), each column `(n_rows,)`."""

    root: Path
    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    seq_pos: np.ndarray
    item_popularity: np.ndarray  # (n_items,) int64
    shard_rows: tuple[int, ...]

    @property
    def n_rows(self) -> int:
        return len(self.user)

    def keys(self) -> np.ndarray:
        """(n_rows,) int64 id of each row: (user, seq_pos) names a training row uniquely."""
        return row_keys(self.user, self.seq_pos)


def row_keys(user: np.ndarray, seq_pos: np.ndarray) -> np.ndarray:
    return np.asarray(user, dtype=np.int64) * 1_000_000 + np.asarray(seq_pos, dtype=np.int64)


def write_tiny_dataset(
    root: Path,
    *,
    n_users: int = 40,
    n_items: int = 60,
    shard_rows: tuple[int, ...] = (480, 170, 350),
    row_group_rows: int = 50,
    unseen_items: tuple[int, ...] = (0, 3, 59),
    seed: int = 0,
) -> TinyDataset:
    """Write `<root>/train/part-*.parquet` (row groups of `row_group_rows`) and `<root>/side/*.npy`.

    Users are drawn unevenly (some have long sequences, some none); `unseen_items` never occur, so they
    have popularity 0; timestamps have ties, broken by draw order, to exercise the time ordering.
    """
    rng = np.random.default_rng(seed)
    n = sum(shard_rows)
    user = rng.choice(n_users, size=n, p=rng.dirichlet(np.full(n_users, 0.7))).astype(np.int32)
    seen = np.setdiff1d(np.arange(n_items), unseen_items)
    item = rng.choice(seen, size=n).astype(np.int32)
    timestamp = rng.integers(0, 200, size=n).astype(np.int64)
    rating = rng.integers(1, 6, size=n).astype(np.float32)
    rating[rng.random(n) < 0.2] = np.nan
    order = np.lexsort((np.arange(n), timestamp, user))  # by user, then time, then draw order
    seq_pos = np.empty(n, dtype=np.int32)
    counts = np.bincount(user, minlength=n_users)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    seq_pos[order] = (np.arange(n) - offsets[user[order]]).astype(np.int32)

    side = root / SIDE
    side.mkdir(parents=True, exist_ok=True)
    np.save(side / "history_offsets.npy", offsets)
    np.save(side / "history_items.npy", item[order].astype(np.int32))
    popularity = np.bincount(item, minlength=n_items).astype(np.int64)
    np.save(side / "item_popularity.npy", popularity)

    shuffle = rng.permutation(n)  # file order is unrelated to time or user
    user, item, rating, timestamp, seq_pos = (a[shuffle] for a in (user, item, rating, timestamp, seq_pos))
    (root / "train").mkdir(parents=True, exist_ok=True)
    start = 0
    for i, rows in enumerate(shard_rows):
        s = slice(start, start + rows)
        table = pa.table(
            {
                "user": user[s],
                "item": item[s],
                "rating": rating[s],
                "timestamp": timestamp[s],
                "seq_pos": seq_pos[s],
            },
            schema=SCHEMA,
        )
        pq.write_table(table, root / "train" / f"part-{i:05d}.parquet", row_group_size=row_group_rows)
        start += rows
    return TinyDataset(root, user, item, rating, timestamp, seq_pos, popularity, tuple(shard_rows))


def prepare_tiny(out: Path) -> Path:
    """`fusionrec data prepare configs/data/tiny.yaml --out OUT` for real (offline MiniLM tokenizer); returns OUT."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run([sys.executable, "-m", "trainer.cli", "data", "prepare", "configs/data/tiny.yaml", "--out", str(out)],
                       cwd=repo, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    return out
