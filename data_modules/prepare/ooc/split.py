"""Index and split on DuckDB, the in-memory definitions exactly (prepare/pipeline.py and prepare/split.py):

- dense ids in order of first appearance in the filtered table (file order), so independent of partitioning;
- `pos`, each kept row's 0-based position in that order: the in-memory row index the random protocols permute
  (the permutation itself is drawn with the same generator and seed, one int per row, then joined as a column);
- per-user cuts rank each user's rows by (permutation rank) or (timestamp, pos), as the stable sorts do.

Table `x` afterwards: pos, user, item (INTEGER dense ids), rating, timestamp, part (TINYINT 0/1/2).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from data_modules.errors import DataError
from data_modules.prepare.config import SplitConfig
from data_modules.prepare.ooc.db import count, load_columns
from data_modules.prepare.split import TEST, TRAIN, VALID, recbole_split_counts

KEPT = ("rating", "timestamp")  # columns the shards and statistics read, beside user and item


def index(con, cols: list[str]) -> tuple[pd.Index, pd.Index]:
    """Tables umap / imap (raw id -> dense id by first appearance) and `x`; return the id Indexes in dense order."""
    out = []
    for key, table in (("user", "umap"), ("item", "imap")):
        con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT {key} AS id, "
                    f"CAST(row_number() OVER (ORDER BY min(rn)) - 1 AS INTEGER) AS code FROM t GROUP BY {key}")
        ids = con.sql(f"SELECT id FROM {table} ORDER BY code").to_arrow_table().column(0).to_pylist()
        out.append(pd.Index(ids, name=key))
    extra = "".join(f", t.{c}" for c in KEPT if c in cols)
    con.execute(f"""CREATE OR REPLACE TABLE x AS SELECT row_number() OVER (ORDER BY t.rn) - 1 AS pos,
        u.code AS user, i.code AS item{extra} FROM t JOIN umap u ON t.user = u.id JOIN imap i ON t.item = i.id""")
    con.execute("DROP TABLE t")
    return out[0], out[1]


def split(con, cfg: SplitConfig, cols: list[str], n_users: int, n_items: int) -> None:
    """Add `part` to `x` by `cfg.protocol` (presplit needs a reader's split column: not read by this engine)."""
    n = count(con, "SELECT 1 FROM x")
    p = cfg.protocol
    if p in ("ratio", "leave_one_out", "temporal") and (p != "ratio" or cfg.order == "time") and "timestamp" not in cols:
        raise DataError("this split needs a `timestamp` column, and the data has none", field="timestamp")
    if p == "recbole" or (p == "ratio" and cfg.order == "random"):
        if p == "recbole":
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed)).numpy()
        else:
            perm = np.random.default_rng(cfg.seed).permutation(n)
        rank = np.empty(n, dtype=np.int32 if n < 2**31 else np.int64)  # half the memory below 2^31 rows
        rank[perm] = np.arange(n, dtype=rank.dtype)
        del perm
        load_columns(con, "ord", "r", rank)
        del rank
        _per_user_ratio(con, "JOIN ord USING (pos)", "r", cfg.ratios)
    elif p == "ratio":
        _per_user_ratio(con, "", "timestamp, pos", cfg.ratios)
    elif p == "leave_one_out":
        _with_part(con, f"""SELECT x.*, CAST(CASE WHEN k = 0 AND c >= 2 THEN {TEST} WHEN k = 1 AND c >= 3 THEN {VALID}
            ELSE {TRAIN} END AS TINYINT) AS part FROM (SELECT *, row_number() OVER w - 1 AS k, count(*) OVER w0 AS c
            FROM x WINDOW w AS (PARTITION BY user ORDER BY timestamp DESC, pos DESC), w0 AS (PARTITION BY user)) x""")
    elif p == "temporal":
        a, b = int(round(cfg.ratios[0] * n)), int(round((cfg.ratios[0] + cfg.ratios[1]) * n))
        _with_part(con, f"""SELECT x.*, CAST(CASE WHEN r < {a} THEN {TRAIN} WHEN r < {b} THEN {VALID} ELSE {TEST} END
            AS TINYINT) AS part FROM (SELECT *, row_number() OVER (ORDER BY timestamp, pos) - 1 AS r FROM x) x""")
    elif p in ("cold_item", "cold_user"):
        what, n_ent, key = ("items", n_items, "item") if p == "cold_item" else ("users", n_users, "user")
        perm = np.random.default_rng(cfg.seed).permutation(np.arange(n_ent))  # every dense id occurs: np.unique = arange
        n_valid, n_test = int(round(cfg.ratios[1] * n_ent)), int(round(cfg.ratios[2] * n_ent))
        if n_valid + n_test >= n_ent:
            raise DataError(f"{p} split leaves no training {what} ({n_ent} {what}, ratios {cfg.ratios})")
        role = np.zeros(n_ent, dtype=np.int8)
        role[perm[:n_valid]], role[perm[n_valid:n_valid + n_test]] = VALID, TEST
        load_columns(con, "role", "part", role, key=key)
        _with_part(con, f"SELECT x.*, role.part FROM x JOIN role ON x.{key} = role.{key}")
    else:
        raise DataError(f"split.protocol={p!r} is not supported by engine duckdb (the RecBole .inter reader gives no "
                        "split column); use engine.kind memory")


def _per_user_ratio(con, join: str, order: str, ratios: tuple[float, ...]) -> None:
    """prepare/split._per_user_ratio: each user's rows ranked by `order`, cut by RecBole's rounding of its count."""
    totals = [r[0] for r in con.execute("SELECT DISTINCT c FROM (SELECT count(*) AS c FROM x GROUP BY user)").fetchall()]
    cuts = np.array([[t, *recbole_split_counts(int(t), ratios)[:2]] for t in sorted(totals)], dtype=np.int64)
    con.register("cuts_df", pd.DataFrame(cuts, columns=["c", "n_train", "n_valid"]))
    _with_part(con, f"""SELECT x.* EXCLUDE (k, c), CAST(CASE WHEN k < n_train THEN {TRAIN}
        WHEN k < n_train + n_valid THEN {VALID} ELSE {TEST} END AS TINYINT) AS part
        FROM (SELECT x.*, row_number() OVER w - 1 AS k, count(*) OVER (PARTITION BY x.user) AS c FROM x {join}
              WINDOW w AS (PARTITION BY x.user ORDER BY {order})) x JOIN cuts_df USING (c)""")
    con.unregister("cuts_df")


def _with_part(con, select: str) -> None:
    con.execute(f"CREATE OR REPLACE TABLE x_next AS SELECT pos, user, item, * EXCLUDE (pos, user, item) FROM ({select})")
    for extra in ("r", "k", "c"):
        if extra in [r[0] for r in con.execute("DESCRIBE x_next").fetchall()]:
            con.execute(f"ALTER TABLE x_next DROP COLUMN {extra}")
    con.execute("DROP TABLE x")
    con.execute("ALTER TABLE x_next RENAME TO x")
    for t in ("ord", "role"):
        con.execute(f"DROP TABLE IF EXISTS {t}")
