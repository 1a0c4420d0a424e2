"""The clean and filter stages on table `t` (see read.py), rule for rule as prepare/plausible.py, prepare/clean.py and
prepare/filter.py apply them in memory: the same rules in the same order, the same counts, the same first samples.

Row order is `rn` (file order) throughout, as the in-memory engine keeps it; each stage replaces `t`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import duckdb

from data_modules.errors import DataError, Quarantine
from data_modules.prepare.config import CleanConfig, FilterConfig
from data_modules.prepare.ooc.db import WHITESPACE, count, quote, records, reject_sql, strip
from data_modules.prepare.plausible import UNITS

log = logging.getLogger("fusionrec.prepare")
WS = {"ws": WHITESPACE}


def columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The data columns of `t` (all but `rn`), in the reader's order."""
    return [r[0] for r in con.execute("DESCRIBE t").fetchall() if r[0] != "rn"]


def _replace(con: duckdb.DuckDBPyConnection, select: str, params: dict[str, Any] | None = None) -> None:
    con.execute(f"CREATE OR REPLACE TABLE t_next AS {select}", params or {})
    con.execute("DROP TABLE t")
    con.execute("ALTER TABLE t_next RENAME TO t")


def trim_ids(con: duckdb.DuckDBPyConnection, q: Quarantine, source: str) -> None:
    """Whitespace around user / item ids stripped; rows counted as `id_whitespace_trimmed` (an id of only
    whitespace is empty: not counted here, the clean step's `missing_id`)."""
    diff = " OR ".join(f"({c} IS NOT NULL AND {c} <> {strip(c)})" for c in ("user", "item"))
    empty = " OR ".join(f"({c} IS NULL OR {strip(c)} = '')" for c in ("user", "item"))
    changed = f"SELECT rn, user, item FROM t WHERE ({diff}) AND NOT ({empty}) ORDER BY rn"
    n = count(con, changed.rpartition(" ORDER BY ")[0], WS)
    if n:
        q.reject_many("id_whitespace_trimmed", n, path=source, reason="interactions: whitespace around an id removed; row kept",
                      records=records(con, changed, ["user", "item"], WS, q.sample_per_rule))
        cols = columns(con)
        sel = ", ".join(f"{strip(quote(c))} AS {quote(c)}" if c in ("user", "item") else quote(c) for c in cols)
        _replace(con, f"SELECT rn, {sel} FROM t", WS)


def check_timestamps(con: duckdb.DuckDBPyConnection, cfg: CleanConfig, q: Quarantine, source: str,
                     file: str) -> dict[str, Any] | None:
    """prepare/plausible.check_timestamps: unit by the median's magnitude, then negative and future rows rejected."""
    cols = columns(con)
    if "timestamp" not in cols or not count(con, "SELECT 1 FROM t"):
        return None
    note = None
    if cfg.detect_timestamp_unit:
        for limit, unit, div in UNITS:
            if _median_above(con, limit):
                median = _numpy_median(con)
                note = {"assumed": unit, "declared": "s", "median": median, "divided_by": div, "files": [file]}
                log.warning("timestamps of %s: median %.4g is not seconds (that would be the year %d): read as %s, "
                            "divided by %d (clean.detect_timestamp_unit: false keeps them)", file, median,
                            1970 + int(median / 31_556_952), unit, div)
                sel = ", ".join(f"CAST(floor(timestamp / {div}::HUGEINT) AS BIGINT) AS timestamp" if c == "timestamp"
                                else quote(c) for c in cols)
                _replace(con, f"SELECT rn, {sel} FROM t")
                break
    data = cols
    if cfg.reject_negative_timestamps:
        if reject_sql(con, q, "negative_timestamp", "SELECT * FROM t WHERE timestamp < 0 ORDER BY rn", data, source,
                      "timestamp before 1970 (negative)", file):
            _replace(con, "SELECT * FROM t WHERE timestamp >= 0")
    if cfg.future_timestamp_slack_s is not None:
        limit = time.time() + cfg.future_timestamp_slack_s
        reason = f"timestamp after the time of preparation ({time.strftime('%Y-%m-%d', time.gmtime(limit))})"
        if reject_sql(con, q, "future_timestamp", f"SELECT * FROM t WHERE timestamp > {limit!r} ORDER BY rn", data,
                      source, reason, file):
            _replace(con, f"SELECT * FROM t WHERE timestamp <= {limit!r}")
    return note


def _median_above(con: duckdb.DuckDBPyConnection, limit: float) -> bool:
    """np.nanmedian(|timestamp|) > limit, decided by counting (one pass, no sort): the middle value is above it, or,
    for an even count straddling it, the mean of the two middle values is."""
    n, above, lo, hi = con.execute(f"SELECT count(*), count_if(abs(timestamp) > {limit!r}), "
                                   f"max(abs(timestamp)) FILTER (abs(timestamp) <= {limit!r}), "
                                   f"min(abs(timestamp)) FILTER (abs(timestamp) > {limit!r}) FROM t").fetchall()[0]
    if n % 2:
        return above >= (n + 1) // 2
    if above != n // 2:
        return above > n // 2
    return (float(lo) + float(hi)) / 2 > limit


def _numpy_median(con: duckdb.DuckDBPyConnection) -> float:
    """np.nanmedian of |timestamp| exactly as numpy computes it: the middle value, or the mean of the two middle ones."""
    n = count(con, "SELECT 1 FROM t")
    mid = con.execute(f"SELECT abs(timestamp) AS a FROM t ORDER BY a LIMIT {2 - n % 2} OFFSET {(n - 1) // 2}").fetchall()
    vals = [float(r[0]) for r in mid]
    return vals[0] if len(vals) == 1 else (vals[0] + vals[1]) / 2  # numpy.mean of two float64


def clean(con: duckdb.DuckDBPyConnection, cfg: CleanConfig, q: Quarantine, source: str, file: str) -> None:
    """prepare/clean.clean_interactions."""
    cols = columns(con)
    missing = " OR ".join(f"({c} IS NULL OR {strip(c)} = '')" for c in ("user", "item"))
    if reject_sql(con, q, "missing_id", f"SELECT * FROM t WHERE {missing} ORDER BY rn", cols, source,
                  "user or item id is empty", file, WS):
        _replace(con, f"SELECT * FROM t WHERE NOT ({missing})", WS)
    dup = 0
    if cfg.drop_exact_duplicates:
        group = ", ".join(quote(c) for c in cols)
        con.execute(f"CREATE OR REPLACE TABLE keep AS SELECT min(rn) AS rn FROM t GROUP BY {group}")
        dup = reject_sql(con, q, "exact_duplicate", "SELECT * FROM t ANTI JOIN keep USING (rn) ORDER BY rn", cols,
                         source, "row identical to an earlier row", file)
    if dup or "rating" in cols:  # one pass: duplicates out and the rating to float32 (as the in-memory engine casts)
        sel = ", ".join("CAST(rating AS FLOAT) AS rating" if c == "rating" else quote(c) for c in cols)
        _replace(con, f"SELECT rn, {sel} FROM t" + (" SEMI JOIN keep USING (rn)" if dup else ""))
    if "rating" in cols:
        if cfg.rating_range is not None:
            lo, hi = cfg.rating_range
            # float32 against the bounds as float32: numpy compares a float32 column with a Python float so
            bad = f"rating IS NOT NULL AND (rating < CAST({lo!r} AS FLOAT) OR rating > CAST({hi!r} AS FLOAT))"
            if reject_sql(con, q, "rating_out_of_range", f"SELECT * FROM t WHERE {bad} ORDER BY rn", cols, source,
                          f"rating outside [{lo}, {hi}]", file):
                _replace(con, f"SELECT * FROM t WHERE NOT ({bad})")
    if "review" in cols:
        empty = f"(review IS NULL OR {strip('review')} = '')"
        q.reject_many("empty_review_text", count(con, f"SELECT 1 FROM t WHERE {empty}", WS), path=source,
                      reason="review text empty; kept the interaction without text")
        sel = ", ".join(f"CASE WHEN {empty} THEN NULL ELSE review END AS review" if c == "review" else quote(c)
                        for c in cols)
        _replace(con, f"SELECT rn, {sel} FROM t", WS)
    _duplicate_pairs(con, cfg.duplicate_rule, q, source, file, cols)


def _duplicate_pairs(con: duckdb.DuckDBPyConnection, rule: str, q: Quarantine, source: str, file: str,
                     cols: list[str]) -> None:
    """Several rows for one (user, item): the first / last by (timestamp, file order) is kept, as the in-memory
    engine's stable sort on (user, item, timestamp) keeps it; mean / max replace its rating by the group's."""
    if rule == "keep":
        return
    order = "timestamp, rn" if "timestamp" in cols else "rn"
    pick = "arg_max" if rule in ("last", "mean", "max") else "arg_min"
    key = f"struct_pack({', '.join(f'k{i} := {c}' for i, c in enumerate(order.split(', ')))})"
    agg = ""
    if rule in ("mean", "max") and "rating" in cols:
        agg = f", CAST({'avg' if rule == 'mean' else 'max'}(rating) AS FLOAT) AS agg_rating"
    con.execute(f"CREATE OR REPLACE TABLE keep AS SELECT {pick}(rn, {key}) AS rn, count(*) AS n{agg} FROM t GROUP BY user, item")
    if not con.execute("SELECT count(*) FROM keep WHERE n > 1").fetchall()[0][0]:
        return
    reject_sql(con, q, "duplicate_pair", f"SELECT * FROM t ANTI JOIN keep USING (rn) ORDER BY user, item, {order}",
               cols, source, f"another row has the same (user, item); rule={rule!r}", file)
    if agg:
        sel = ", ".join("k.agg_rating AS rating" if c == "rating" else f"t.{quote(c)}" for c in cols)
        _replace(con, f"SELECT t.rn, {sel} FROM t JOIN keep k USING (rn)")
    else:
        _replace(con, "SELECT * FROM t SEMI JOIN keep USING (rn)")


def filter_rows(con: duckdb.DuckDBPyConnection, cfg: FilterConfig, q: Quarantine, source: str) -> int:
    """prepare/filter.filter_interactions: rating threshold, then k-core to a fixed point. Returns the rows kept."""
    n0 = count(con, "SELECT 1 FROM t")
    if cfg.rating_threshold is not None:
        if "rating" not in columns(con):
            raise DataError(f"filter.rating_threshold={cfg.rating_threshold} but the data has no rating column", path=source)
        low = f"rating < CAST({cfg.rating_threshold!r} AS FLOAT)"
        q.reject_many("below_rating_threshold", count(con, f"SELECT 1 FROM t WHERE {low}"), path=source,
                      reason=f"rating < {cfg.rating_threshold} (implicit feedback)")
        _replace(con, f"SELECT * FROM t WHERE {low} IS NOT TRUE")
    n = count(con, "SELECT 1 FROM t")
    if cfg.min_user_interactions > 1 or cfg.min_item_interactions > 1:
        before = n
        for _ in range(1000):
            _replace(con, f"""SELECT * FROM t
                SEMI JOIN (SELECT user FROM t GROUP BY user HAVING count(*) >= {cfg.min_user_interactions}) USING (user)
                SEMI JOIN (SELECT item FROM t GROUP BY item HAVING count(*) >= {cfg.min_item_interactions}) USING (item)""")
            m = count(con, "SELECT 1 FROM t")
            if m == n:
                break
            n = m
        q.reject_many("k_core", before - n, path=source,
                      reason=f"user with < {cfg.min_user_interactions} or item with < {cfg.min_item_interactions} interactions")
    if n == 0:
        raise DataError(
            f"no interactions left after filtering ({n0} before; rating_threshold={cfg.rating_threshold}, "
            f"min_user_interactions={cfg.min_user_interactions}, min_item_interactions={cfg.min_item_interactions}): loosen the filter",
            path=source,
        )
    return n
