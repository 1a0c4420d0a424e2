"""Seconds per training epoch on ml-100k: fusionrec's id-only model vs RecBole 1.2.1 BPR, side by side, same machine.

    python benchmarks/speed_vs_recbole.py --dataset /tmp/ml100k_prepared --json benchmarks/results/speed_vs_recbole.json
    python benchmarks/speed_vs_recbole.py --dataset /tmp/ml100k_prepared --recbole-log LOGS/BPR.log   # reuse a peer run

RecBole runs through `../shared/peers/run_recbole.sh` (MODELS=BPR: RecBole's defaults, embedding_size 64,
train_batch_size 2048, one uniform negative per positive) and reports each epoch's training time in its log
("epoch N training [time: X s"), evaluation apart. fusionrec then trains `configs/ml100k_id_only.yaml` on the same
80,808 training interactions (the `recbole` split protocol reproduces RecBole's split) with the same dimension and
batch size, validation off, and a callback timing each training epoch (loader included, as RecBole's). Two
objectives: the config's in-batch sampled softmax (2,048 x 2,048 scores a step) and BPR with one sampled negative
(RecBole's objective). The first epoch of each (start-up, allocator warm-up) is left out of the medians.
Run it alone: 2 shared cores, and the two are timed one after the other, never at once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

REPO = Path(__file__).resolve().parents[1]
PEERS = REPO.parent / "shared" / "peers"
EPOCH_RE = re.compile(r"epoch (\d+) training \[time: ([0-9.]+)s")
VARIANTS = {
    "softmax": [],
    "bpr": ["--model.loss.weights", "{bpr: 1.0}", "--data.num_negatives", "1"],
}


def recbole_epochs(log: Path) -> dict[str, Any]:
    text = log.read_text(encoding="utf-8", errors="replace")
    epochs = [float(t) for _, t in EPOCH_RE.findall(text)]
    if not epochs:
        raise SystemExit(f"{log}: no 'epoch N training [time: ...]' lines (did RecBole run?)")
    conf = {k: re.search(rf"^{k} = (\S+)", text, re.M) for k in ("embedding_size", "train_batch_size")}
    return {"log": log.name, "epoch_s": epochs, **{k: (m.group(1) if m else None) for k, m in conf.items()}}


def run_recbole(work: Path) -> Path:
    env = {**os.environ, "MODELS": "BPR", "WORK": str(work), "LOGS": str(work / "logs")}
    subprocess.run(["bash", str(PEERS / "run_recbole.sh")], env=env, check=True, stdout=subprocess.DEVNULL)
    return work / "logs" / "BPR.log"


def run_ours(dataset: Path, variant: str, epochs: int, dim: int, batch: int) -> list[float]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--dataset",
        str(dataset),
        "--epochs",
        str(epochs),
        "--dim",
        str(dim),
        "--batch",
        str(batch),
        "--variant",
        variant,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    times = [float(x.split()[1]) for x in p.stdout.splitlines() if x.startswith("EPOCH_S ")]
    if p.returncode or not times:
        raise SystemExit(f"fusionrec {variant} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
    return times


class EpochTimer(pl.Callback):
    """Prints each training epoch's wall-clock seconds (loader included; no validation runs in these epochs)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        print(f"EPOCH_S {time.perf_counter() - self.t0:.4f}", flush=True)


def child(a: argparse.Namespace) -> None:
    from trainer.cli import main as cli_main

    argv = [
        "fit",
        "--config",
        "configs/ml100k_id_only.yaml",
        "--data.dataset_dir",
        str(a.dataset),
        "--data.prepare_config",
        "null",
        "--model.model.dim",
        str(a.dim),
        "--data.batch_size",
        str(a.batch),
        "--trainer.max_epochs",
        str(a.epochs),
        "--trainer.limit_val_batches",
        "0",
        "--trainer.logger",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.callbacks",
        "[]",
        "--trainer.callbacks+=__main__.EpochTimer",
        "--trainer.default_root_dir",
        "/tmp/fusionrec_speed_vs_recbole",
        *VARIANTS[a.variant],
    ]
    sys.exit(cli_main(argv))


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs[1:] if len(xs) > 1 else xs), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--dataset", type=Path, required=True, help="ml-100k prepared with configs/data/ml100k.yaml"
    )
    ap.add_argument(
        "--recbole-log", type=Path, help="an existing run_recbole.sh BPR.log instead of running it"
    )
    ap.add_argument(
        "--work", type=Path, default=Path("/tmp/fusionrec_recbole_speed"), help="RecBole's WORK folder"
    )
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="softmax", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    t0 = time.perf_counter()
    peer = recbole_epochs(a.recbole_log or run_recbole(a.work))
    peer_wall = time.perf_counter() - t0
    rows: dict[str, Any] = {
        "recbole_bpr": {**peer, "median_epoch_s": _median(peer["epoch_s"]), "wall_s": round(peer_wall, 1)}
    }
    for v in a.variants:
        times = run_ours(a.dataset, v, a.epochs, a.dim, a.batch)
        rows[f"fusionrec_id_{v}"] = {
            "epoch_s": times,
            "median_epoch_s": _median(times),
            "dim": a.dim,
            "batch": a.batch,
        }
    base = rows["recbole_bpr"]["median_epoch_s"]
    for r in rows.values():
        r["ratio_to_recbole"] = round(r["median_epoch_s"] / base, 3)
    print("| run | median s / epoch | ratio to RecBole BPR | epochs timed |")
    print("|---|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {r['median_epoch_s']} | {r['ratio_to_recbole']} | {len(r['epoch_s'])} |")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        out = {
            "command": "python benchmarks/speed_vs_recbole.py " + " ".join(sys.argv[1:]),
            "nproc": os.cpu_count(),
            "runs": rows,
        }
        a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
