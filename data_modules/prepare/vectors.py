"""Precomputed vectors (item / user embeddings made elsewhere) aligned with the prepared dataset's dense ids.

A vectors file is keyed by the raw id the interactions use: a `.npy` matrix (N, D) with an id list (its rows, in
order), or a parquet file with an id column and a list vector column. It is read memory-mapped and checked whole
(one dimension, finite values, unique non-empty ids: each a `DataError` naming the file and the row), then its rows
are gathered into `<entity>_vectors` (n, D) float32, row = dense id, zeros where an entity has no vector, and
`<entity>_vector_mask` (n,) bool, True = has one (the model declares the others missing).

Why a copy aligned with the dense ids rather than an index into the original file: the prepared folder then stays
self-contained and checksummed like every other side array, and later changes to the original cannot slip in.

Every id is accounted for in the manifest (`schema.vectors.<entity>`): `matched` + `missing` = entities of the
catalog; `rows` = `matched` + `not_in_catalog` (ids the input has but cleaning or filtering removed: reported as
unused) + `unknown` (ids the input never mentions: counted and sampled to the quarantine, never dropped silently).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data_modules.errors import DataError, Quarantine
from data_modules.prepare.config import VectorFileConfig

log = logging.getLogger("fusionrec.prepare")
CHUNK_ROWS = 65_536  # rows checked at a time, so a memory-mapped file is never read into memory whole


@dataclass
class VectorFile:
    """A checked vectors file: `ids` (N,) raw ids as str (file row order), `matrix` (N, D) floats (may be a memmap)."""

    path: Path
    ids: pd.Index
    matrix: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])


def read_vector_file(cfg: VectorFileConfig, trim_ids: bool = True) -> VectorFile:
    """Read and check `cfg`'s file; `trim_ids` strips whitespace around ids, as preparation does for every id."""
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise DataError("vectors file does not exist", path=path)
    if path.suffix.lower() == ".npy":
        matrix, ids = _read_npy(path, Path(str(cfg.ids)).expanduser())
    else:
        matrix, ids = _read_parquet(path, cfg.id_column, cfg.vector_column)
    if cfg.dim is not None and matrix.shape[1] != cfg.dim:
        raise DataError(f"vectors have {matrix.shape[1]} dimensions, expected dim={cfg.dim}", path=path, row=0)
    _check_finite(matrix, path)
    return VectorFile(path, _check_ids(ids, path, trim_ids), matrix)


def _read_npy(path: Path, ids_path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise DataError(f"not a readable .npy matrix ({e})", path=path) from e
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise DataError(f"expected a 2-D matrix (rows, dim), got shape {matrix.shape}", path=path)
    if not np.issubdtype(matrix.dtype, np.floating):
        raise DataError(f"expected floating point vectors, got dtype {matrix.dtype}", path=path)
    if not ids_path.is_file():
        raise DataError(f"the id list of {path.name} does not exist", path=ids_path)
    if ids_path.suffix.lower() == ".npy":
        ids = np.load(ids_path, allow_pickle=False)
        if ids.ndim != 1:
            raise DataError(f"expected a 1-D array of ids, got shape {ids.shape}", path=ids_path)
    else:
        ids = np.array(ids_path.read_text(encoding="utf-8").splitlines(), dtype=object)
    if len(ids) != len(matrix):
        raise DataError(f"{len(ids)} ids for {len(matrix)} vector rows of {path}", path=ids_path)
    return matrix, ids


def _read_parquet(path: Path, id_column: str, vector_column: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        table = pq.read_table(path, memory_map=True)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"not a readable parquet file ({e})", path=path) from e
    for col in (id_column, vector_column):
        if col not in table.column_names:
            raise DataError(f"no column {col!r} (columns: {table.column_names})", path=path, field=col)
    vec = table.column(vector_column).combine_chunks()
    if not (pa.types.is_list(vec.type) or pa.types.is_large_list(vec.type) or pa.types.is_fixed_size_list(vec.type)):
        raise DataError(f"expected a list of floats per row, got {vec.type}", path=path, field=vector_column)
    if vec.null_count:
        row = int(np.flatnonzero(vec.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError("null vector", path=path, row=row, field=vector_column)
    if len(vec) == 0:
        raise DataError("no rows", path=path)
    lengths = np.diff(np.asarray(vec.offsets)) if not pa.types.is_fixed_size_list(vec.type) else None
    if lengths is not None and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise DataError(f"vector of {lengths[row]} values, row 0 has {lengths[0]}", path=path, row=row, field=vector_column)
    values = vec.flatten()
    if not pa.types.is_floating(values.type) and not pa.types.is_integer(values.type):
        raise DataError(f"expected numeric vector values, got {values.type}", path=path, field=vector_column)
    if values.null_count:
        at = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError("null value inside a vector", path=path, row=at // (len(values) // len(vec)), field=vector_column)
    dim = len(values) // len(vec)
    if dim == 0:
        raise DataError("empty vectors", path=path, row=0, field=vector_column)
    matrix = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(vec), dim)
    ids = table.column(id_column).to_numpy(zero_copy_only=False)
    return matrix, ids


def _check_finite(matrix: np.ndarray, path: Path) -> None:
    for start in range(0, len(matrix), CHUNK_ROWS):
        ok = np.isfinite(np.asarray(matrix[start:start + CHUNK_ROWS])).all(axis=1)
        if not ok.all():
            raise DataError("vector holds NaN or infinity", path=path, row=start + int(np.flatnonzero(~ok)[0]))


def _check_ids(raw: np.ndarray, path: Path, trim: bool) -> pd.Index:
    s = pd.Series(raw, dtype=object)
    nulls = s.isna().to_numpy()
    ids = s.astype(str)
    if trim:
        ids = ids.str.strip()
    empty = nulls | (ids == "").to_numpy()
    if empty.any():
        raise DataError("empty or missing id", path=path, row=int(np.flatnonzero(empty)[0]))
    dup = ids.duplicated(keep=False).to_numpy()
    if dup.any():
        rows = np.flatnonzero(dup)
        first = ids.iloc[rows[0]]
        twin = int(rows[1:][(ids.iloc[rows[1:]] == first).to_numpy()][0])
        raise DataError(f"duplicate id {first!r} (also at row {twin}; {int(dup.sum())} rows share an id)", path=path,
                        row=int(rows[0]))
    return pd.Index(ids.to_numpy(), dtype=object)


def align_vectors(vf: VectorFile, entity: str, catalog: pd.Index, known: pd.Index, q: Quarantine
                  ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Side arrays `{entity}_vectors` (n, D) float32 and `{entity}_vector_mask` (n,) bool for the dense ids of
    `catalog` (raw ids as str, index = dense id), and the manifest entry with every count. `known`: every id the
    input mentions, to tell an id that filtering removed from one the data never had."""
    rows = vf.ids.get_indexer(catalog.astype(str))  # (n,) file row of each dense id, -1 = no vector
    present = rows >= 0
    if not present.any():
        raise DataError(f"none of the {len(vf.ids)} ids matches one of the {len(catalog)} {entity}s of the data "
                        f"(file ids look like {list(vf.ids[:3])}, {entity} ids like {list(catalog[:3].astype(str))})",
                        path=vf.path)
    out = np.zeros((len(catalog), vf.dim), dtype=np.float32)
    dense = np.flatnonzero(present)
    dense = dense[np.argsort(rows[dense], kind="stable")]  # in file order: sequential reads of a memory map
    out[dense] = np.asarray(vf.matrix[rows[dense]], dtype=np.float32)
    in_catalog = np.zeros(len(vf.ids), dtype=bool)
    in_catalog[rows[present]] = True
    unknown = ~in_catalog & ~vf.ids.isin(known)
    not_in_catalog = ~in_catalog & ~unknown
    rule = f"vectors_{entity}_unknown_id"
    at = np.flatnonzero(unknown)[: q.sample_per_rule]
    q.reject_many(rule, int(unknown.sum()), path=vf.path, reason=f"{entity} id not in the input data",
                  records=[{"id": vf.ids[i]} for i in at], rows=[int(i) for i in at])
    q.note_unused(f"vectors_{entity}_not_in_catalog", int(not_in_catalog.sum()), path=vf.path)
    info = {"file": str(vf.path), "dim": vf.dim, "rows": len(vf.ids), "matched": int(present.sum()),
            "missing": int((~present).sum()), "not_in_catalog": int(not_in_catalog.sum()), "unknown": int(unknown.sum())}
    log.info("%s vectors %s: %d-d, %d of %d %ss matched (%d without a vector), %d ids removed by cleaning / filtering, "
             "%d unknown to the data", entity, vf.path, vf.dim, info["matched"], len(catalog), entity, info["missing"],
             info["not_in_catalog"], info["unknown"])
    return {f"{entity}_vectors": out, f"{entity}_vector_mask": present}, info
