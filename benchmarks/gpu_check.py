"""GPU check of the scale-out strategies: the ml-100k fused model under ddp, ZeRO-2 and ZeRO-3 in bf16.

    python benchmarks/gpu_check.py                                   # all visible GPUs, 60 steps per strategy
    python benchmarks/gpu_check.py --gpus 2 --steps 100 --strategies ddp deepspeed_stage_3
    python benchmarks/gpu_check.py --dry-run                         # print the commands; works without a GPU

Each strategy runs the real `fusionrec fit --config configs/ml100k.yaml` under torchrun (one process per GPU,
NCCL) for a fixed number of optimizer steps, with `--trainer.precision bf16-mixed`, validation and checkpoints off.
A probe callback (this file's `GpuProbe`) times the steps after `--warmup` (which include the frozen text
cache and DeepSpeed's first-step set-up) and reads `torch.cuda.max_memory_allocated` on every rank. Printed:
strategy, examples/s (global: all ranks' examples / the slowest rank's time), peak GPU memory (the largest rank's,
MiB), and per-step time. Logs and per-rank JSON go to --out. The dataset must be prepared (or preparable
offline: configs/ml100k.yaml names its prepare config). Refuses to run without CUDA (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("ddp", "deepspeed_stage_2", "deepspeed_stage_3")


class GpuProbe(pl.Callback):
    """Writes `<out>/rank<r>.json`: examples this rank trained on after `warmup` steps, their wall time, and the
    peak CUDA memory allocated on this rank."""

    def __init__(self, out: str, warmup: int = 10) -> None:
        self.out, self.warmup = Path(out), warmup
        self.t0: float | None = None
        self.t1 = 0.0
        self.examples = self.steps = 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # kernels run asynchronously: time what has finished
        now = time.perf_counter()
        if trainer.global_step == self.warmup:
            self.t0 = now
        elif self.t0 is not None:
            self.t1, self.examples, self.steps = (
                now,
                self.examples + int(batch["user"].shape[0]),
                self.steps + 1,
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "steps": self.steps,
            "examples": self.examples,
            "seconds": (self.t1 - self.t0) if self.t0 is not None else 0.0,
            "peak_mib": (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
                         else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20,  # CPU: max RSS
            "strategy": type(trainer.strategy).__name__,
            "precision": str(trainer.precision),
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def command(strategy: str, a: argparse.Namespace, gpus: int, out: Path) -> list[str]:
    probe = {
        "class_path": "benchmarks.gpu_check.GpuProbe",
        "init_args": {"out": str(out / "probe"), "warmup": a.warmup},
    }
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", str(gpus),
        "-m", "trainer.cli", "fit", "--config", a.config, "--strategy_name", strategy,
        "--trainer.accelerator", "gpu" if torch.cuda.is_available() else "cpu", "--trainer.devices", str(gpus), "--trainer.num_nodes", "1",
        "--trainer.precision", a.precision, "--trainer.max_steps", str(a.warmup + a.steps),
        "--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing", "false",
        "--trainer.logger", "false", "--trainer.callbacks", json.dumps([probe]),
        "--trainer.default_root_dir", str(out), *a.extra,
    ]  # fmt: skip


def summarise(strategy: str, out: Path, gpus: int) -> dict[str, Any]:
    records = [json.loads(p.read_text()) for p in sorted((out / "probe").glob("rank*.json"))]
    if len(records) != gpus or not all(r["seconds"] > 0 for r in records):
        return {
            "strategy": strategy,
            "error": f"probe wrote {len(records)}/{gpus} ranks; see {out / 'log.txt'}",
        }
    seconds = max(r["seconds"] for r in records)
    return {
        "strategy": strategy,
        "gpus": gpus,
        "examples_per_s": sum(r["examples"] for r in records) / seconds,
        "peak_mib": max(r["peak_mib"] for r in records),
        "ms_per_step": 1000 * seconds / records[0]["steps"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--config", default="configs/ml100k.yaml", help="run YAML (relative to the repository root)"
    )
    ap.add_argument(
        "--strategies",
        nargs="+",
        default=list(STRATEGIES),
        choices=STRATEGIES + ("deepspeed_stage_1", "deepspeed_stage_3_offload"),
    )
    ap.add_argument("--gpus", type=int, default=None, help="processes = GPUs to use [all visible]")
    ap.add_argument("--steps", type=int, default=60, help="timed optimizer steps per strategy")
    ap.add_argument(
        "--warmup", type=int, default=10, help="untimed steps first (text cache, DeepSpeed set-up)"
    )
    ap.add_argument("--precision", default="bf16-mixed", help="trainer.precision [bf16-mixed]")
    ap.add_argument("--out", default="runs/gpu_check", help="logs and per-rank probe files")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per strategy")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and exit (no GPU needed)")
    ap.add_argument(
        "extra", nargs="*", help="more fusionrec arguments after --, e.g. -- --data.batch_size 2048"
    )
    a = ap.parse_args(argv)
    if a.steps <= 0 or a.warmup < 1:
        ap.error(f"--steps {a.steps} --warmup {a.warmup}: expected steps > 0 and warmup >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    cuda = torch.cuda.is_available() and torch.cuda.device_count() > 0
    gpus = a.gpus or (torch.cuda.device_count() if cuda else 1)
    root = Path(a.out).resolve()
    if a.dry_run:
        for s in a.strategies:
            print(shlex.join(command(s, a, gpus, root / s)))
        return 0
    if not cuda:
        print(
            "gpu_check: no CUDA device is visible (torch.cuda.is_available() is False): this check measures GPU "
            "throughput and memory and runs only on a GPU machine. For the CPU/gloo path of the same strategies run "
            "`pytest -m distributed tests/distributed/test_strategies.py`; --dry-run prints the commands.",
            file=sys.stderr,
        )
        return 2
    if gpus > torch.cuda.device_count():
        print(
            f"gpu_check: --gpus {gpus} but only {torch.cuda.device_count()} CUDA devices are visible",
            file=sys.stderr,
        )
        return 2
    if a.precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        print(f"gpu_check: --precision {a.precision} but this GPU does not support bf16", file=sys.stderr)
        return 2
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    for s in a.strategies:
        out = root / s
        out.mkdir(parents=True, exist_ok=True)
        for old in (out / "probe").glob("rank*.json"):
            old.unlink()  # a failed run must not report an older run's numbers
        cmd = command(s, a, gpus, out)
        print(f"[gpu_check] {s}: {shlex.join(cmd)}", flush=True)
        with open(out / "log.txt", "w") as log:
            try:
                rc = subprocess.run(
                    cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=a.timeout
                ).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        row = summarise(s, out, gpus)
        if rc != 0:
            row = {"strategy": s, "error": f"exit {rc}; see {out / 'log.txt'}"}
        rows.append(row)
    name = torch.cuda.get_device_name(0)
    print(f"\n{a.config}, {a.precision}, {a.steps} timed steps after {a.warmup}, {gpus} x {name}")
    print(f"{'strategy':<22}{'examples/s':>12}{'peak GPU MiB':>14}{'ms/step':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['strategy']:<22}  FAILED: {r['error']}")
        else:
            print(
                f"{r['strategy']:<22}{r['examples_per_s']:>12.0f}{r['peak_mib']:>14.0f}{r['ms_per_step']:>10.1f}"
            )
    (root / "summary.json").write_text(json.dumps(rows, indent=1))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
