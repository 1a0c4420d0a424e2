"""Write a prepared dataset atomically: parquet shards with sha256, side arrays, id maps, manifest last.

Everything is built in a hidden temporary sibling folder and renamed into place, so a crash or Ctrl-C never
leaves a folder that looks complete; a stale temporary folder from an earlier crash is removed on the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data_modules import layout


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces `out`, on any exception (Ctrl-C too) it is deleted.

    The caller holds `out`'s build lock (prepare/lock.py), so the hidden `.tmp-` / `.old-` folders found here are
    leftovers of a builder that was killed (SIGKILL leaves them: no `finally` runs), never another one's work."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


INTERACTION_SCHEMA = {
    "user": pa.int32(),
    "item": pa.int32(),
    "rating": pa.float32(),
    "timestamp": pa.int64(),
    "seq_pos": pa.int32(),
}


def write_shards(df: pd.DataFrame, folder: Path, root: Path, shard_rows: int, block_rows: int) -> list[dict[str, Any]]:
    """Write `df` as parquet parts of at most `shard_rows` rows (row groups of `block_rows`); return the shard list."""
    n_parts = max(1, -(-len(df) // shard_rows))
    return write_shard_parts((df.iloc[i * shard_rows:(i + 1) * shard_rows] for i in range(n_parts)), folder, root,
                             block_rows)


def write_shard_parts(parts: Iterable[pd.DataFrame], folder: Path, root: Path, block_rows: int) -> list[dict[str, Any]]:
    """Write each frame of `parts` as the next `part-NNNNN.parquet` (the out-of-core engine streams its shards here,
    so both engines write the same bytes); return the shard list."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for i, part in enumerate(parts):
        schema = pa.schema([(c, t) for c, t in INTERACTION_SCHEMA.items() if c in part.columns])
        path = folder / f"part-{i:05d}.parquet"
        frame = part[schema.names]
        frame.attrs = {}  # a reader's attributes (rows_read) are not shard content: the bytes depend on the rows only
        table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
        pq.write_table(table, path, row_group_size=block_rows, compression="zstd")
        shards.append({"path": str(path.relative_to(root)), "rows": len(part), "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return shards


def write_side(arrays: dict[str, np.ndarray], root: Path) -> dict[str, Any]:
    """Save each array as `side/<name>.npy` (memory-mappable); return {name: {shape, dtype, bytes, sha256}}."""
    side = root / layout.SIDE
    side.mkdir(exist_ok=True)
    out = {}
    for name, arr in sorted(arrays.items()):
        path = side / f"{name}.npy"
        np.save(path, np.ascontiguousarray(arr))
        out[name] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "bytes": path.stat().st_size,
                     "sha256": sha256_file(path)}
    return out


def write_id_maps(users: pd.Index, items: pd.Index, root: Path) -> None:
    folder = root / layout.ID_MAPS
    folder.mkdir(exist_ok=True)
    for name, idx in (("users", users), ("items", items)):
        t = pa.table({"index": pa.array(np.arange(len(idx), dtype=np.int32)), "id": pa.array(idx.astype(str).tolist(), pa.string())})
        pq.write_table(t, folder / f"{name}.parquet")


def write_manifest(manifest: dict[str, Any], root: Path) -> None:
    with open(root / layout.MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, ensure_ascii=False, default=_default)
        f.write("\n")


def _default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")
