"""Small helpers shared by the readers: file lookup, numeric columns with quarantine, KG linking.

Row numbers reported in quarantine samples and errors are 1-based *line numbers of the file*
(the header, when there is one, is line 1), so a user can jump straight to the bad line.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import logging
import lzma
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_modules.errors import DataError, Quarantine

log = logging.getLogger(__name__)

SAMPLE = 20  # rows kept per vectorised rejection; the Quarantine caps samples per rule anyway


def require_file(path: str | Path, what: str = "input file") -> Path:
    """Return `path` as a Path, or raise a DataError naming it when it does not exist."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{what} not found", path=p)
    return p


def first_existing(folder: Path, names: Iterable[str]) -> Path | None:
    """The first of `names` (tried in order, e.g. `x.dat` then `x.dat.gz`) that exists in `folder`."""
    for n in names:
        if (folder / n).is_file():
            return folder / n
    return None


def require_columns(df: pd.DataFrame, columns: Iterable[str], path: Path) -> pd.DataFrame:
    """Return `df`, or raise a DataError naming the file, the missing column(s) and the columns present."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            f"missing column(s) {missing} (columns present: {list(df.columns)})", path=path, field=missing[0]
        )
    return df


# compression is recognised by content, never by name: a `.gz` name over plain text reads, a gzipped `.csv` too
MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
# what a truncated or corrupt compressed stream raises while it is read (gzip.BadGzipFile is an OSError)
STREAM_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)
MAX_RECORD_LINES = 1000  # a quoted CSV field may span lines; an unterminated quote may not swallow more than this
RAW = 500  # characters of a rejected line kept in its quarantine sample
SURROGATE = re.compile("[\udc80-\udcff]")


def compression(path: Path) -> str | None:
    """`gzip` | `bz2` | `xz` | `zstd` from the file's first bytes, or None for an uncompressed file."""
    with open(path, "rb") as f:
        head = f.read(6)
    return next((kind for magic, kind in MAGIC.items() if head.startswith(magic)), None)


def open_bytes(path: Path) -> io.BufferedIOBase:
    """Open a file for binary reading, decompressing gzip / bz2 / xz (recognised by content, not by extension)."""
    kind = compression(path)
    if kind == "zstd":
        raise DataError("zstd-compressed: decompress it first (`zstd -d`); fusionrec reads plain, gzip, bz2 and xz files",
                        path=path)
    opener = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}.get(kind or "", open)
    return opener(path, "rb")  # type: ignore[return-value]


def read_bytes(path: Path) -> bytes:
    """The whole (decompressed) content; a truncated or corrupt compressed file is a DataError naming the file and
    how far it could be read (decompressed byte offset and line)."""
    try:
        with open_bytes(path) as f:
            return f.read()
    except STREAM_ERRORS:
        pass
    # the error path only: read again in small steps to say how far the data is good (a failing read loses its chunk)
    chunks: list[bytes] = []
    with open_bytes(path) as f:
        try:
            while chunk := f.read(1024):
                chunks.append(chunk)
        except STREAM_ERRORS as e:
            done = sum(map(len, chunks))
            line = sum(c.count(b"\n") for c in chunks) + 1
            raise DataError(f"{compression(path) or 'file'} data truncated or corrupt after decompressed byte {done} "
                            f"(line {line}): {e}", path=path) from e
    return b"".join(chunks)


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Stream (1-based line number, raw line) of a possibly compressed file; a truncated or corrupt stream is a
    DataError naming the file and the last line read."""
    line_no = 0
    with open_bytes(path) as f:
        try:
            for line_no, raw in enumerate(f, start=1):  # noqa: B007 (line_no is reported on error)
                yield line_no, raw
        except STREAM_ERRORS as e:
            raise DataError(f"{compression(path) or 'file'} data truncated or corrupt after line {line_no}: {e}",
                            path=path) from e


def read_delimited(
    path: Path,
    sep: str,
    q: Quarantine,
    *,
    header: bool = True,
    names: list[str] | None = None,
    encoding: str = "utf-8",
    quoting: bool = False,
) -> pd.DataFrame:
    """Read a delimited file as strings (ids stay strings; numeric columns are converted by the caller).

    A row that cannot be read is quarantined with its line and raw text, never a failure of the whole file:
    `malformed_row` (number of fields differs from the header / `names`), `broken_quoting` (quoting on: a quote
    that does not close within MAX_RECORD_LINES lines, or text after a closing quote), `invalid_utf8` (bytes not in
    `encoding`). Blank lines are not rows. An empty file, or a header without rows, is a DataError naming it.
    `quoting=False` (the public formats read here never quote, and a stray `"` in a title must not swallow the
    following lines) or CSV quoting (`"a, b"`, `""` inside quotes, fields spanning lines).
    The frame's index + (2 with a header, else 1) is each row's line in the file, as `numeric_column` expects.
    """
    data = read_bytes(path)
    if encoding.replace("-", "").lower() == "utf8" and data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a byte-order mark (spreadsheet exports)
    if not data.strip():
        raise DataError("file is empty", path=path)
    if len(sep) > 1:  # `::` -> one byte the fast C parser accepts (and that text does not contain)
        data, sep = data.replace(sep.encode(encoding), b"\x1f"), "\x1f"
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    before = q.total
    df = _delimited_fast(data, sep, header, names, encoding, quoting, path)
    if df is None:
        df = _delimited_checked(data, sep, q, header, names, encoding, quoting, path)
    df.attrs["rows_read"] = len(df) + q.total - before  # data rows seen: kept + quarantined
    return df


def _read_csv(source: Any, sep: str, names: list[str] | None, header: bool, quoting: bool, encoding: str,
              path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(source, sep=sep, header=0 if header else None, names=names, dtype=str, keep_default_na=False,
                           na_values=[""], quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE,
                           lineterminator="\n", encoding=encoding, engine="c")
    except UnicodeDecodeError:
        raise  # the fast path's signal to check line by line
    except (pd.errors.ParserError, ValueError) as e:  # e.g. duplicate column names
        raise DataError(f"cannot read as {sep!r}-separated text: {e}", path=path) from e


def _delimited_fast(data: bytes, sep: str, header: bool, names: list[str] | None, encoding: str, quoting: bool,
                    path: Path) -> pd.DataFrame | None:
    """The common case without a Python loop over lines: every line has the header's number of fields, none is
    blank, none quoted, all decodable. None when any line is not so (the checked path then finds which)."""
    sep_byte = sep.encode(encoding)
    if len(sep_byte) != 1 or (quoting and b'"' in data):
        return None
    arr = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)
    if data[-1:] != b"\n":
        ends = np.append(ends, len(data))
    starts = np.concatenate([[0], ends[:-1] + 1])
    seps = np.flatnonzero(arr == sep_byte[0])
    fields = np.searchsorted(seps, ends) - np.searchsorted(seps, starts) + 1
    if (ends - starts == 0).any():
        return None
    n = len(names) if names is not None else int(fields[0])
    body = fields[1:] if header else fields
    if header and len(body) == 0:
        raise DataError("has a header line but no data rows", path=path)
    if (body != n).any() or (header and names is None and fields[0] != n):
        return None
    try:
        df = _read_csv(io.BytesIO(data), sep, names, header, quoting, encoding, path)
    except UnicodeDecodeError:
        return None
    return df if len(df) == len(body) else None


def _delimited_checked(data: bytes, sep: str, q: Quarantine, header: bool, names: list[str] | None, encoding: str,
                       quoting: bool, path: Path) -> pd.DataFrame:
    """Line by line: quarantine what cannot be read, then parse the rest (the frame's index keeps file lines)."""
    lines, undecodable = _decoded_lines(data, encoding, path, q)
    blank = [not line.strip() for line in lines]
    first = next((i for i, b in enumerate(blank) if not b and i not in undecodable), None)
    if first is None:
        raise DataError(f"no readable line (every line is blank or not valid {encoding})", path=path)
    columns = names
    body_start = 0
    if header:
        try:
            parsed = next(csv.reader([lines[first]], delimiter=sep, strict=True)) if quoting else lines[first].split(sep)
        except csv.Error as e:
            raise DataError(f"cannot parse the header line: {e}", path=path, row=first + 1) from e
        columns, body_start = names or parsed, first + 1
        if all(blank[body_start:]):
            raise DataError("has a header line but no data rows", path=path)
    assert columns is not None, "read_delimited: header=False needs names"
    n = len(columns)
    kept: list[int] = []
    joined: dict[int, str] = {}
    bad_fields: list[tuple[int, int]] = []
    i = body_start
    while i < len(lines):
        line = lines[i]
        if blank[i] or i in undecodable:
            i += 1
            continue
        used, count = 1, line.count(sep) + 1
        if quoting and '"' in line:
            row, used = _quoted_record(lines, i, sep)
            if row is None:
                q.reject("broken_quoting", path=path, row=i + 1, record=line[:RAW],
                         reason=f"a quote opened here does not close within {MAX_RECORD_LINES} lines, or text follows a closing quote")
                i += 1
                continue
            count = len(row)
            if used > 1:
                joined[i] = "\n".join(lines[i:i + used])
        if count == n:
            kept.append(i)
        else:
            bad_fields.append((i, count))
        i += used
    _reject_lines(q, "malformed_row", path, lines, bad_fields, f"fields, expected {n} ({', '.join(map(str, columns))})")
    if not kept:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    text = "\n".join(joined.get(k, lines[k]) for k in kept)
    df = _read_csv(io.StringIO(text), sep, list(columns), False, quoting, encoding, path)
    if len(df) != len(kept):  # a disagreement between the checks above and pandas: never silently misalign rows
        raise DataError(f"parsed {len(df)} rows where {len(kept)} were expected (please report this file)", path=path)
    df.index = pd.Index(np.asarray(kept) + 1 - (2 if header else 1))
    return df


def _decoded_lines(data: bytes, encoding: str, path: Path, q: Quarantine) -> tuple[list[str], set[int]]:
    """(the lines without terminators, indices of lines that are not valid `encoding`, quarantined as invalid_utf8)."""
    try:
        return data.decode(encoding).split("\n"), set()
    except UnicodeDecodeError:
        lines = data.decode(encoding, errors="surrogateescape").split("\n")
    bad = set()
    for i, line in enumerate(lines):
        m = SURROGATE.search(line)
        if m:
            raw = line.encode(encoding, errors="surrogateescape")
            col = len(line[: m.start()].encode(encoding, errors="surrogateescape"))
            q.reject("invalid_utf8", path=path, row=i + 1, reason=f"not valid {encoding} at byte {col} of the line",
                     record=raw[:RAW])
            bad.add(i)
    return lines, bad


def _quoted_record(lines: list[str], i: int, sep: str) -> tuple[list[str] | None, int]:
    """(fields, lines used) of the CSV record starting at line `i`, or (None, 1) when its quoting is broken."""
    stop = min(len(lines), i + MAX_RECORD_LINES)
    reader = csv.reader((lines[k] for k in range(i, stop)), delimiter=sep, strict=True)
    try:
        row = next(reader)
    except (csv.Error, StopIteration):
        return None, 1
    return row, reader.line_num


def _reject_lines(q: Quarantine, rule: str, path: Path, lines: list[str], bad: list[tuple[int, int]], what: str) -> None:
    """Quarantine lines (index, field count): the first SAMPLE with line, count and raw text, the rest counted."""
    for i, count in bad[:SAMPLE]:
        q.reject(rule, path=path, row=i + 1, reason=f"{count} {what}", record=lines[i][:RAW])
    if len(bad) > SAMPLE:
        q.reject_many(rule, len(bad) - SAMPLE, path=path, reason=what)


def read_jsonl(path: Path, q: Quarantine, encoding: str = "utf-8") -> pd.DataFrame:
    """JSON lines, one object per line, as a frame of the values as parsed (index + 1 = line). A line that is not a
    JSON object is quarantined as `bad_json`, bytes not in `encoding` as `invalid_utf8`; an empty file, or a JSON
    array instead of lines, is a DataError naming the file."""
    data = read_bytes(path)
    if not data.strip():
        raise DataError("file is empty", path=path)
    lines, undecodable = _decoded_lines(data.replace(b"\r\n", b"\n"), encoding, path, q)
    if data.lstrip()[:1] == b"[":
        raise DataError("holds a JSON array, not JSON lines (one object per line); convert it, e.g. `jq -c '.[]'`",
                        path=path)
    records, index = [], []
    before = q.total - len(undecodable)
    for i, line in enumerate(lines):
        if i in undecodable or not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            rec = None
        if not isinstance(rec, dict):
            q.reject("bad_json", path=path, row=i + 1, reason="not a JSON object (truncated or invalid)", record=line[:RAW])
            continue
        records.append(rec)
        index.append(i)
    df = pd.DataFrame(records, index=pd.Index(index, dtype="int64"), dtype=object)
    df.attrs["rows_read"] = len(df) + q.total - before  # lines seen: kept + quarantined
    return df


def read_parquet_file(path: Path) -> pd.DataFrame:
    """A Parquet file (possibly compressed as a whole); unreadable or without rows: a DataError naming it."""
    import pyarrow.parquet as pq

    try:
        source: Any = io.BytesIO(read_bytes(path)) if compression(path) else path
        table = pq.read_table(source)
        table.validate(full=True)  # flipped bits in a string page read fine but are not UTF-8: fail here, named
        df = table.to_pandas()
    except DataError:
        raise
    except Exception as e:  # damaged pages or metadata fail in pyarrow in many ways (KeyError from damaged
        # pandas metadata, IndexError, ArrowInvalid, OSError): all of them mean the file is not readable Parquet
        raise DataError(f"cannot read as parquet: {type(e).__name__}: {e}", path=path) from e
    if len(df) == 0:
        raise DataError("parquet file has no rows", path=path)
    df.attrs["rows_read"] = len(df)
    return df


def origin(df: pd.DataFrame, path: Path, first_line: int) -> pd.DataFrame:
    """Where each row of `df` came from, by position: `file` (categorical) and `line` (`df`'s index + first_line;
    the index must still be the reader's, see `numeric_column`). Goes to `CanonicalTables.origin`."""
    codes = np.zeros(len(df), dtype=np.int8)
    return pd.DataFrame({"file": pd.Categorical.from_codes(codes, [str(path)]),
                         "line": df.index.to_numpy(dtype=np.int64) + first_line})


def id_strings(s: pd.Series) -> pd.Series:
    """Ids as str, a missing value as "" (not "nan": an empty id is rejected downstream, a "nan" id would not be)."""
    return s.astype("string").fillna("").astype(str)


def numeric_column(
    df: pd.DataFrame, col: str, rule: str, q: Quarantine, path: Path, *, first_line: int = 2
) -> pd.DataFrame:
    """Convert `df[col]` to float; rows whose value is present but not a number are removed and quarantined.

    `first_line` is the file line of data row 0 (2 under a header): `df`'s index must still be the
    0-based data row (filter, never reset, before calling) so that samples carry true line numbers.
    Missing values stay NaN: "no rating" is not a bad row.
    """
    raw = df[col]
    values = pd.to_numeric(raw, errors="coerce")
    bad = (values.isna() & raw.notna()).to_numpy()
    if bad.any():
        _reject(df, bad, rule, q, path, f"{col!r} is not a number", first_line)
        df, values = df[~bad], values[~bad]
    return df.assign(**{col: values.astype("float64")})


def numeric_field(df: pd.DataFrame, col: str, q: Quarantine, path: Path, *, first_line: int = 2) -> pd.Series:
    """`df[col]` as float for a numeric attribute: a present value that is not a number becomes missing and is
    counted as `non_numeric_field` (the row itself is kept: one bad attribute does not remove a user or item)."""
    raw = df[col]
    values = pd.to_numeric(raw, errors="coerce")
    bad = (values.isna() & raw.notna() & (raw.astype("string").str.strip() != "")).to_numpy()
    if bad.any():
        _reject(df, bad, "non_numeric_field", q, path, f"{col!r} is not a number; kept the row, value missing", first_line)
    return values.astype("float64")


def _reject(
    df: pd.DataFrame, mask: np.ndarray, rule: str, q: Quarantine, path: Path, reason: str, first_line: int
) -> None:
    """Count `mask` rows under `rule`; sample them with their file line (`df`'s index is the 0-based data row)."""
    bad = df[mask].head(SAMPLE)
    q.reject_many(
        rule,
        int(mask.sum()),
        path=path,
        reason=reason,
        records=bad.to_dict("records"),
        rows=[int(i) + first_line for i in bad.index],
    )


def seconds_column(
    df: pd.DataFrame, col: str, q: Quarantine, path: Path, *, unit: str = "s", first_line: int = 2
) -> pd.DataFrame:
    """Convert a unix time column (seconds or milliseconds) to int64 seconds; non-numeric or missing -> `bad_timestamp`."""
    if unit not in ("s", "ms"):
        raise DataError(f"timestamp unit {unit!r}: expected 's' or 'ms'", path=path)
    df = numeric_column(df, col, "bad_timestamp", q, path, first_line=first_line)
    missing = df[col].isna().to_numpy()
    if missing.any():
        _reject(df, missing, "bad_timestamp", q, path, f"{col!r} is empty", first_line)
        df = df[~missing]
    t = df[col].to_numpy()
    t = t // 1000 if unit == "ms" else t
    return df.assign(**{col: np.floor(t).astype("int64")})


def split_tokens(col: pd.Series, sep: str | None = None) -> pd.Series:
    """Strings -> python lists of str (a multi-categorical field). `sep=None` splits on whitespace; empty -> []."""
    s = col.astype(object).where(col.notna(), "")
    out = s.str.split(sep) if sep is None else s.map(lambda v: [t for t in v.split(sep) if t])
    return out.astype(object)


def link_kg(triples: pd.DataFrame, links: pd.DataFrame, q: Quarantine, path: Path) -> pd.DataFrame:
    """Join entity triples (`head`, `relation`, `tail`) to items through `links` (`item`, `entity`).

    A triple whose head is an item's entity gives (item, relation, tail); one whose tail is gives
    (item, relation + "_inv", head), so the edge is usable from the item's side either way. Triples
    touching no linked entity cannot reach any item and are counted as unused `kg_triple_without_item`.
    Returns columns `item`, `relation`, `entity` (strings).
    """
    links = links[["item", "entity"]]
    fwd = triples.merge(links, left_on="head", right_on="entity", how="inner")
    fwd = pd.DataFrame({"item": fwd["item"], "relation": fwd["relation"], "entity": fwd["tail"]})
    inv = triples.merge(links, left_on="tail", right_on="entity", how="inner")
    inv = pd.DataFrame({"item": inv["item"], "relation": inv["relation"] + "_inv", "entity": inv["head"]})
    linked = set(links["entity"])
    orphan = ~(triples["head"].isin(linked) | triples["tail"].isin(linked))
    q.note_unused("kg_triple_without_item", int(orphan.sum()), path=path)  # neither end is an item: unused
    return pd.concat([fwd, inv], ignore_index=True).astype(str)
