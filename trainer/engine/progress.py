"""Progress a Slurm log, CI or `| tee` can show: flushed lines instead of a progress bar when stdout is no terminal.

`ProgressLines` (added to every `fusionrec fit|validate|test|predict` by trainer/engine/lightning_cli.py) prints,
on global rank 0, when stdout is not a TTY (or `FUSIONREC_PROGRESS=lines`; `=bar` keeps the bar only):

    fit: sources user=[id, sequence] item=[id, text] (gated); text package:... (frozen); strategy single, world size 1 (cpu, 32-true)
    fit: dataset /data/prepared/ml-100k (ml-100k: 943 users, 1682 items, train 80808 / valid 9596 / test 9596)
    fit: output runs/ml100k/version_3 (checkpoints: runs/ml100k/version_3/checkpoints); 40 epochs x 79 steps, monitor val/ndcg (max)
    validation: epoch 0 step 79: val/ndcg 0.1801 (best 0.1801), recall@10 0.1520; 3.1 s
    epoch 1/40 step 79: loss 6.8812, 2,391 examples/s, val/ndcg 0.1801 (best 0.1801); 36 s, ETA 23:24 at most

and a `step` line every `every_n_seconds` inside a long epoch. On a terminal the progress bar stays as it is.
`FusionModelSummary` is Lightning's model summary without the FLOPs column (Lightning counts FLOPs only for a
module with `example_input_array`, so it read `Total FLOPs: 0`; our FLOP accounting is `perf/text_tflops`), and
says which modules are in eval mode on purpose: a frozen text backbone's (no dropout), which also silences
Lightning's "Found N module(s) in eval mode" warning when those are all of them.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelSummary
from pytorch_lightning.utilities.model_summary.model_summary import _format_summary_table

ENV = "FUSIONREC_PROGRESS"  # lines | bar | unset: lines when stdout is not a terminal


def progress_bar_wanted() -> bool:
    """Whether a progress bar is of use: stdout is a terminal, unless FUSIONREC_PROGRESS says otherwise."""
    mode = os.environ.get(ENV, "")
    return mode == "bar" or (mode != "lines" and sys.stdout.isatty())


def _lines_wanted() -> bool:
    mode = os.environ.get(ENV, "")
    return mode == "lines" or (mode != "bar" and not sys.stdout.isatty())


def _say(*parts: str) -> None:
    print(" ".join(parts), flush=True)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _monitor(trainer: pl.Trainer) -> tuple[str, str]:
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and getattr(ckpt, "monitor", None):
        return ckpt.monitor, getattr(ckpt, "mode", "max")
    return "val/ndcg", "max"


def frozen_eval_modules(module: torch.nn.Module) -> tuple[int, int]:
    """(modules in eval mode, of which inside a frozen text backbone: kept in eval on purpose)."""
    from trainer.model.encoders.text import TextEncoder

    frozen = {id(m) for enc in module.modules() if isinstance(enc, TextEncoder) and enc.mode == "frozen"
              for m in enc.backbone.modules()}
    evals = [m for m in module.modules() if not m.training]
    return len(evals), sum(id(m) in frozen for m in evals)


class ProgressLines(pl.Callback):
    """Flushed progress lines when stdout is not a terminal (see the module docstring).

    Args:
        every_n_seconds: inside an epoch, a `step` line at most this often (0: per epoch and validation only).
    """

    def __init__(self, every_n_seconds: float = 300.0) -> None:
        self.every_n_seconds = every_n_seconds
        self.enabled = _lines_wanted()
        self._best: float | None = None
        self._epoch_times: list[float] = []

    def _on(self, trainer: pl.Trainer) -> bool:
        return self.enabled and trainer.is_global_zero

    # -- the run's key facts --------------------------------------------------------------------------------
    def _facts(self, trainer: pl.Trainer, pl_module: pl.LightningModule, what: str) -> None:
        towers = getattr(pl_module, "towers", None)
        cfg = getattr(pl_module, "model_cfg", None)
        if towers is not None and cfg is not None:
            text = f"; text {cfg.text.model} ({cfg.text.mode})" if "text" in towers.user.names + towers.item.names else ""
            _say(f"{what}: sources user=[{', '.join(towers.user.names)}] item=[{', '.join(towers.item.names)}] "
                 f"({cfg.fusion}){text}; strategy {_strategy_name(trainer)}, world size {trainer.world_size} "
                 f"({type(trainer.accelerator).__name__.removesuffix('Accelerator').lower()}, {trainer.precision})")
        dm = getattr(trainer, "datamodule", None)
        side = getattr(dm, "side", None)
        if side is not None:
            m, c = side.manifest, side.manifest.get("counts") or {}
            splits = " / ".join(f"{k} {c[k]}" for k in ("train", "valid", "test") if k in c)
            _say(f"{what}: dataset {dm.dataset_dir} ({m.get('name')}: {side.n_users} users, {side.n_items} items"
                 f"{', ' + splits if splits else ''})")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t_fit = time.perf_counter()
        self._reset_epoch()
        log_dir = trainer.log_dir  # a broadcast: every rank must ask, or the ranks' collectives fall out of step
        if not self._on(trainer):
            return
        self._facts(trainer, pl_module, "fit")
        ckpt = trainer.checkpoint_callback
        where = f" (checkpoints: {ckpt.dirpath})" if ckpt is not None and getattr(ckpt, "dirpath", None) else ""
        steps = trainer.num_training_batches
        plan = f"{trainer.max_epochs} epochs" + (f" x {steps} steps" if isinstance(steps, int) else "")
        if trainer.max_steps and trainer.max_steps > 0:
            plan += f", at most {trainer.max_steps} steps"
        monitor, mode = _monitor(trainer)
        _say(f"fit: output {log_dir}{where}; {plan}, monitor {monitor} ({mode})")

    # -- training ---------------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        """Per-epoch counters; also set in on_train_start, since a mid-epoch resume skips on_train_epoch_start."""
        self._t_epoch = self._t_line = time.perf_counter()
        self._train_s = 0.0
        self._loss_sum: torch.Tensor | float = 0.0
        self._steps = 0
        self._examples = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._t_batch = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        self._train_s += now - getattr(self, "_t_batch", now)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._loss_sum = self._loss_sum + loss.detach()  # summed on the device: no sync per step
            self._steps += 1
        if isinstance(batch, dict) and "user" in batch:
            self._examples += int(batch["user"].shape[0]) * trainer.world_size
        if self._on(trainer) and self.every_n_seconds and now - self._t_line >= self.every_n_seconds:
            self._t_line = now
            total = trainer.num_training_batches
            eta = ""
            if isinstance(total, int) and batch_idx + 1 < total:
                eta = f", epoch ETA {_hms((now - self._t_epoch) / (batch_idx + 1) * (total - batch_idx - 1))}"
            _say(f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch_idx + 1}/{total}): "
                 f"loss {self._mean_loss():.4f}, {self._rate():,.0f} examples/s{eta}")

    def _mean_loss(self) -> float:
        return float(self._loss_sum) / self._steps if self._steps else math.nan

    def _rate(self) -> float:
        return self._examples / self._train_s if self._train_s > 0 else math.nan

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        took = time.perf_counter() - self._t_epoch
        self._epoch_times.append(took)
        if not self._on(trainer):
            return
        monitor, _ = _monitor(trainer)
        value = trainer.callback_metrics.get(monitor)
        metric = f", {monitor} {float(value):.4f} (best {self._best:.4f})" if value is not None and self._best is not None else ""
        done = trainer.current_epoch + 1
        left = max(0, trainer.max_epochs - done) if trainer.max_epochs and trainer.max_epochs > 0 else None
        avg = sum(self._epoch_times[-3:]) / len(self._epoch_times[-3:])
        eta = f", ETA {_hms(avg * left)} at most" if left else ""
        of = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        _say(f"epoch {done}{of} step {trainer.global_step}: loss {self._mean_loss():.4f}, {self._rate():,.0f} "
             f"examples/s{metric}; {_hms(took)}{eta}")

    # -- evaluation -----------------------------------------------------------------------------------------
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t_eval = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        monitor, mode = _monitor(trainer)
        value = trainer.callback_metrics.get(monitor)
        if value is not None and not math.isnan(float(value)):
            better = max if mode == "max" else min
            self._best = float(value) if self._best is None else better(self._best, float(value))
        if not self._on(trainer):
            return
        what = "validation" if trainer.training or trainer.state.fn == "fit" else "validate"
        self._eval_line(trainer, what, "val/", monitor, f"epoch {trainer.current_epoch + 1} step {trainer.global_step}")

    def _eval_line(self, trainer: pl.Trainer, what: str, prefix: str, monitor: str, at: str) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
        first = metrics.pop(monitor, None)
        shown = ([f"{monitor} {first:.4f}" + (f" (best {self._best:.4f})" if self._best is not None and prefix == "val/" else "")]
                 if first is not None else [])
        shown += [f"{k.removeprefix(prefix)} {v:.4f}" for k, v in sorted(metrics.items()) if "@" in k][:4]
        took = time.perf_counter() - getattr(self, "_t_eval", time.perf_counter())
        _say(f"{what}: {at}: {', '.join(shown) or 'no metrics'}; {took:.1f} s")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t_eval = time.perf_counter()
        if self._on(trainer) and trainer.state.fn != "fit":
            self._facts(trainer, pl_module, "test")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._on(trainer):
            self._eval_line(trainer, "test", "test/", _monitor(trainer)[0].replace("val/", "test/"), f"{trainer.ckpt_path or 'model'}")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t_eval = time.perf_counter()
        self._predicted = 0
        if self._on(trainer):
            self._facts(trainer, pl_module, "predict")
            _say(f"predict: checkpoint {trainer.ckpt_path or '(none: untrained weights)'}, top-"
                 f"{getattr(pl_module, 'predict_top_k', '?')} items per user")

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if isinstance(outputs, dict) and "user" in outputs:
            self._predicted += int(outputs["user"].shape[0])

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._on(trainer):
            took = time.perf_counter() - self._t_eval
            _say(f"predict: {self._predicted * trainer.world_size} users in {took:.1f} s "
                 f"({self._predicted * trainer.world_size / max(took, 1e-9):,.0f} users/s)")


def _strategy_name(trainer: pl.Trainer) -> str:
    name = type(trainer.strategy).__name__.removesuffix("Strategy")
    stage = getattr(trainer.strategy, "config", None)
    if isinstance(stage, dict) and "zero_optimization" in stage:
        name += f" ZeRO-{stage['zero_optimization'].get('stage')}"
    return {"SingleDevice": "single", "DDP": "ddp"}.get(name, name)


class FusionModelSummary(ModelSummary):
    """Lightning's model summary, without its FLOPs column and line (always 0 here: see the module docstring), and
    with the frozen text backbone's eval-mode modules named as intended."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval = frozen_eval_modules(pl_module)
        if self._eval[0] and self._eval[0] == self._eval[1]:
            # every module in eval mode is inside a frozen backbone: Lightning's warning has nothing to say
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        super().on_fit_start(trainer, pl_module)

    def summarize(self, summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int, **kwargs: Any) -> None:
        cols = [c for c in summary_data if c[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes, 0, *cols)
        lines = table.splitlines()[:-1]  # the "Total Flops" line
        n_eval, frozen = getattr(self, "_eval", (0, 0))
        if frozen:
            lines[-1] += f" ({frozen} in the frozen text backbone: kept in eval mode on purpose, no dropout)"
        print("\n".join(lines), flush=True)
