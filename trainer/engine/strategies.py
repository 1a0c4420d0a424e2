"""Training strategies by name; the only module that imports deepspeed.

    single                      one process (CPU or one GPU)
    ddp                         DistributedDataParallel (NCCL on GPUs, gloo on CPU)
    deepspeed_stage_1/2/3       ZeRO partitioning of optimizer states / gradients / parameters
    deepspeed_stage_3_offload   ZeRO-3 with optimizer states and parameters offloaded to CPU memory
DeepSpeed settings live in `configs/deepspeed/<name>.json`. On a machine without CUDA the same names run over
gloo (see ../shared/notes/deepspeed-on-cpu.md), so the test suite exercises the real DeepSpeed code path.

ZeRO-3 and how the model is created (`configure_model`):
  - Hugging Face backbones (the text source) are created partitioned: the strategy registers its DeepSpeed config
    with transformers (`HfDeepSpeedConfig`), so `from_pretrained` builds the backbone under `zero.Init` and loads
    each module's weights through `GatheredParameters`. Lightning's plain `zero.Init` around `configure_model`
    is not enough for them: transformers does not know about it, runs its weight initialisation on the
    already-partitioned (empty) tensors and fails (IndexError in BERT's `_init_weights`).
  - fusionrec's own encoders are created whole on every rank and partitioned by `deepspeed.initialize`. Under
    Lightning's `zero.Init` they would lose their initialisation: each encoder calls `nn.init.normal_` on an
    embedding after creating it, and by then `zero.Init` has partitioned that weight, so the call changes
    nothing and the embedding keeps PyTorch's N(0, 1) default (a different model from the one `ddp` trains).
    Their size is the id / graph tables, small next to a text backbone.
  - Under ZeRO-3 a weight is whole only inside the strategy's forward (a training / validation / test / predict
    step); the module encodes the evaluation catalog in its first step for that reason. Every rank must run the
    same number of steps (each forward gathers weights collectively): evaluation users are split by rank, so with
    more than one rank keep the per-rank batch counts equal (they differ only when n_users / world_size straddles
    a multiple of eval_batch_size).
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, Strategy

NAMES = (
    "single",
    "ddp",
    "deepspeed_stage_1",
    "deepspeed_stage_2",
    "deepspeed_stage_3",
    "deepspeed_stage_3_offload",
)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"


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
    config = load_deepspeed_config(name, path)
    if not cpu:
        return FusionDeepSpeedStrategy(config=config)
    # DeepSpeed picks its accelerator once, when first asked; it must not probe for CUDA on a CPU machine
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return CPUDeepSpeedStrategy(config=config, process_group_backend="gloo")


class FusionDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy; under ZeRO-3 it creates Hugging Face backbones partitioned and leaves the
    rest of the model whole until `deepspeed.initialize` partitions it (module docstring says why). Checkpoint
    shards load with `weights_only=True` (DeepSpeed's own loader unpickles arbitrary objects)."""

    _hf_config: Any = None

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        """DeepSpeed's save, bracketed by the folder's checksum manifest (trainer/engine/checkpoint_checksums.py):
        removed before any rank writes, written by rank 0 after DeepSpeed's closing barrier."""
        from trainer.engine.checkpoint_checksums import invalidate_checksums, write_checksums

        filepath = self.broadcast(filepath)
        if self.is_global_zero:
            invalidate_checksums(filepath)
        self.barrier("fusionrec.checksums.invalidated")
        super().save_checkpoint(checkpoint, filepath, storage_options)
        if self.is_global_zero:
            write_checksums(filepath)
        self.barrier("fusionrec.checksums.written")

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        if Path(checkpoint_path).is_dir():
            self._verify_folder(checkpoint_path)
        with _weights_only_deepspeed_loads():
            return super().load_checkpoint(checkpoint_path, weights_only=True)

    def _verify_folder(self, folder: Any) -> None:
        """Rank 0 checks the folder against its manifest (one read, not one per rank); every rank raises its error."""
        from trainer.engine.checkpoint_checksums import verify_checksums
        from trainer.engine.checkpointing import CheckpointCorruptError

        error = None
        if self.is_global_zero:
            try:
                verify_checksums(folder)
            except CheckpointCorruptError as e:
                error = str(e)
        error = self.broadcast(error)
        if error is not None:
            raise CheckpointCorruptError(error)

    @contextmanager
    def model_sharded_context(self) -> Generator[None, None, None]:
        if not self.zero_stage_3:
            yield
            return
        from transformers.integrations import HfDeepSpeedConfig

        self._init_config_if_needed()
        # transformers keeps only a weak reference: the strategy owns the object for the run's lifetime
        self._hf_config = HfDeepSpeedConfig(self.config)
        yield


class CPUDeepSpeedStrategy(FusionDeepSpeedStrategy):
    """DeepSpeed over gloo on CPU; Lightning's version refuses non-CUDA accelerators in three places."""

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # skip the CUDA-only check

    def setup_distributed(self) -> None:
        from lightning_fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()  # no device-index validation: CPU devices have no index
        with _without_shm_comm_op():
            self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu", 0)  # DeepSpeed reads root_device.index as its device rank


@contextmanager
def _weights_only_deepspeed_loads() -> Generator[None, None, None]:
    """DeepSpeed's TorchCheckpointEngine.load calls `torch.load(weights_only=False)`: a checkpoint from an untrusted
    path could run code. Our shards hold tensors, containers, primitives and a few DeepSpeed enums / torch types,
    which are allowed explicitly; anything else is refused with pickle's error naming the type."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    def load(self: Any, path: str, map_location: Any = None) -> Any:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)

    original = TorchCheckpointEngine.load
    TorchCheckpointEngine.load = load  # type: ignore[method-assign]
    try:
        yield
    finally:
        TorchCheckpointEngine.load = original  # type: ignore[method-assign]


def _deepspeed_safe_globals() -> list[Any]:
    import deepspeed.runtime.fp16.loss_scaler as loss_scaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, loss_scaler.LossScaler, loss_scaler.DynamicLossScaler, fragment_address, torch.Size]


@contextmanager
def _without_shm_comm_op() -> Generator[None, None, None]:
    """DeepSpeed's CPU backend compiles a shared-memory all-reduce (a C++ toolchain and ~1 min on 2 cores) that
    only `inference_all_reduce` uses; training collectives go through torch.distributed (gloo) either way."""
    import importlib

    # not `import deepspeed.comm.torch`: that name, as an attribute of deepspeed.comm, is torch itself
    ds_torch = importlib.import_module("deepspeed.comm.torch")
    build = ds_torch.build_shm_op
    ds_torch.build_shm_op = lambda: None
    try:
        yield
    finally:
        ds_torch.build_shm_op = build


def consolidate_zero_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The full fp32 state dict of a DeepSpeed ZeRO checkpoint folder (what Lightning saves under DeepSpeed), with
    the LightningModule's own key names (Lightning's `_forward_module.` wrapper prefix removed).

    DeepSpeed's `zero_to_fp32` merges the shards but reads them with `torch.load(weights_only=False)`; here every
    load it makes goes through the same weights-only load as a resume, so a folder from an untrusted place cannot
    run code (pickle's error names the refused type instead)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    from deepspeed.utils import zero_to_fp32

    with _weights_only_loads_in(zero_to_fp32):
        state = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(path))
    prefix = "_forward_module."
    return {k.removeprefix(prefix): v for k, v in state.items()}


class _WeightsOnlyTorch:
    """`torch` as a module sees it, except that `torch.load` is always a weights-only load with DeepSpeed's types
    allowed (a `weights_only=False` argument is overridden, not obeyed)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def load(f: Any, map_location: Any = None, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            return torch.load(f, map_location=map_location, **kwargs)


@contextmanager
def _weights_only_loads_in(module: Any) -> Generator[None, None, None]:
    """Swap `module`'s `torch` for `_WeightsOnlyTorch` (only that module's loads change; torch itself does not)."""
    original = module.torch
    module.torch = _WeightsOnlyTorch()
    try:
        yield
    finally:
        module.torch = original


def zero_client_state(path: str | Path) -> dict[str, Any]:
    """What Lightning saved beside the weights of a DeepSpeed checkpoint folder (hyper-parameters, loop state,
    `fusionrec_dataset`), read with the same weights_only load as a resume. Rank 0's model states hold it:
    `mp_rank_00_model_states.pt` (ZeRO-1/2) or `zero_pp_rank_0_mp_rank_00_model_states.pt` (ZeRO-3), in the tag
    folder named by `latest` (else any tag folder, or the folder itself)."""
    root = Path(path)
    latest = root / "latest"
    tags = [root / latest.read_text().strip()] if latest.is_file() else [*sorted(root.glob("*/")), root]
    names = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
    files = [t / n for t in tags for n in names if (t / n).is_file()]
    if not files:
        raise FileNotFoundError(f"{path}: no {' or '.join(names)} inside (not a DeepSpeed checkpoint folder?)")
    return _WeightsOnlyTorch.load(files[0], map_location="cpu")
