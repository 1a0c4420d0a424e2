"""`_build` of prepare/pipeline.py on DuckDB: read -> clean -> filter -> index -> split -> write with the interaction
table out of core (a database file and spill files in `engine.temp_dir`, at most `engine.memory_limit_gb` of RAM for
the engine). Side tables (users, items, graphs: one row per entity or edge) and the per-row arrays the output holds
anyway (history) are handled as in memory. The prepared folder is the in-memory engine's, bit for bit.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_modules import layout
from data_modules.errors import DataError, Quarantine
from data_modules.prepare import pipeline as mem
from data_modules.prepare.clock import StageClock
from data_modules.prepare.config import PrepareConfig
from data_modules.prepare.conservation import RowLedger
from data_modules.prepare.features import encode_fields, encode_graphs
from data_modules.prepare.ooc import clean as steps
from data_modules.prepare.ooc.db import CHUNK, connect, count, fetch_column, load_columns, ordered
from data_modules.prepare.ooc.read import read_inter
from data_modules.prepare.ooc.split import index, split
from data_modules.prepare.plausible import clean_graphs, trim_ids
from data_modules.prepare.split import TEST, TRAIN, VALID
from data_modules.prepare.write import (
    atomic_dir,
    write_id_maps,
    write_manifest,
    write_shard_parts,
    write_side,
)
from data_modules.readers.recbole import read_recbole
from data_modules.sources import resolve_path

log = logging.getLogger("fusionrec.prepare")


def build(cfg: PrepareConfig, out: Path, fp: str) -> mem.PrepareResult:
    """Build `out` (the caller holds its build lock); the DuckDB folder is removed afterwards, also on errors."""
    _supported(cfg)
    scratch = Path(cfg.engine.temp_dir or out.parent).expanduser()
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.duckdb-", dir=scratch))
    try:
        con = connect(work, cfg.engine.memory_limit_gb, cfg.engine.threads)
        try:
            return _build(con, cfg, out, fp)
        finally:
            con.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _supported(cfg: PrepareConfig) -> None:
    why = None
    if cfg.source.format != "recbole":
        why = f"source.format={cfg.source.format!r} (it reads RecBole atomic files)"
    elif cfg.text.user_reviews:
        why = "text.user_reviews (user text from reviews)"
    elif any((cfg.options().get("vectors") or {}).values()):
        why = "vectors"
    elif (cfg.options().get("negatives") or {}).get("protocols"):
        why = "negatives (sampled-evaluation negatives)"
    if why:
        raise DataError(f"engine.kind duckdb does not support {why}; use engine.kind memory", path=cfg.source.path)


def _build(con: Any, cfg: PrepareConfig, out: Path, fp: str) -> mem.PrepareResult:
    t0 = time.perf_counter()
    clock = StageClock()
    folder = resolve_path(cfg.source)
    name = cfg.source.name or folder.name
    inter_path = folder / f"{name}.inter"
    if not inter_path.is_file():
        raise DataError(f"RecBole interactions file missing (looked for {name}.inter)", path=inter_path)
    q = Quarantine()
    n_read, rows = read_inter(con, inter_path, q)
    tables = read_recbole(folder, name=name, interactions=False, **cfg.source.options)
    q.merge(tables.quarantine)
    tables.quarantine = q
    tables.rows_read = {inter_path.name: rows, **tables.rows_read}
    tables.validate()
    ledger = RowLedger.start(n_read, q, tables.rows_read)
    source, file = str(cfg.source.path), str(inter_path)
    if cfg.clean.trim_ids:
        steps.trim_ids(con, q, source)
        trim_ids(tables, q, source)  # side tables and graphs (the empty interactions table counts nothing)
    clean_graphs(tables, cfg.clean, q, source)
    distinct = {key: _distinct(con, key) for key in ("user", "item")}
    raw_summary = {"interactions": n_read, "users": len(distinct["user"]), "items": len(distinct["item"]),
                   **{k: v for k, v in tables.summary().items() if k not in ("interactions", "users", "items")}}
    rows_seen = n_read + sum(q.counts.get(r, 0) for r in mem.BAD_ROW_RULES)
    log.info("read %s: %s", source, raw_summary)
    clock.done("read", rows_seen)
    known = {key: _known(distinct[key], tables, key) for key in ("user", "item")}
    del distinct

    ledger.mark(q)
    timestamp_unit = steps.check_timestamps(con, cfg.clean, q, source, file)
    steps.clean(con, cfg.clean, q, source, file)
    n_clean = count(con, "SELECT 1 FROM t")
    bad = Quarantine()
    bad.counts.update({r: c for r, c in q.counts.items() if r in mem.BAD_ROW_RULES})
    bad.samples = [s for s in q.samples if s["rule"] in mem.BAD_ROW_RULES]
    bad.check(rows_seen, cfg.clean.max_bad_fraction, source)
    clock.done("clean", n_clean, note=f"{rows_seen - n_clean:,} rejected")
    n = steps.filter_rows(con, cfg.filter, q, source)
    conservation = ledger.close(n, q)
    clock.done("filter", n)

    cols = steps.columns(con)
    users, items = index(con, cols)
    split(con, cfg.split, cols, len(users), len(items))
    sizes = dict(con.execute("SELECT part, count(*) FROM x GROUP BY part").fetchall())
    if not sizes.get(TRAIN):
        raise DataError(f"split {cfg.split.protocol!r} left no training interactions", path=source)
    clock.done("split", n, note=", ".join(f"{k}={v}" for k, v in cfg.split.effective().items()))

    side = _history(con, cols, len(users), len(items), sizes.get(TRAIN, 0))
    schema: dict[str, Any] = {"interactions": [c for c in ("user", "item", "rating", "timestamp", "review", "event") if c in cols]}
    for prefix, table, key, fields, idx in (("user", tables.users, "user", tables.user_fields, users),
                                            ("item", tables.items, "item", tables.item_fields, items)):
        enc = encode_fields(table, key, fields, idx.astype(str), prefix, q, tables.files.get(f"{prefix}s", source))
        side.update(enc.arrays)
        schema[f"{prefix}s"] = enc.schema
    graph_arrays, schema["graphs"] = encode_graphs(tables.graphs, users, items, q, source, tables.files,
                                                   known["user"], known["item"])
    side.update(graph_arrays)
    clock.done("index", len(users) + len(items), "ids", note="users, items, fields, graphs")
    schema["text"] = mem._text(cfg, tables, pd.DataFrame(), np.zeros(0, np.int8), users, items, side)
    if schema["text"]:
        clock.done("tokenize", len(items) + (len(users) if "user_text_offsets" in side else 0), "texts")

    rated = "rating" in cols
    stats = {
        "raw": raw_summary,
        "rows_read": tables.rows_read,
        "after_clean": n_clean,
        "after_filter": n,
        "users": len(users),
        "items": len(items),
        "density": n / (len(users) * len(items)),
        "rating_mean": _mean(con, "") if rated else None,
        "train_rating_mean": mem._nan_none(_mean(con, f"WHERE part = {TRAIN}")) if rated else None,
        "items_without_training_interactions": int((side["item_popularity"] == 0).sum()),
        "users_without_training_interactions": int((np.diff(side["history_offsets"]) == 0).sum()),
        "timestamp_unit": timestamp_unit,
    }
    split_sizes = {name: int(sizes.get(code, 0)) for name, code in (("train", TRAIN), ("valid", VALID), ("test", TEST))}
    eval_users = dict(con.execute("SELECT part, count(DISTINCT user) FROM x GROUP BY part").fetchall())
    base = [c for c in ("user", "item", "rating", "timestamp") if c in cols]
    with atomic_dir(out) as tmp:
        shards = {"train": write_shard_parts(_frames(con, f"SELECT {', '.join(base)}, seq_pos FROM train ORDER BY o",
                                                     cfg.output.shard_rows, [*base, "seq_pos"]),
                                             tmp / "train", tmp, cfg.output.block_rows)}
        for part_name, code in (("valid", VALID), ("test", TEST)):
            sql = f"SELECT {', '.join(base)} FROM x WHERE part = {code} ORDER BY user, item, pos"
            shards[part_name] = write_shard_parts(_frames(con, sql, cfg.output.shard_rows, base), tmp / part_name, tmp,
                                                  cfg.output.block_rows)
        side_info = write_side(side, tmp)
        write_id_maps(users, items, tmp)
        q.write(tmp / layout.QUARANTINE)
        manifest = {
            "layout_version": layout.LAYOUT_VERSION,
            "name": tables.name,
            "fingerprint": fp,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": {**cfg.options(), "split": cfg.split.effective()},
            "counts": {"users": len(users), "items": len(items), **split_sizes},
            "split": {**cfg.split.effective(), "sizes": split_sizes,
                      "eval_users": {nm: int(eval_users.get(code, 0)) for nm, code in (("valid", VALID), ("test", TEST))}},
            "stats": stats,
            "quarantine": dict(q.counts.most_common()),
            "conservation": conservation,
            "unused": {rule: {"rows": k, "file": q.unused_files.get(rule)} for rule, k in q.unused.most_common()},
            "schema": schema,
            "shards": shards,
            "side": side_info,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        write_manifest(manifest, tmp)
    clock.done("write", n)
    if q.counts:
        log.info("rejected or flagged: %s (sample: %s)", ", ".join(f"{k}={v}" for k, v in q.counts.most_common()),
                 out / layout.QUARANTINE)
    if q.unused:
        log.info("unused (harmless, not rejected): %s", ", ".join(f"{k}={v}" for k, v in q.unused.most_common()))
    log.info("prepared %s in %.1fs -> %s (engine duckdb, %.1f GB budget)", tables.name, manifest["seconds"], out,
             cfg.engine.memory_limit_gb)
    return mem.PrepareResult(out, manifest, reused=False)


def _distinct(con: Any, key: str) -> list[str]:
    """The distinct present `key` ids of the raw interactions (after trimming): the summary counts them (as
    nunique does, without missing), and `_known` adds the side table's."""
    return con.sql(f"SELECT DISTINCT {key} FROM t WHERE {key} IS NOT NULL").to_arrow_table().column(0).to_pylist()


def _known(ids: list[str], tables: Any, key: str) -> pd.Index:
    """pipeline._known_ids: every `key` id the raw interactions (after trimming) or the side table mention."""
    side = getattr(tables, f"{key}s")
    more = side[key].astype(str).tolist() if side is not None else []
    return pd.Index(pd.unique(pd.Series([*ids, *more], dtype=object)))


def _history(con: Any, cols: list[str], n_users: int, n_items: int, n_train: int) -> dict[str, np.ndarray]:
    """pipeline._history: table `train` with `seq_pos` (rank in the user's time order) and `o`, the row's place in
    the shuffled shards (pandas' sample(frac=1, random_state=0) is RandomState(0).permutation); the CSR arrays."""
    by = "timestamp, pos" if "timestamp" in cols else "pos"
    con.execute(f"""CREATE OR REPLACE TABLE train AS SELECT *, row_number() OVER (ORDER BY user, {by}) - 1 AS k,
        CAST(row_number() OVER (PARTITION BY user ORDER BY {by}) - 1 AS INTEGER) AS seq_pos
        FROM x WHERE part = {TRAIN}""")
    perm = np.random.RandomState(0).permutation(n_train)
    place = np.empty(n_train, dtype=np.int32 if n_train < 2**31 else np.int64)
    place[perm] = np.arange(n_train, dtype=place.dtype)
    del perm
    load_columns(con, "shuffle", "o", place, key="k")
    del place
    con.execute("CREATE OR REPLACE TABLE train_next AS SELECT train.*, shuffle.o FROM train JOIN shuffle USING (k)")
    con.execute("DROP TABLE train; DROP TABLE shuffle; ALTER TABLE train_next RENAME TO train")
    counts = np.zeros(n_users, dtype=np.int64)
    for u, c in con.execute("SELECT user, count(*) FROM train GROUP BY user").fetchall():
        counts[u] = c
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    pop = np.zeros(n_items, dtype=np.int64)
    for i, c in con.execute("SELECT item, count(*) FROM train GROUP BY item").fetchall():
        pop[i] = c
    items = fetch_column(con, "SELECT item FROM train ORDER BY k", n_train, np.int32)
    return {"history_offsets": offsets, "history_items": items, "item_popularity": pop}


def _frames(con: Any, sql: str, shard_rows: int, columns: list[str]) -> Iterator[pd.DataFrame]:
    """The rows of `sql` as frames of `shard_rows` (at least one, maybe empty: the in-memory engine writes an empty
    shard for an empty split), read in record batches."""
    buf, have, any_out = [], 0, False
    ordered(con)
    for batch in con.sql(sql).to_arrow_reader(min(CHUNK, shard_rows)):
        buf.append(batch)
        have += batch.num_rows
        while have >= shard_rows:
            frame, buf, have = _take(buf, shard_rows, columns)
            any_out = True
            yield frame
    if have or not any_out:
        yield _concat(buf, columns)


def _take(buf: list, k: int, columns: list[str]) -> tuple[pd.DataFrame, list, int]:
    import pyarrow as pa

    table = pa.Table.from_batches(buf) if buf else None
    head, rest = table.slice(0, k), table.slice(k)
    return _to_frame(head, columns), rest.to_batches(), rest.num_rows


def _concat(buf: list, columns: list[str]) -> pd.DataFrame:
    import pyarrow as pa

    if not buf:
        return pd.DataFrame({c: np.zeros(0, dtype=_DTYPES[c]) for c in columns})
    return _to_frame(pa.Table.from_batches(buf), columns)


_DTYPES = {"user": np.int32, "item": np.int32, "rating": np.float32, "timestamp": np.int64, "seq_pos": np.int32}


def _to_frame(table: Any, columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: table.column(c).to_numpy(zero_copy_only=False).astype(_DTYPES[c], copy=False) for c in columns})


def _mean(con: Any, where: str) -> float:
    """Mean rating over float64 (NaN when none): sum / count, the definition both engines use (pipeline._mean)."""
    s, c = con.execute(f"SELECT sum(CAST(rating AS DOUBLE)), count(rating) FROM x {where}").fetchall()[0]
    return float(s) / c if c else float("nan")
