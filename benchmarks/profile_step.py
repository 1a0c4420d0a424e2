"""Where a training step's time goes: the real `fusionrec fit` for a few steps, timed per part by a callback.

    python benchmarks/profile_step.py --dataset /tmp/ml100k_prepared --steps 40 --json benchmarks/results/profile_fused_step.json
    python benchmarks/profile_step.py --dataset /tmp/ml100k_prepared -- --model.model.sources '[id]'   # any fit override

Runs `fit` in this process (configs/ml100k.yaml by default, validation off, no logger or checkpoints) with
`StepTimer`, which reads wall clocks at Lightning's hooks and around each module's forward:
  data       from one batch's end to the next one's start: the loader's next() and the host-to-device copy
  forward    training_step up to the loss (split below by source encoder, fusion head, loss, graph propagation)
  backward   loss.backward()
  optimizer  from the end of backward to the batch's end: AdamW step, zero_grad, scheduler, logging
Per-source forward times are inclusive (an encoder that calls another counts both). The first `--skip` steps (text
cache build, allocator warm-up) are left out. Run it alone: 2 shared cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

REPO = Path(__file__).resolve().parents[1]
SKIP = 5
_STATE: dict[str, Any] = {"skip": SKIP, "out": None}


class StepTimer(pl.Callback):
    """Wall-clock seconds per step part, summed over the counted steps (see the module docstring)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.steps = 0
        self.examples = 0
        self._t: dict[str, float] = {}
        self._counting = False

    def _timed(self, name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if self._counting:
                self.totals[name] += time.perf_counter() - t0
            return out

        return wrapper

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        towers = pl_module.towers
        for side, tower in (("user", towers.user), ("item", towers.item)):
            for name, enc in tower.encoders.items():
                enc.forward = self._timed(f"forward/{side} {name}", enc.forward)
            tower.fusion.forward = self._timed(f"forward/{side} fusion", tower.fusion.forward)
        if towers.graph is not None:
            towers.graph.tables = self._timed("forward/graph propagation", towers.graph.tables)
        pl_module.objective.forward = self._timed("forward/loss", pl_module.objective.forward)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        self._counting = trainer.global_step >= _STATE["skip"]
        if self._counting and "end" in self._t:
            self.totals["data"] += now - self._t["end"]
        self._t["start"] = now

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Any) -> None:
        self._t["backward"] = time.perf_counter()

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t["after_backward"] = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._counting:
            t = self._t
            self.totals["forward"] += t["backward"] - t["start"]
            self.totals["backward"] += t["after_backward"] - t["backward"]
            self.totals["optimizer"] += now - t["after_backward"]
            self.steps += 1
            self.examples += int(batch["user"].shape[0])
        self._t["end"] = time.perf_counter()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = sum(self.totals[k] for k in ("data", "forward", "backward", "optimizer"))
        _STATE["out"] = {
            "steps": self.steps,
            "examples_per_s": round(self.examples / step, 1) if step else None,
            "s_per_step": round(step / max(self.steps, 1), 4),
            "share": {k: round(v / step, 4) for k, v in sorted(self.totals.items(), key=lambda kv: -kv[1])}
            if step
            else {},
            "ms_per_step": {
                k: round(1000 * v / max(self.steps, 1), 2)
                for k, v in sorted(self.totals.items(), key=lambda kv: -kv[1])
            },
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/ml100k.yaml")
    ap.add_argument("--dataset", required=True, help="an already prepared dataset folder")
    ap.add_argument("--steps", type=int, default=40, help="steps run, the first --skip not counted")
    ap.add_argument("--skip", type=int, default=SKIP)
    ap.add_argument("--json", type=Path)
    ap.add_argument("overrides", nargs="*", help="more `fit` arguments (after --)")
    a = ap.parse_args()
    _STATE["skip"] = a.skip
    from trainer.cli import main as cli_main

    argv = [
        "fit",
        "--config",
        a.config,
        "--data.dataset_dir",
        a.dataset,
        "--data.prepare_config",
        "null",
        "--trainer.max_steps",
        str(a.steps),
        "--trainer.limit_val_batches",
        "0",
        "--trainer.logger",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.callbacks",
        "[]",
        "--trainer.callbacks+=__main__.StepTimer",
        "--trainer.default_root_dir",
        str(Path(tempfile.gettempdir()) / "fusionrec_profile_step"),
        *a.overrides,
    ]
    rc = cli_main(argv)
    out = _STATE["out"]
    if rc or out is None:
        sys.exit(f"fit failed (rc {rc}); nothing measured")
    out = {
        "command": "python benchmarks/profile_step.py " + " ".join(sys.argv[1:]),
        "config": a.config,
        **out,
    }
    print(json.dumps(out, indent=1))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
