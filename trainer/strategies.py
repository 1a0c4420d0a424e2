"""Training strategies by name; the only module that imports deepspeed.

    single                      one process (CPU or one GPU)
    ddp                         DistributedDataParallel (NCCL on GPUs, gloo on CPU)
    deepspeed_stage_1/2/3       ZeRO partitioning of optimizer states / gradients / parameters
    deepspeed_stage_3_offload   ZeRO-3 with optimizer states and parameters offloaded to CPU memory
DeepSpeed settings live in `configs/deepspeed/<name>.json`. On a machine without CUDA the same names run over
gloo (see ../shared/notes/deepspeed-on-cpu.md), so the test suite exercises the real DeepSpeed code path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.strategies import DDPStrategy, Strategy

NAMES = ("single", "ddp", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3", "deepspeed_stage_3_offload")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "deepspeed"


def build_strategy(name: str, deepspeed_config: str | None = None) -> Strategy | str | None:
    """Strategy object for `name`; None for `single` (Lightning's default). ValueError names the valid choices."""
    if name not in NAMES:
        raise ValueError(f"strategy_name={name!r}: expected one of {NAMES}")
    cpu = not torch.cuda.is_available()
    if name == "single":
        return None
    if name == "ddp":
        return DDPStrategy(process_group_backend="gloo" if cpu else "nccl", find_unused_parameters=False)
    return _deepspeed(name, deepspeed_config, cpu)


def load_deepspeed_config(name: str, path: str | None = None) -> dict[str, Any]:
    p = Path(path) if path else CONFIG_DIR / f"{name}.json"
    if not p.exists():
        raise FileNotFoundError(f"DeepSpeed config for {name!r} not found: {p}")
    return json.loads(p.read_text())


def _deepspeed(name: str, path: str | None, cpu: bool) -> Strategy:
    if cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from pytorch_lightning.strategies import DeepSpeedStrategy

    config = load_deepspeed_config(name, path)
    if not cpu:
        return DeepSpeedStrategy(config=config)

    class CPUDeepSpeedStrategy(DeepSpeedStrategy):
        """DeepSpeed over gloo on CPU; Lightning's version refuses non-CUDA accelerators in three places."""

        def setup_environment(self) -> None:
            DDPStrategy.setup_environment(self)  # skip the CUDA-only check

        def setup_distributed(self) -> None:
            from lightning_fabric.utilities.seed import reset_seed

            reset_seed()
            self.set_world_ranks()  # no device-index validation: CPU devices have no index
            self._init_deepspeed_distributed()

        @property
        def root_device(self) -> torch.device:
            return torch.device("cpu", 0)  # DeepSpeed reads root_device.index as its device rank

    return CPUDeepSpeedStrategy(config=config, process_group_backend="gloo")
