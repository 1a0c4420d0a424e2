"""Incremental fine-tuning (`fit --init_from` on an appended dataset) vs retraining from scratch, on a temporal protocol.

    python benchmarks/incremental.py --out benchmarks/results/incremental_ml100k.json

MovieLens-100K (the recbole wheel's atomic files) ordered by timestamp and cut into three raw folders in the same
format: A = the first 80% of interactions (with the .user / .item files), B = the next 10%, C = the last 10%.

* parent: A prepared alone, temporal split 0.9375 / 0.0625 / 0 (trains on [0, 75%) of time, validates on [75, 80%));
  a model is trained from scratch on it (the model in production before the new data arrives);
* child: `append` of B and C to the parent (its users, items and vocabulary codes keep their index), temporal split
  0.85 / 0.05 / 0.10: trains on [0, 85%) (the parent's rows plus new ones), validates on [85, 90%), tests on
  [90, 100%), the last 10% of time, which no model has seen;
* on the child, side by side: `scratch` (a fresh model, up to --scratch-epochs with early stopping) and
  `incremental` (`--init_from` the parent's best checkpoint, up to --finetune-epochs, fresh optimizer), each then
  tested once on the best validation checkpoint; and `parent as is` (`--init_from`, zero epochs: the old model with
  new users / items initialised from side sources, no training on the new data).

Each `fusionrec` command runs under the shared CPU lock (/tmp/fusionrec-cpu.lock, taken here, not counted in its
wall time). Wall time is the whole command: start-up, training, validation and the test pass; `epoch_s_sum` adds
the per-epoch times the progress lines print (training and validation only).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LOCK = os.environ.get("FUSIONREC_CPU_LOCK", str(Path(tempfile.gettempdir()) / "fusionrec-cpu.lock"))

RUN = {
    "seed_everything": 2020,
    "trainer": {"accelerator": "cpu", "devices": 1, "log_every_n_steps": 20, "num_sanity_val_steps": 0,
                "enable_progress_bar": False,
                "logger": {"class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                           "init_args": {"save_dir": "runs", "name": "incremental"}},
                "callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                               "init_args": {"monitor": "val/ndcg", "mode": "max", "save_last": True,
                                             "filename": "best-{epoch}-{step}"}},
                              {"class_path": "pytorch_lightning.callbacks.EarlyStopping",
                               "init_args": {"monitor": "val/ndcg", "mode": "max", "patience": 3}}]},
    "model": {"model": {"dim": 64, "sources": ["id", "tabular"], "fusion": "gated"},
              "loss": {"weights": {"softmax": 1.0}, "temperature": 0.2},
              "optim": {"lr": 0.002, "weight_decay": 0.0, "warmup_steps": 20},
              "metrics_k": [10, 20]},
    "data": {"batch_size": 1024, "eval_batch_size": 256, "history_len": 50, "num_negatives": 0, "seed": 2020},
}


TAKE_LOCK = True  # --no-lock: the caller already holds it (`flock /tmp/fusionrec-cpu.lock python benchmarks/...`)


@contextlib.contextmanager
def cpu_lock():
    if not TAKE_LOCK:
        yield
        return
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def cut(work: Path) -> dict[str, Path]:
    """A / B / C raw folders (RecBole atomic format) from ml-100k ordered by time."""
    from data_modules.readers.assets import find_ml100k

    src = Path(find_ml100k())
    inter = pd.read_csv(src / "ml-100k.inter", sep="\t", dtype=str)
    inter = inter.iloc[inter["timestamp:float"].astype(float).argsort(kind="stable")]
    n = len(inter)
    a, b = int(round(0.8 * n)), int(round(0.9 * n))
    out = {}
    for name, rows in (("A", inter.iloc[:a]), ("B", inter.iloc[a:b]), ("C", inter.iloc[b:])):
        folder = work / "raw" / name
        folder.mkdir(parents=True, exist_ok=True)
        rows.to_csv(folder / "ml-100k.inter", sep="\t", index=False)
        out[name] = folder
    for ext in ("user", "item"):
        shutil.copy(src / f"ml-100k.{ext}", out["A"] / f"ml-100k.{ext}")
    return out


def prepare(work: Path, raw: dict[str, Path]) -> tuple[Path, Path]:
    from data_modules.prepare import pipeline
    from data_modules.prepare.append import with_appended
    from data_modules.prepare.config import PrepareConfig, SplitConfig

    base = {"source": {"format": "recbole", "path": str(raw["A"]), "name": "ml-100k"},
            "clean": {"rating_range": [1, 5], "duplicate_rule": "last", "max_bad_fraction": 0.01},
            "split": {"protocol": "temporal", "ratios": [0.9375, 0.0625, 0.0]},
            "output": {"dir": str(work / "parent"), "shard_rows": 50000, "block_rows": 4096}}
    parent_cfg = PrepareConfig.from_dict(base)
    parent = pipeline.prepare(parent_cfg).path
    child_cfg = with_appended(parent_cfg, [str(raw["B"]), str(raw["C"])], str(work / "child"))
    child_cfg.split = SplitConfig(protocol="temporal", ratios=(0.85, 0.05, 0.10))
    child = pipeline.prepare(child_cfg).path
    return parent, child


def fit(work: Path, name: str, dataset: Path, epochs: int, init_from: str | None = None, test: bool = True,
        lr: float | None = None) -> dict:
    run = json.loads(json.dumps(RUN))
    if lr is not None:
        run["model"]["optim"]["lr"] = lr
    run_yaml = work / f"run_{name}.yaml"
    run_yaml.write_text(yaml.safe_dump(run), encoding="utf-8")
    cmd = [sys.executable, "-m", "trainer.cli", "fit", "--config", str(run_yaml), "--data.dataset_dir", str(dataset),
           "--trainer.max_epochs", str(epochs), "--trainer.default_root_dir", str(work / "runs" / name),
           "--trainer.logger.init_args.save_dir", str(work / "runs" / name), "--test_after_fit", str(test).lower()]
    if init_from:
        cmd += ["--init_from", init_from]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with cpu_lock():
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        wall = time.perf_counter() - t0
    log = p.stdout + p.stderr
    (work / f"{name}.log").write_text(log, encoding="utf-8")
    if p.returncode != 0:
        raise RuntimeError(f"{name} failed (rc {p.returncode}); see {work / f'{name}.log'}:\n{log[-3000:]}")
    metrics = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\s+(test/\S+)\s+([0-9.]+)$", log, re.M)}
    best = re.search(r"best checkpoint: (\S+)", log)
    epochs = re.findall(r"^epoch (\d+)/\d+ step \d+: .*; (\d+):(\d\d)(?:,|$)", log, re.M)
    return {"lr": run["model"]["optim"]["lr"], "wall_s": round(wall, 1), "epochs_run": max((int(e) for e, _, _ in epochs), default=0),
            "epoch_s_sum": sum(60 * int(m) + int(sec) for _, m, sec in epochs),  # training + validation epochs
            "test": metrics,
            "best_checkpoint": best.group(1) if best else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fusionrec-incremental"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "incremental_ml100k.json"))
    ap.add_argument("--scratch-epochs", type=int, default=20)
    ap.add_argument("--finetune-epochs", type=int, default=5)
    ap.add_argument("--finetune-lr", type=float, default=None, help="learning rate of the fine-tune (default: the run's)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep --work's prepared datasets and parent run (from --out's JSON) and redo the child runs")
    ap.add_argument("--no-lock", action="store_true", help="do not take the shared CPU lock (the caller holds it)")
    a = ap.parse_args()
    global TAKE_LOCK
    TAKE_LOCK = not a.no_lock
    work = Path(a.work)
    parent, child = work / "parent", work / "child"
    if a.reuse:
        before = json.loads(Path(a.out).read_text(encoding="utf-8"))
        runs, prep_s = {"parent": before["runs"]["parent"]}, before["datasets"]["prepare_both_s"]
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        raw = cut(work)
        with cpu_lock():
            t0 = time.perf_counter()
            parent, child = prepare(work, raw)
            prep_s = time.perf_counter() - t0
        runs = {"parent": fit(work, "parent", parent, a.scratch_epochs, test=False)}  # its test split is empty
    pm, cm = (json.loads((d / "manifest.json").read_text()) for d in (parent, child))
    partial = Path(a.out).with_suffix(".partial.json")
    ckpt = runs["parent"]["best_checkpoint"]
    for name, epochs, init, lr in (("incremental", a.finetune_epochs, ckpt, a.finetune_lr),
                                   ("scratch", a.scratch_epochs, None, None), ("parent_as_is", 0, ckpt, None)):
        try:
            runs[name] = fit(work, name, child, epochs, init_from=init, lr=lr)
        except RuntimeError as e:  # reported, not hidden: the other runs still count
            if name != "parent_as_is":
                raise
            runs[name] = {"error": str(e)[:500], "test": {}}
        partial.write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")  # what is done, should a run fail
    s, i = runs["scratch"], runs["incremental"]
    result = {
        "command": "python benchmarks/incremental.py " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPU cores (shared CPU lock held), torch CPU",
        "protocol": "ml-100k by time: parent trains [0,75%) valid [75,80%); child = parent + next 20% appended, "
                    "trains [0,85%) valid [85,90%) test [90,100%)",
        "model": RUN["model"]["model"],
        "datasets": {"parent": pm["counts"], "child": cm["counts"], "lineage_added": cm["lineage"]["added"],
                     "prepare_both_s": round(prep_s, 1)},
        "runs": runs,
        "ndcg@10": {k: r["test"].get("test/ndcg@10") for k, r in runs.items() if k != "parent"},
        "incremental_vs_scratch": {
            "ndcg@10_ratio": round(i["test"]["test/ndcg@10"] / s["test"]["test/ndcg@10"], 4),
            "recall@10_ratio": round(i["test"]["test/recall@10"] / s["test"]["test/recall@10"], 4),
            "wall_ratio": round(i["wall_s"] / s["wall_s"], 4),
            "epoch_time_ratio": round(i["epoch_s_sum"] / max(s["epoch_s_sum"], 1), 4),
        },
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    partial.unlink(missing_ok=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
