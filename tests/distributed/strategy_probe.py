"""A callback for tests/distributed/test_strategies.py, added to a real `fusionrec fit` by --trainer.callbacks.

Writes `<out>/rank<r>.json` at the end of fit: this rank's training loss per step (the mean over its slice of the
global batch), the validation metrics after the last evaluation (already reduced across ranks by the module),
and how many parameter elements this rank holds against the model's total (ZeRO-3: the local partitions).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl


class StrategyProbe(pl.Callback):
    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.record: dict[str, Any] = {"loss": [], "val": {}, "params": {}}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after the strategy has set the model up: under ZeRO-3 every parameter is partitioned by now
        local = full = partitioned = 0
        for p in pl_module.parameters():
            n = int(getattr(p, "ds_numel", p.numel()))
            full += n
            if hasattr(p, "ds_tensor"):
                partitioned += 1
                local += int(p.ds_tensor.numel())
            else:
                local += n
        self.record["params"] = {
            "local": local,
            "full": full,
            "partitioned_tensors": partitioned,
            "tensors": sum(1 for _ in pl_module.parameters()),
        }
        self.record["world_size"] = trainer.world_size
        self.record["strategy"] = type(trainer.strategy).__name__

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.record["loss"].append(float(loss))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record["val"] = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
        }

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.record, indent=1))
