"""The precomputed-vector source end to end on the tiny fixture: `fusionrec data prepare` with a parquet vectors file
(aligned with the dense ids, every id counted in the manifest), one epoch of `fusionrec fit` with the item tower
fusing ids and vectors, `fusionrec explain` giving items without a vector a zero gate and share; a file with a NaN
row stops preparation with an error naming the file and the row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers.env import child_env

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
WITH_VECTOR = [str(i) for i in range(1, 13)]  # tiny.item has items 1..16: 13..16 get no vector
UNKNOWN = ["9001", "9002"]  # in the vectors file, not in the data


def fusionrec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.cli", *args], cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=300)


def _ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, (p.stdout + p.stderr)[-6000:]
    return p.stdout + p.stderr


def _prepare_config(root: Path, vectors: np.ndarray, ids: list[str]) -> Path:
    pq.write_table(pa.table({"item_id": ids, "embedding": pa.array(list(vectors), pa.list_(pa.float32()))}),
                   root / "vectors.parquet")
    cfg = yaml.safe_load((REPO / "configs" / "data" / "tiny.yaml").read_text())
    cfg["vectors"] = {"item": {"path": str(root / "vectors.parquet"), "id_column": "item_id",
                               "vector_column": "embedding", "dim": int(vectors.shape[1])}}
    (root / "prepare.yaml").write_text(yaml.safe_dump(cfg))
    return root / "prepare.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vector")
    vectors = np.random.default_rng(0).normal(size=(len(WITH_VECTOR) + len(UNKNOWN), 12)).astype(np.float32)
    cfg = _prepare_config(root, vectors, WITH_VECTOR + UNKNOWN)
    prep = _ok(fusionrec("data", "prepare", str(cfg), "--out", str(root / "data")))
    fit = _ok(fusionrec("fit", "--config", str(TINY), "--data.dataset_dir", str(root / "data"), "--data.prepare_config",
                        "null", "--trainer.max_epochs", "1", "--model.model.sources", "[id, vector, sequence]",
                        "--model.model.user_sources", "[sequence]", "--model.model.sequence.item_repr", "item_tower",
                        "--trainer.default_root_dir", str(root / "fit"), "--trainer.logger.init_args.save_dir",
                        str(root / "fit")))
    return {"root": root, "vectors": vectors, "prepare_log": prep, "fit_log": fit}


def test_prepared_vectors_are_aligned_and_counted(run):
    data = run["root"] / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    info = manifest["schema"]["vectors"]["item"]
    assert {k: info[k] for k in ("dim", "rows", "matched", "missing", "not_in_catalog", "unknown")} == {
        "dim": 12, "rows": 14, "matched": 12, "missing": 4, "not_in_catalog": 0, "unknown": 2}
    assert manifest["quarantine"]["vectors_item_unknown_id"] == 2
    assert {"item_vectors", "item_vector_mask"} <= set(manifest["side"])
    ids = pd.read_parquet(data / "id_maps" / "items.parquet").sort_values("index")["id"].tolist()
    aligned, mask = np.load(data / "side" / "item_vectors.npy"), np.load(data / "side" / "item_vector_mask.npy")
    for dense, raw in enumerate(ids):
        assert mask[dense] == (raw in WITH_VECTOR)
        expect = run["vectors"][WITH_VECTOR.index(raw)] if raw in WITH_VECTOR else np.zeros(12, np.float32)
        np.testing.assert_array_equal(aligned[dense], expect)
    assert "12 of 16 items matched (4 without a vector)" in run["prepare_log"]
    assert "2 unknown to the data" in run["prepare_log"]
    assert "item vectors 12-d, 12 matched, 4 without a vector, 0 not in the catalog, 2 unknown ids" in run["prepare_log"]


def test_one_epoch_fuses_ids_and_vectors(run):
    log = run["fit_log"]
    assert "item vector source: 12-d vectors for 12 of 16 items (the others declared missing)" in log
    assert "item tower sources: ['id', 'vector']" in log
    (events,) = (run["root"] / "fit").rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "gates/item_vector" in tags and "val/ndcg@10" in tags
    gate = acc.Scalars("gates/item_vector")[-1].value
    assert 0.0 < gate < 1.0  # the vector source carried part of the training items' vectors
    (ckpt,) = (run["root"] / "fit").rglob("last.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert "towers.item.encoders.vector.proj.weight" in state
    assert not any(k.endswith("encoders.vector.vectors") for k in state)  # data, rebuilt from the prepared folder


def test_explain_gives_items_without_a_vector_no_share(run):
    (ckpt,) = (run["root"] / "fit").rglob("last.ckpt")
    out = run["root"] / "explain"
    _ok(fusionrec("explain", "--ckpt", str(ckpt), "--users", "3", "11", "17", "--k", "8", "--rationale-model", "none",
                  "--out", str(out)))
    recs = [json.loads(line) for line in (out / "explanations.jsonl").read_text().splitlines()]
    without = [r for r in recs if r["item"] not in WITH_VECTOR]
    assert without and len(without) < len(recs)
    for r in recs:
        a = r["attribution"]["item"]
        if r["item"] in WITH_VECTOR:
            assert a["gates"]["vector"] > 0
        else:
            assert a["gates"]["vector"] == 0 and a["shares"]["vector"] == 0 and a["gates"]["id"] == pytest.approx(1.0)


def test_a_nan_vector_stops_preparation_naming_file_and_row(tmp_path):
    vectors = np.ones((3, 4), dtype=np.float32)
    vectors[1, 2] = np.nan
    cfg = _prepare_config(tmp_path, vectors, ["1", "2", "3"])
    p = fusionrec("data", "prepare", str(cfg), "--out", str(tmp_path / "data"))
    assert p.returncode != 0
    assert f"{tmp_path / 'vectors.parquet'}, row 1: vector holds NaN or infinity" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "data").exists()
