"""Preparation end to end, keyed by a fingerprint of inputs and options so a re-run with the same ones is free."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_modules import layout
from data_modules.errors import DataError, Quarantine
from data_modules.prepare import append as appending
from data_modules.prepare.clean import clean_interactions
from data_modules.prepare.clock import StageClock
from data_modules.prepare.config import PrepareConfig
from data_modules.prepare.conservation import RowLedger
from data_modules.prepare.features import encode_fields, encode_graphs
from data_modules.prepare.filter import filter_interactions
from data_modules.prepare.lock import build_lock
from data_modules.prepare.negatives import write_negatives
from data_modules.prepare.plausible import PROVENANCE, check_timestamps, clean_graphs, trim_ids
from data_modules.prepare.split import TEST, TRAIN, VALID, split_interactions
from data_modules.prepare.text import render_texts, tokenize
from data_modules.prepare.vectors import align_vectors, read_vector_file
from data_modules.prepare.write import (
    atomic_dir,
    sha256_file,
    write_id_maps,
    write_manifest,
    write_shards,
    write_side,
)
from data_modules.sources import source_files

log = logging.getLogger("fusionrec.prepare")

# Rules that mean a row was malformed; only these count towards clean.max_bad_fraction. Other rules (duplicates,
# k-core, thresholds, edges outside the catalog) are intended cleaning: counted and reported, never an error.
BAD_ROW_RULES = ("bad_json", "invalid_utf8", "missing_field", "non_numeric_rating", "rating_out_of_range", "missing_id",
                 "malformed_row", "broken_quoting", "bad_timestamp", "negative_timestamp", "future_timestamp")


@dataclass
class PrepareResult:
    path: Path
    manifest: dict[str, Any]
    reused: bool


def fingerprint(cfg: PrepareConfig) -> str:
    """sha256 of the options (except where the output goes) and of the content of every input file."""
    h = hashlib.sha256()
    opts = cfg.options()  # the engine is left out: both give the same output
    opts["output"] = {k: v for k, v in opts["output"].items() if k != "dir"}
    if not any(opts["vectors"].values()):
        del opts["vectors"]  # no vectors: the same fingerprint as before the section existed (no rebuild)
    if not opts["negatives"]["protocols"]:
        del opts["negatives"]  # no sampled-evaluation negatives: the fingerprint is the one before they existed
    inputs = []
    if opts.get("append") is None:
        opts.pop("append", None)  # not an append: the fingerprint is the one before appends existed (no rebuild)
    else:
        opts["append"], inputs = appending.fingerprint_part(cfg)  # the parent's fingerprint, not its folder
    h.update(json.dumps(opts, sort_keys=True, default=str).encode())
    for f in [*source_files(cfg.source), *cfg.vectors.files()]:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    for f in inputs:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    h.update(str(layout.LAYOUT_VERSION).encode())
    return h.hexdigest()


def prepare(cfg: PrepareConfig, force: bool = False, lock_timeout: float | None = None) -> PrepareResult:
    """Build the prepared folder `cfg.output.dir`, or reuse it when its fingerprint matches (unless `force`).

    Safe to run from several processes or nodes at once (shared filesystem): one builds under the folder's build
    lock (prepare/lock.py), the others wait for it and reuse what it wrote; `force` then does not build twice."""
    out = Path(cfg.output.dir).expanduser()
    fp = fingerprint(cfg)
    if not force and (done := _up_to_date(out, fp)) is not None:
        return done
    with build_lock(out, timeout=lock_timeout) as waited:
        if (not force or waited) and (done := _up_to_date(out, fp, say_stale=False)) is not None:
            return done  # another process built it while we waited
        try:
            if cfg.engine.kind == "duckdb":
                return _out_of_core()(cfg, out, fp)
            return _build(cfg, out, fp)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            kept = f"the prepared folder {out} is unchanged" if (out / layout.MANIFEST).exists() else "nothing was written"
            raise DataError(f"{e.strerror} while preparing {out}: the temporary folder was removed and {kept}; free "
                            "space and run `fusionrec data prepare` again", path=getattr(e, "filename", None)) from e


def _up_to_date(out: Path, fp: str, say_stale: bool = True) -> PrepareResult | None:
    manifest_path = out / layout.MANIFEST
    if not manifest_path.exists():
        return None
    old = json.loads(manifest_path.read_text(encoding="utf-8"))
    if old.get("fingerprint") != fp:
        if say_stale:
            log.info("inputs or options changed since %s was prepared: rebuilding", out)
        return None
    log.info("prepared dataset at %s is up to date (fingerprint %s): nothing to do", out, fp[:12])
    return PrepareResult(out, old, reused=True)


def _build(cfg: PrepareConfig, out: Path, fp: str) -> PrepareResult:
    """Read, clean, filter, index, split, tokenize and write `out` atomically; the caller holds the build lock."""
    t0 = time.perf_counter()
    clock = StageClock()
    parent = appending.check_parent(cfg, out) if cfg.append is not None else None
    tables = appending.read_tables(cfg)  # `source`, then an append's new files
    tables.validate()
    q: Quarantine = tables.quarantine
    ledger = RowLedger.start(len(tables.interactions), q, tables.rows_read)
    source = str(cfg.source.path)
    if cfg.clean.trim_ids:
        trim_ids(tables, q, source)
    clean_graphs(tables, cfg.clean, q, source)
    raw_summary = tables.summary()
    rows_seen = len(tables.interactions) + sum(q.counts.get(r, 0) for r in BAD_ROW_RULES)
    log.info("read %s: %s", source, raw_summary)
    clock.done("read", rows_seen)
    known = {key: _known_ids(tables, key) for key in ("user", "item")}

    ledger.mark(q)  # what the steps so far counted was about ids and graphs, not interaction rows removed
    inter = _with_provenance(tables)
    inter, timestamp_unit = check_timestamps(inter, cfg.clean, q, source)
    inter = clean_interactions(inter, cfg.clean, q, source)
    inter = inter.drop(columns=[c for c in PROVENANCE if c in inter.columns])
    n_clean = len(inter)
    bad = Quarantine()
    bad.counts.update({r: c for r, c in q.counts.items() if r in BAD_ROW_RULES})
    bad.samples = [s for s in q.samples if s["rule"] in BAD_ROW_RULES]
    bad.check(rows_seen, cfg.clean.max_bad_fraction, source)
    clock.done("clean", n_clean, note=f"{rows_seen - n_clean:,} rejected")
    inter = filter_interactions(inter, cfg.filter, q, source)
    conservation = ledger.close(len(inter), q)
    clock.done("filter", len(inter))

    if parent is None:
        users = pd.Index(pd.unique(inter["user"].astype(str)), name="user")
        items = pd.Index(pd.unique(inter["item"].astype(str)), name="item")
    else:  # an append: the parent's ids keep their index, new ones follow
        users = appending.pinned_index(parent.users, inter["user"], "user")
        items = appending.pinned_index(parent.items, inter["item"], "item")
    inter = inter.assign(user=users.get_indexer(inter["user"].astype(str)).astype(np.int32),
                         item=items.get_indexer(inter["item"].astype(str)).astype(np.int32))
    part = split_interactions(inter, cfg.split)
    if not (part == TRAIN).any():
        raise DataError(f"split {cfg.split.protocol!r} left no training interactions", path=source)
    clock.done("split", len(inter), note=", ".join(f"{k}={v}" for k, v in cfg.split.effective().items()))

    train = inter[part == TRAIN]
    train, hist = _history(train, len(users))
    side: dict[str, np.ndarray] = dict(hist)
    side["item_popularity"] = np.bincount(train["item"].to_numpy(), minlength=len(items)).astype(np.int64)
    schema: dict[str, Any] = {"interactions": [c for c in ("user", "item", "rating", "timestamp", "review", "event") if c in inter.columns]}
    for prefix, table, key, fields, index in (("user", tables.users, "user", tables.user_fields, users),
                                              ("item", tables.items, "item", tables.item_fields, items)):
        enc = encode_fields(table, key, fields, index.astype(str), prefix, q, tables.files.get(f"{prefix}s", source),
                            pinned=parent.schema(f"{prefix}s") if parent is not None else None)
        side.update(enc.arrays)
        schema[f"{prefix}s"] = enc.schema
    graph_arrays, schema["graphs"] = encode_graphs(tables.graphs, users, items, q, source, tables.files,
                                                   known["user"], known["item"])
    side.update(graph_arrays)
    clock.done("index", len(users) + len(items), "ids", note="users, items, fields, graphs")
    if vectors := _vectors(cfg, {"user": users, "item": items}, known, q, side):
        schema["vectors"] = vectors
        clock.done("vectors", sum(v["rows"] for v in vectors.values()), "rows")
    schema["text"] = _text(cfg, tables, inter, part, users, items, side)
    if schema["text"]:
        clock.done("tokenize", len(items) + (len(users) if "user_text_offsets" in side else 0), "texts")

    stats = {
        "raw": raw_summary,
        "rows_read": tables.rows_read,
        "after_clean": n_clean,
        "after_filter": len(inter),
        "users": len(users),
        "items": len(items),
        "density": len(inter) / (len(users) * len(items)),
        "rating_mean": _mean(inter["rating"]) if "rating" in inter.columns else None,
        # the rating head's starting global bias: training rows only (valid / test ratings stay unseen)
        "train_rating_mean": _nan_none(_mean(inter["rating"][part == TRAIN])) if "rating" in inter.columns else None,
        "items_without_training_interactions": int((side["item_popularity"] == 0).sum()),
        "users_without_training_interactions": int((np.diff(side["history_offsets"]) == 0).sum()),
        "timestamp_unit": timestamp_unit,  # None: seconds as the format says; else what was assumed instead
    }
    split_sizes = {name: int((part == code).sum()) for name, code in (("train", TRAIN), ("valid", VALID), ("test", TEST))}
    with atomic_dir(out) as tmp:
        shards = {"train": write_shards(train, tmp / "train", tmp, cfg.output.shard_rows, cfg.output.block_rows)}
        for name, code in (("valid", VALID), ("test", TEST)):
            ev = inter[part == code].sort_values(["user", "item"], kind="stable")
            shards[name] = write_shards(ev, tmp / name, tmp, cfg.output.shard_rows, cfg.output.block_rows)
        negatives = write_negatives(cfg.negatives, inter, part, len(items), tmp, {"valid": VALID, "test": TEST})
        side_info = write_side(side, tmp)
        write_id_maps(users, items, tmp)
        q.write(tmp / layout.QUARANTINE)
        manifest = {
            "layout_version": layout.LAYOUT_VERSION,
            "name": tables.name,
            "fingerprint": fp,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            # the options as given, but the split as used (a leave-one-out split records no ratios, seed or random order)
            "config": {**cfg.options(), "split": cfg.split.effective()},
            "counts": {"users": len(users), "items": len(items), **split_sizes},
            "split": {**cfg.split.effective(), "sizes": split_sizes,
                      "eval_users": {name: int(inter.loc[part == code, "user"].nunique()) for name, code in (("valid", VALID), ("test", TEST))}},
            "stats": stats,
            "quarantine": dict(q.counts.most_common()),
            "conservation": conservation,  # entering = kept + quarantined + merged + filtered (checked)
            "unused": {rule: {"rows": n, "file": q.unused_files.get(rule)} for rule, n in q.unused.most_common()},
            "schema": schema,
            "shards": shards,
            "side": side_info,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if parent is not None:  # the chain: parent, ancestors' fingerprints (fit --init_from accepts them)
            manifest["lineage"] = parent.lineage(len(users), len(items), cfg.append.paths, inter, part)
        if negatives:  # seeded negatives for sampled evaluation (prepare/negatives.py)
            manifest["negatives"] = negatives
        write_manifest(manifest, tmp)
    clock.done("write", len(inter))
    if q.counts:
        log.info("rejected or flagged: %s (sample: %s)", ", ".join(f"{k}={v}" for k, v in q.counts.most_common()),
                 out / layout.QUARANTINE)
    if q.unused:
        log.info("unused (harmless, not rejected): %s", ", ".join(f"{k}={v}" for k, v in q.unused.most_common()))
    log.info("prepared %s in %.1fs -> %s", tables.name, manifest["seconds"], out)
    return PrepareResult(out, manifest, reused=False)


def _known_ids(tables: Any, key: str) -> pd.Index:
    """Every `key` id the input mentions (raw interactions and the side table), to tell an edge to an unknown id
    from one to an id that cleaning or filtering removed."""
    ids = [tables.interactions[key].astype(str)]
    side = getattr(tables, f"{key}s")
    if side is not None:
        ids.append(side[key].astype(str))
    return pd.Index(pd.unique(pd.concat(ids, ignore_index=True)))


def _with_provenance(tables: Any) -> pd.DataFrame:
    """The interactions with `_file` / `_line` columns from the reader's `origin`, for the clean step's samples."""
    inter, where = tables.interactions, tables.origin
    if where is None or len(where) != len(inter):
        return inter
    return inter.assign(_file=where["file"].to_numpy(), _line=where["line"].to_numpy())


def _history(train: pd.DataFrame, n_users: int) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Each user's training items in time order (CSR over all `n_users`: a user without training rows, e.g. a
    cold_user split's held-out one, has an empty history) and each row's position in it (`seq_pos`).

    Rows are returned in a seeded random order, so every shard block is a fair sample for the streaming shuffle.
    """
    keys = ["user", "timestamp"] if "timestamp" in train.columns else ["user"]
    ordered = train.sort_values(keys, kind="stable")
    users = ordered["user"].to_numpy()
    counts = np.bincount(users, minlength=n_users)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    seq_pos = np.arange(len(ordered)) - offsets[users]
    ordered = ordered.assign(seq_pos=seq_pos.astype(np.int32))
    shuffled = ordered.sample(frac=1.0, random_state=0)
    return shuffled, {"history_offsets": offsets, "history_items": ordered["item"].to_numpy().astype(np.int32)}


def _text(cfg: PrepareConfig, tables: Any, inter: pd.DataFrame, part: np.ndarray, users: pd.Index, items: pd.Index,
          side: dict[str, np.ndarray]) -> dict[str, Any]:
    """Render and tokenize item (and user) text once; only training reviews feed user text (no leakage)."""
    if not cfg.text.tokenizer:
        return {}
    info: dict[str, Any] = {}
    item_texts = render_texts(tables.items, "item", tables.item_fields, items.astype(str), cfg.text.item_template)
    offs, ids, info["item"] = tokenize(item_texts, cfg.text.tokenizer, cfg.text.max_length, cfg.text.trust_remote_code)
    side["item_text_offsets"], side["item_text_ids"] = offs, ids
    info["item"]["example"] = item_texts[0][:200] if item_texts else ""
    if cfg.text.user_template or cfg.text.user_reviews:
        extra = None
        if cfg.text.user_reviews and "review" in inter.columns:
            tr = inter[(part == TRAIN) & inter["review"].notna()]
            if "timestamp" in tr.columns:
                tr = tr.sort_values(["user", "timestamp"], kind="stable")
            recent = tr.groupby("user", sort=False)["review"].apply(lambda s: list(s.tail(cfg.text.user_reviews)))
            extra = {int(u): [str(r) for r in rs] for u, rs in recent.items()}
        user_texts = render_texts(tables.users, "user", tables.user_fields, users.astype(str), cfg.text.user_template, extra)
        offs, ids, info["user"] = tokenize(user_texts, cfg.text.tokenizer, cfg.text.max_length, cfg.text.trust_remote_code)
        side["user_text_offsets"], side["user_text_ids"] = offs, ids
        info["user"]["example"] = user_texts[0][:200] if user_texts else ""
    return info


def _vectors(cfg: PrepareConfig, catalogs: dict[str, pd.Index], known: dict[str, pd.Index], q: Quarantine,
             side: dict[str, np.ndarray]) -> dict[str, Any]:
    """Precomputed user / item vectors aligned with the dense ids (prepare/vectors.py); their counts per entity."""
    info = {}
    for ent in ("user", "item"):
        vcfg = getattr(cfg.vectors, ent)
        if vcfg is not None:
            arrays, info[ent] = align_vectors(read_vector_file(vcfg, cfg.clean.trim_ids), ent, catalogs[ent], known[ent], q)
            side.update(arrays)
    return info


def _out_of_core() -> Any:
    """The DuckDB engine's build (data_modules/prepare/ooc/), or a DataError saying how to install it."""
    try:
        from data_modules.prepare.ooc.build import build
    except ModuleNotFoundError as e:
        if e.name != "duckdb":
            raise
        raise DataError("engine.kind duckdb needs the duckdb package: pip install 'fusionrec[outofcore]'") from e
    return build


def _mean(ratings: pd.Series) -> float:
    """Mean of the present ratings as float64 sum / count (NaN when none): exact whatever the row order or
    partitioning for ratings on a grid (halves, integers), so the out-of-core engine gives the same value."""
    r = ratings.to_numpy(dtype=np.float64)
    r = r[~np.isnan(r)]
    return float(r.sum()) / len(r) if len(r) else float("nan")


def _nan_none(x: float) -> float | None:
    return None if x != x else float(x)  # NaN (no rated training row) -> None
