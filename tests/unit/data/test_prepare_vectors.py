"""Precomputed vectors files: read (.npy + id list, parquet list column), aligned with dense ids with every id
counted (matched / missing / not in the catalog / unknown), and bad files as a DataError naming the file and row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_modules.errors import DataError, Quarantine
from data_modules.prepare.config import PrepareConfig, VectorFileConfig
from data_modules.prepare.vectors import align_vectors, read_vector_file

pytestmark = pytest.mark.unit


def _npy(tmp: Path, ids: list[str], vectors: np.ndarray, id_file: str = "ids.txt") -> VectorFileConfig:
    np.save(tmp / "v.npy", vectors)
    if id_file.endswith(".npy"):
        np.save(tmp / id_file, np.array(ids))
    else:
        (tmp / id_file).write_text("\n".join(ids) + "\n", encoding="utf-8")
    return VectorFileConfig(path=str(tmp / "v.npy"), ids=str(tmp / id_file))


def _parquet(tmp: Path, ids: list, vectors: list, **kw) -> VectorFileConfig:
    pq.write_table(pa.table({"asin": ids, "emb": vectors}), tmp / "v.parquet")
    return VectorFileConfig(path=str(tmp / "v.parquet"), id_column="asin", vector_column="emb", **kw)


def test_aligned_with_dense_ids_and_every_id_counted(tmp_path):
    rng = np.random.default_rng(0)
    raw = ["b", " a", "zz", "c", "gone"]  # " a": trimmed like every id; zz: unknown; gone: filtered out of the data
    vectors = rng.normal(size=(5, 3)).astype(np.float32)
    vf = read_vector_file(_npy(tmp_path, raw, vectors))
    catalog = pd.Index(["a", "b", "c", "d"])  # dense ids 0..3; d has no vector
    q = Quarantine()
    arrays, info = align_vectors(vf, "item", catalog, pd.Index(["a", "b", "c", "d", "gone"]), q)
    out, mask = arrays["item_vectors"], arrays["item_vector_mask"]
    assert out.dtype == np.float32 and out.shape == (4, 3)
    np.testing.assert_array_equal(out[:3], vectors[[1, 0, 3]])
    np.testing.assert_array_equal(out[3], np.zeros(3))
    assert mask.tolist() == [True, True, True, False]
    assert info == {"file": str(tmp_path / "v.npy"), "dim": 3, "rows": 5, "matched": 3, "missing": 1,
                    "not_in_catalog": 1, "unknown": 1}
    assert q.counts["vectors_item_unknown_id"] == 1
    assert q.samples[0]["row"] == 2 and q.samples[0]["record"] == {"id": "zz"}
    assert q.unused["vectors_item_not_in_catalog"] == 1


def test_parquet_list_column_and_npy_id_array(tmp_path):
    cfg = _parquet(tmp_path, [3, 1], [[0.5, 1.0], [2.0, -1.0]], dim=2)  # integer ids match raw "1", "3"
    vf = read_vector_file(cfg)
    arrays, info = align_vectors(vf, "user", pd.Index(["1", "2", "3"]), pd.Index(["1", "2", "3"]), Quarantine())
    np.testing.assert_array_equal(arrays["user_vectors"], [[2.0, -1.0], [0, 0], [0.5, 1.0]])
    assert info["matched"] == 2 and info["missing"] == 1 and info["unknown"] == 0
    fixed = pa.array([[1.0, 2.0], [3.0, 4.0]], type=pa.list_(pa.float32(), 2))
    pq.write_table(pa.table({"id": ["x", "y"], "vector": fixed}), tmp_path / "f.parquet")
    vf = read_vector_file(VectorFileConfig(path=str(tmp_path / "f.parquet")))
    assert vf.dim == 2 and list(vf.ids) == ["x", "y"]
    vf = read_vector_file(_npy(tmp_path, ["p", "q"], np.eye(2, dtype=np.float64), id_file="ids.npy"))
    assert list(vf.ids) == ["p", "q"] and isinstance(vf.matrix, np.memmap)


@pytest.mark.parametrize("case, message", [
    ("ragged", r"v\.parquet, row 2, field 'emb': vector of 2 values, row 0 has 3"),
    ("dim", r"v\.parquet, row 0: vectors have 3 dimensions, expected dim=4"),
    ("nan", r"v\.parquet, row 1: vector holds NaN or infinity"),
    ("duplicate", r"v\.parquet, row 0: duplicate id 'a' \(also at row 2"),
    ("empty_id", r"v\.parquet, row 1: empty or missing id"),
    ("null", r"v\.parquet, row 1, field 'emb': null vector"),
    ("column", r"v\.parquet, field 'emb': no column 'emb'"),
])
def test_bad_parquet_names_file_and_row(tmp_path, case, message):
    ids, vecs = ["a", "b", "c"], [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]
    kw = {}
    if case == "ragged":
        vecs[2] = [1.0, 2.0]
    elif case == "dim":
        kw["dim"] = 4
    elif case == "nan":
        vecs[1][2] = float("nan")
    elif case == "duplicate":
        ids[2] = "a"
    elif case == "empty_id":
        ids[1] = " "
    elif case == "null":
        vecs[1] = None
    cfg = _parquet(tmp_path, ids, vecs, **kw)
    if case == "column":
        pq.write_table(pa.table({"asin": ids, "vector": vecs}), tmp_path / "v.parquet")
    with pytest.raises(DataError, match=message):
        read_vector_file(cfg)


def test_bad_npy_names_file_and_row(tmp_path):
    v = np.ones((3, 2), dtype=np.float32)
    v[2, 0] = np.inf
    with pytest.raises(DataError, match=r"v\.npy, row 2: vector holds NaN or infinity"):
        read_vector_file(_npy(tmp_path, ["a", "b", "c"], v))
    with pytest.raises(DataError, match=r"ids\.txt: 2 ids for 3 vector rows"):
        read_vector_file(_npy(tmp_path, ["a", "b"], np.ones((3, 2), dtype=np.float32)))
    with pytest.raises(DataError, match=r"expected a 2-D matrix"):
        read_vector_file(_npy(tmp_path, ["a", "b", "c"], np.ones(3, dtype=np.float32)))
    with pytest.raises(DataError, match=r"expected floating point vectors, got dtype int64"):
        read_vector_file(_npy(tmp_path, ["a", "b", "c"], np.ones((3, 2), dtype=np.int64)))


def test_no_matching_id_is_an_error_and_config_is_checked(tmp_path):
    vf = read_vector_file(_npy(tmp_path, ["x", "y"], np.ones((2, 2), dtype=np.float32)))
    with pytest.raises(DataError, match=r"none of the 2 ids matches one of the 3 items"):
        align_vectors(vf, "item", pd.Index(["1", "2", "3"]), pd.Index(["1", "2", "3"]), Quarantine())
    with pytest.raises(ValueError, match="`ids` must name its row ids"):
        PrepareConfig.from_dict({"vectors": {"item": {"path": "v.npy"}}})
    with pytest.raises(ValueError, match=r"vectors\.user: .*unexpected keyword argument 'colum'"):
        PrepareConfig.from_dict({"vectors": {"user": {"path": "v.parquet", "colum": "x"}}})
    assert PrepareConfig.from_dict({"vectors": {"item": {"path": "v.parquet"}}}).vectors.item.id_column == "id"
