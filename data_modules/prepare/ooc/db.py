"""The DuckDB connection under a memory budget, and the two helpers every stage uses: count-and-sample a rule's
rejected rows exactly as the in-memory engine's Quarantine records them, and stream numpy columns into a table."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from data_modules.errors import Quarantine

# what Python's str.strip() removes (the in-memory engine strips ids with it); DuckDB's trim() takes the characters
WHITESPACE = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
CHUNK = 1 << 22  # rows per record batch when numpy arrays are streamed into DuckDB


def connect(folder: Path, memory_limit_gb: float, threads: int | None) -> duckdb.DuckDBPyConnection:
    """An in-memory database whose buffers (tables included) are evicted to spill files in `folder` past the budget:
    2-4x faster here than a database file, whose write-ahead log writes every intermediate table once more."""
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"memory_limit": f"{max(64, int(memory_limit_gb * 1024))}MB",
                              "temp_directory": str(folder / "spill"), "preserve_insertion_order": False}
    if threads is not None:
        config["threads"] = threads
    con = duckdb.connect(":memory:", config=config)
    con.execute("SET enable_progress_bar = false")  # the stage log lines report progress; no bar on stdout
    return con


def strip(col: str) -> str:
    """SQL for `col` stripped as Python's str.strip() does; trim() with a character set is slow, so only values that
    start or end with one of them are trimmed (18x faster on ids that need nothing)."""
    return (f"CASE WHEN {col} <> '' AND (contains($ws, left({col}, 1)) OR contains($ws, right({col}, 1))) "
            f"THEN trim({col}, $ws) ELSE {col} END")


def count(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None) -> int:
    return int(con.execute(f"SELECT count(*) FROM ({sql})", params or {}).fetchall()[0][0])


def _first(con: duckdb.DuckDBPyConnection, sql: str, columns: list[str], params: dict[str, Any] | None,
           limit: int) -> list[tuple]:
    """The first `limit` rows of `sql`, whose last clause is its ORDER BY: sorted in the outermost query (top-N), with
    insertion order kept for this query (without it DuckDB may hand rows out in the order threads finish them)."""
    inner, _, order = sql.rpartition(" ORDER BY ")
    con.execute("SET preserve_insertion_order = true")
    try:
        return con.execute(f"SELECT {', '.join(columns)} FROM ({inner}) ORDER BY {order} LIMIT {limit}",
                           params or {}).fetchall()
    finally:
        con.execute("SET preserve_insertion_order = false")


def records(con: duckdb.DuckDBPyConnection, sql: str, columns: list[str], params: dict[str, Any] | None = None,
            limit: int = 20) -> list[dict[str, Any]]:
    """The first `limit` rows of `sql` (ending in ORDER BY) as the in-memory engine's `to_dict("records")` gives
    them (missing = NaN)."""
    rows = _first(con, sql, [_q(c) for c in columns], params, limit)
    return [{c: (math.nan if v is None else v) for c, v in zip(columns, row)} for row in rows]


def reject_sql(con: duckdb.DuckDBPyConnection, q: Quarantine, rule: str, sql: str, columns: list[str], source: str,
               reason: str, file: str, params: dict[str, Any] | None = None) -> int:
    """Count the rows of `sql` (ending in the ORDER BY the in-memory engine meets them in; with `rn`) under `rule` and sample the
    first ones with `file` and line rn + 2, as prepare/plausible.reject_rows does with the provenance columns."""
    n = count(con, sql.rpartition(" ORDER BY ")[0], params)
    if not n:
        return 0
    sample = _first(con, sql, ["rn", *(_q(c) for c in columns)], params, q.sample_per_rule)
    for row in sample:
        rec = {c: (math.nan if v is None else v) for c, v in zip(columns, row[1:])}
        q.reject(rule, path=file, row=int(row[0]) + 2, reason=reason, record=rec)
    q.reject_many(rule, n - len(sample), path=source, reason=reason)
    return n


def load_columns(con: duckdb.DuckDBPyConnection, table: str, name: str, values: np.ndarray, key: str = "pos") -> None:
    """CREATE `table` (`key` = 0..n-1, `name` = values) from a numpy array, streamed in chunks (no n-row key array)."""
    schema = pa.schema([(key, pa.int64()), (name, pa.from_numpy_dtype(values.dtype))])

    def batches() -> Iterator[pa.RecordBatch]:
        for a in range(0, len(values), CHUNK):
            b = min(a + CHUNK, len(values))
            yield pa.record_batch([pa.array(np.arange(a, b, dtype=np.int64)), pa.array(values[a:b])], schema=schema)

    reader = pa.RecordBatchReader.from_batches(schema, batches())  # noqa: F841 (DuckDB finds it by name)
    con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM reader")


def fetch_column(con: duckdb.DuckDBPyConnection, sql: str, n: int, dtype: Any) -> np.ndarray:
    """The single column of `sql` (n rows, in its ORDER BY) into one numpy array, read in record batches."""
    out = np.empty(n, dtype=dtype)
    done = 0
    ordered(con)
    for batch in con.sql(sql).to_arrow_reader(CHUNK):
        col = batch.column(0).to_numpy(zero_copy_only=False)
        out[done:done + len(col)] = col
        done += len(col)
    if done != n:
        raise RuntimeError(f"expected {n} rows from DuckDB, got {done}: {sql}")
    return out


def ordered(con: duckdb.DuckDBPyConnection) -> None:
    """Results streamed in their ORDER BY: without insertion order DuckDB hands record batches out as threads finish
    them (tables are built with it off: less memory, and row order inside tables is never relied on)."""
    con.execute("SET preserve_insertion_order = true")


def _q(col: str) -> str:
    return '"' + col.replace('"', '""') + '"'


quote = _q
