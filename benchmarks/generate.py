"""Write a synthetic dataset in RecBole atomic format (power-law users and items), for scaling benchmarks.

    python benchmarks/generate.py OUT_DIR --rows 10000000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv


def generate(out: Path, rows: int, seed: int = 0) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_users, n_items = max(100, rows // 50), max(100, rows // 200)
    users = (rng.pareto(1.2, rows) * n_users / 20).astype(np.int64) % n_users
    items = (rng.pareto(1.0, rows) * n_items / 50).astype(np.int64) % n_items
    table = pa.table({
        "user_id:token": pa.array(users.astype(str)),
        "item_id:token": pa.array(items.astype(str)),
        "rating:float": pa.array(rng.integers(1, 6, rows).astype(np.float32)),
        "timestamp:float": pa.array(rng.integers(8e8, 9e8, rows).astype(np.int64)),
    })
    path = out / f"{out.name}.inter"
    # the header by hand: pyarrow quotes header names even with quoting_style="none", and RecBole's are bare
    with open(path, "wb") as f:
        f.write(("\t".join(table.column_names) + "\n").encode())
        pacsv.write_csv(table, f, pacsv.WriteOptions(delimiter="\t", quoting_style="none", include_header=False))
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--rows", type=int, default=1_000_000)
    a = ap.parse_args()
    print(generate(Path(a.out), a.rows))
