"""Small helpers shared by the readers: file lookup, numeric columns with quarantine, KG linking.

Row numbers reported in quarantine samples and errors are 1-based *line numbers of the file*
(the header, when there is one, is line 1), so a user can jump straight to the bad line.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
from collections.abc import Iterable
from pathlib import Path

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


def open_bytes(path: Path) -> io.BufferedIOBase:
    """Open a file for binary reading, transparently un-gzipping `*.gz`."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # type: ignore[return-value]


def read_delimited(
    path: Path, sep: str, *, header: bool = True, names: list[str] | None = None, encoding: str = "utf-8"
) -> pd.DataFrame:
    """Read a delimited file as strings (ids stay strings; numeric columns are converted by the caller).

    Quoting is off: the public formats read here never quote, and a stray `"` in a title must not
    swallow the following lines. A multi-character `sep` (MovieLens `::`) is rewritten to a tab first
    so that the fast C parser can be used on million-row files.
    """
    kw = {
        "dtype": str,
        "keep_default_na": False,
        "na_values": [""],
        "quoting": csv.QUOTE_NONE,
        "header": 0 if header else None,
        "names": names,
        "encoding": encoding,
    }
    try:
        if len(sep) > 1:
            with open_bytes(path) as f:
                text = f.read().decode(encoding).replace(sep, "\t")
            kw.pop("encoding")
            return pd.read_csv(io.StringIO(text), sep="\t", **kw)
        return pd.read_csv(path, sep=sep, **kw)
    except pd.errors.ParserError as e:
        raise DataError(f"cannot parse as {sep!r}-separated text: {e}", path=path) from e
    except UnicodeDecodeError as e:
        raise DataError(f"not valid {encoding} at byte {e.start}", path=path) from e


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
    touching no linked entity cannot reach any item and are counted as `kg_triple_without_item`.
    Returns columns `item`, `relation`, `entity` (strings).
    """
    links = links[["item", "entity"]]
    fwd = triples.merge(links, left_on="head", right_on="entity", how="inner")
    fwd = pd.DataFrame({"item": fwd["item"], "relation": fwd["relation"], "entity": fwd["tail"]})
    inv = triples.merge(links, left_on="tail", right_on="entity", how="inner")
    inv = pd.DataFrame({"item": inv["item"], "relation": inv["relation"] + "_inv", "entity": inv["head"]})
    linked = set(links["entity"])
    orphan = ~(triples["head"].isin(linked) | triples["tail"].isin(linked))
    if orphan.any():
        q.reject_many(
            "kg_triple_without_item",
            int(orphan.sum()),
            path=path,
            reason="neither head nor tail is linked to an item",
            records=triples[orphan].head(SAMPLE).to_dict("records"),
        )
    return pd.concat([fwd, inv], ignore_index=True).astype(str)
