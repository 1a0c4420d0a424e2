"""Read a RecBole atomic `.inter` file into DuckDB, streamed (pyarrow's CSV reader, one block at a time), with the
reader's rules of data_modules/readers/recbole.py: the same columns, `non_numeric_rating` and `bad_timestamp`
rejections, the same counts and samples. The side files (.user, .item, .kg, .link, .net) are small: the in-memory
reader reads them.

Table `t` afterwards: `rn` (0-based data row of the file: the file line is rn + 2), `user`, `item` (VARCHAR), `rating`
(DOUBLE), `timestamp` (BIGINT seconds), other columns as VARCHAR under their base names.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from data_modules.errors import DataError, Quarantine
from data_modules.prepare.ooc.db import quote, reject_sql
from data_modules.readers.recbole import INTER_NAMES, TYPES

BLOCK = 1 << 24  # bytes of text pyarrow parses at a time


def header(path: Path) -> list[str]:
    """The base column names of `path`'s `name:type` header (a DataError as read_atomic raises for a bad one)."""
    with open(path, "rb") as f:
        first = f.readline()
    if not first.strip():
        raise DataError("file is empty", path=path)
    text = first.decode("utf-8").removeprefix("\ufeff").rstrip("\r\n")
    names = []
    for col in text.split("\t"):
        base, _, typ = col.partition(":")
        if typ not in TYPES:
            raise DataError(f"header column {col!r} is not 'name:type' with type in {TYPES}", path=path, row=1)
        names.append(base)
    for col in ("user_id", "item_id"):
        if col not in names:
            raise DataError(f"missing column {col!r} (have {names})", path=path, row=1)
    return names


def read_inter(con: duckdb.DuckDBPyConnection, path: Path, q: Quarantine, block: int = BLOCK) -> tuple[int, int]:
    """Create table `t`; return (rows kept, rows read) as the reader counts them (read = kept + quarantined).
    `block`: bytes parsed at a time (memory per block; rows keep their file order across blocks)."""
    raw_names = header(path)
    names = [INTER_NAMES.get(c, c) for c in raw_names]
    with open(path, "rb") as f:
        columns = f.readline().decode("utf-8").removeprefix("\ufeff").rstrip("\r\n").split("\t")
    before = q.total
    bad_rows = _load(con, path, names, block, threads=True)
    if bad_rows:  # row numbers are only known reading on one thread: read again so
        con.execute("DROP TABLE raw")
        bad_rows = _load(con, path, names, block, threads=False)
    for number, text, got in bad_rows[:20]:
        q.reject("malformed_row", path=path, row=number,
                 reason=f"{got} fields, expected {len(columns)} ({', '.join(columns)})", record=text[:500])
    q.reject_many("malformed_row", len(bad_rows) - 20, path=path, reason=f"fields, expected {len(columns)}")
    if not bad_rows and not con.execute("SELECT count(*) FROM raw").fetchall()[0][0]:
        raise DataError("has a header line but no data rows", path=path)
    return _convert(con, path, names, q, before)


def _load(con: duckdb.DuckDBPyConnection, path: Path, names: list[str], block: int,
          threads: bool) -> list[tuple[int, str, int]]:
    """Table `raw` (rn + every column as text) streamed from `path`; the malformed rows skipped (line, text, fields)."""
    bad_rows: list[tuple[int, str, int]] = []

    def malformed(row: pacsv.InvalidRow) -> str:
        bad_rows.append((row.number, row.text, row.actual_columns))
        return "skip"

    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=block, use_threads=threads),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False, double_quote=False,
                                         ignore_empty_lines=True, invalid_row_handler=malformed),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, null_values=[""],
                                             strings_can_be_null=True))
    schema = pa.schema([("rn", pa.int64()), *[(n, pa.string()) for n in names]])

    def batches() -> Iterator[pa.RecordBatch]:
        # rn is the data row of the file, skipped malformed rows included (the in-memory reader keeps file lines):
        # pyarrow reports a block's invalid rows (physical row = file line) while parsing it, before yielding it
        start, seen = 0, 0
        try:
            for b in reader:
                new = [number - 2 for number, _, _ in bad_rows[seen:] if number is not None]
                seen = len(bad_rows)
                rows = np.arange(start, start + b.num_rows + len(new), dtype=np.int64)
                rn = np.setdiff1d(rows, np.asarray(new, dtype=np.int64), assume_unique=True) if new else rows
                start += len(rows)
                yield pa.record_batch([pa.array(rn[:b.num_rows]), *b.columns], schema=schema)
        except pa.ArrowInvalid as e:
            raise DataError(f"engine duckdb cannot read this file ({e}); engine.kind memory reads it line by line and "
                            "quarantines what it cannot decode", path=path) from e

    stream = pa.RecordBatchReader.from_batches(schema, batches())  # noqa: F841 (DuckDB finds it by name)
    con.execute("CREATE TABLE raw AS SELECT * FROM stream")
    return bad_rows


def _convert(con: duckdb.DuckDBPyConnection, path: Path, names: list[str], q: Quarantine, before: int) -> tuple[int, int]:
    """Table `t` from `raw`: rating and timestamp converted as the reader converts them, its rejections counted."""
    conv = {n: quote(n) for n in names}
    file = str(path)
    ok = "true"
    if "rating" in names:
        r = "TRY_CAST(rating AS DOUBLE)"
        reject_sql(con, q, "non_numeric_rating", f"SELECT * FROM raw WHERE rating IS NOT NULL AND ({r} IS NULL OR "
                   f"isnan({r})) ORDER BY rn", names, file, "'rating' is not a number", file)
        conv["rating"] = f"{r} AS rating"
        ok = f"(rating IS NULL OR ({r} IS NOT NULL AND NOT isnan({r})))"
    if "timestamp" in names:
        ts = "TRY_CAST(timestamp AS DOUBLE)"
        # the reader converts the rating before it looks at timestamps: samples show the rating as a number
        seen = f"SELECT rn, {', '.join(conv[n] for n in names)}, {ts} AS _ts FROM raw WHERE {ok}"
        reject_sql(con, q, "bad_timestamp", f"SELECT * EXCLUDE (_ts) FROM ({seen}) WHERE timestamp IS NOT NULL AND "
                   "(_ts IS NULL OR isnan(_ts)) ORDER BY rn", names, file, "'timestamp' is not a number", file)
        reject_sql(con, q, "bad_timestamp", f"SELECT * EXCLUDE (_ts) FROM ({seen}) WHERE timestamp IS NULL ORDER BY rn",
                   names, file, "'timestamp' is empty", file)
        conv["timestamp"] = f"CAST(floor({ts}) AS BIGINT) AS timestamp"
        ok = f"{ok} AND {ts} IS NOT NULL AND NOT isnan({ts})"
    con.execute(f"CREATE TABLE t AS SELECT rn, {', '.join(conv[n] for n in names)} FROM raw WHERE {ok}")
    con.execute("DROP TABLE raw")
    kept = int(con.execute("SELECT count(*) FROM t").fetchall()[0][0])
    return kept, kept + q.total - before
