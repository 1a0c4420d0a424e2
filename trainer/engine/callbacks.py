"""Observability callbacks: throughput (examples/s, text tokens/s), compute (text model FLOP/s, MFU, padding
fraction), gradient norm, peak memory, data stall."""

from __future__ import annotations

import resource
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import grad_norm

from trainer.model.flops import mfu, peak_flops


class TrainingMonitor(pl.Callback):
    """Logs every `log_every_n_steps`: examples/s and text tokens/s (this rank x world size), time waiting for
    data (the gap between one step's end and the next step's start), total gradient 2-norm, and peak memory
    (CUDA max allocated on GPU; max RSS of the process on CPU). For text backbones: the share of token slots that
    were padding, model TFLOP/s (trainer/model/flops.py; this rank's FLOPs x world size), and MFU where the device's
    peak bf16 rate is known (a GPU in trainer.model.flops.PEAK_BF16, or $FUSIONREC_PEAK_TFLOPS).

    Args:
        peak_tflops: peak dense bf16 TFLOP/s of one device, overriding the lookup.
    """

    def __init__(self, peak_tflops: float | None = None) -> None:
        self.peak_tflops = peak_tflops
        self._t_end: float | None = None
        self._t_start = 0.0
        self._examples = 0
        self._text_at_start: dict[str, float] = {}
        self._text = dict.fromkeys(TEXT_COUNTERS, 0.0)  # this window's training-step text work
        self._stall = 0.0
        self._t_window = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._t_end is not None:
            self._stall += now - self._t_end
        self._t_start = now
        self._examples += int(batch["user"].shape[0])
        self._text_at_start = _text_counters(pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._t_end = time.perf_counter()
        # what the text backbones ran in this step (a cache built inside the step included; evaluation not)
        for k, v in _text_counters(pl_module).items():
            self._text[k] += v - self._text_at_start.get(k, v)
        if (trainer.global_step % max(1, trainer.log_every_n_steps)) == 0:
            dt = max(self._t_end - self._t_window, 1e-9)
            w = trainer.world_size
            metrics = {
                "perf/examples_per_s": self._examples * w / dt,
                "perf/text_tokens_per_s": self._text["tokens"] * w / dt,
                "perf/data_stall_fraction": self._stall / dt,
                "perf/peak_memory_mb": _peak_memory_mb(pl_module.device),
            }
            metrics.update(self._text_compute(pl_module, dt, w))
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)
            self._examples = 0
            self._text = dict.fromkeys(TEXT_COUNTERS, 0.0)
            self._stall = 0.0
            self._t_window = self._t_end

    def _text_compute(self, pl_module: pl.LightningModule, dt: float, world: int) -> dict[str, float]:
        slots, tokens, flops = (self._text[k] for k in ("slots", "tokens", "flops"))
        if slots <= 0:
            return {}  # no text backbone ran in this window (e.g. frozen mode after its cache is built)
        out = {"perf/text_padding_fraction": 1.0 - tokens / slots, "perf/text_tflops": flops * world / dt / 1e12}
        peak = self.peak_tflops * 1e12 if self.peak_tflops else peak_flops(pl_module.device)
        u = mfu(flops * world, dt, world, peak)
        if u is not None:
            out["perf/mfu"] = u
        return out

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        if (trainer.global_step % max(1, trainer.log_every_n_steps)) == 0:
            norms = grad_norm(pl_module, norm_type=2)
            if "grad_2.0_norm_total" in norms:
                pl_module.log("train/grad_norm", norms["grad_2.0_norm_total"], on_step=True, on_epoch=False)


TEXT_COUNTERS = ("tokens", "slots", "flops")


def _text_counters(pl_module: pl.LightningModule) -> dict[str, float]:
    """The module's running text-backbone totals (FusionModule.text_counters); {} for a module without them."""
    counters = getattr(pl_module, "text_counters", None)
    return counters() if callable(counters) else {}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
