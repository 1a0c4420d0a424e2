"""Checkpoint files that survive a crash mid-write and never unpickle code, and exact mid-epoch resume.

`AtomicCheckpointIO` writes `<name>.tmp-<pid>` in the checkpoint's folder, fsyncs it and `os.replace`s it over the
target, so a process killed during a save leaves the previous checkpoint intact (a rename within one filesystem
is atomic; the plain `TorchCheckpointIO` truncates the target first); a full disk (ENOSPC) mid-write is the same
case, reported as such. Before loading, a checkpoint file's zip structure and CRC-32s are checked
(`check_checkpoint_file`), so a truncated or damaged file is a `CheckpointCorruptError` naming it, not a miniz or
unpickler trace. Loading always uses `torch.load(weights_only=True)`: tensors, containers and primitives only, so
a checkpoint from an untrusted path cannot run code. Our checkpoints hold only such types (hyper-parameters are plain dicts, the loader position is
ints).

`RestoreLoaderPosition` makes `fusionrec fit --ckpt_path <mid-epoch.ckpt>` continue at the saved batch; see its
docstring for the Lightning bug it works around.
"""

from __future__ import annotations

import errno
import logging
import os
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.types import _PATH

log = logging.getLogger("fusionrec.checkpointing")


def _is_local(path: _PATH) -> bool:
    return "://" not in str(path)


def atomic_torch_save(obj: Any, path: _PATH) -> None:
    """`torch.save(obj)` to `path` via a temp file in the same folder + fsync + `os.replace` (+ fsync of the folder,
    so the rename itself is durable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise OSError(e.errno, f"{e.strerror} while writing checkpoint {path}: nothing was replaced, "
                      f"{'the previous ' + path.name + ' is unchanged' if path.exists() else 'no file was written'}; "
                      "free space and resume from the last checkpoint") from e
    finally:
        tmp.unlink(missing_ok=True)  # only left when the write failed
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class CheckpointCorruptError(ValueError):
    """A checkpoint file that is truncated, damaged or not a PyTorch checkpoint; the message names the file."""


def check_checkpoint_file(path: _PATH) -> None:
    """Raise CheckpointCorruptError naming `path` unless it is a complete zip archive (what `torch.save` writes)
    whose every member matches its CRC-32. torch itself checks no CRC: a flipped bit in a tensor loads silently,
    and a truncated or damaged file fails deep in the unpickler or miniz with a message that names no file.
    Reads the file once (~GB/s); a folder (a DeepSpeed checkpoint) or a missing path is left to the loader."""
    path = Path(path)
    if not path.is_file():
        return
    advice = "use another checkpoint (the previous last.ckpt, a best-*.ckpt) or re-run training"
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as e:
        raise CheckpointCorruptError(f"checkpoint {path} ({path.stat().st_size} bytes) is not a complete PyTorch "
                                     f"checkpoint ({e}): the file is truncated or damaged; {advice}") from None
    if bad is not None:
        raise CheckpointCorruptError(f"checkpoint {path}: its part {bad!r} fails its CRC-32 check: the file is "
                                     f"damaged; {advice}")


def load_weights_only(path: _PATH, map_location: Any = "cpu") -> dict[str, Any]:
    """`torch.load(path, weights_only=True)`; `pickle.UnpicklingError` for a file holding arbitrary objects,
    CheckpointCorruptError for a truncated or damaged one."""
    check_checkpoint_file(path)
    with open(path, "rb") as f:
        return torch.load(f, map_location=map_location, weights_only=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: atomic local writes, `weights_only=True` loads (remote paths: Lightning's writer)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: _PATH, map_location: Callable | Any | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        # weights_only is forced: `--weights_only false` must not turn a checkpoint path into code execution
        if weights_only is False:
            log.warning("ignoring weights_only=False: fusionrec checkpoints load with weights_only=True")
        if _is_local(path):
            check_checkpoint_file(path)
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def with_atomic_checkpoint_io(plugins: Any) -> list[Any]:
    """The trainer's `plugins` plus an `AtomicCheckpointIO`, unless one CheckpointIO is configured already."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


class RestoreLoaderPosition(pl.Callback):
    """Load the training loader's saved position before the first batch of a resumed fit.

    Lightning restores stateful loaders in `FitLoop.setup_data()`, but `configure_optimizers` reading
    `trainer.estimated_stepping_batches` (our warmup + cosine schedule does) runs `setup_data()` *before* the
    checkpoint's loop state is restored; the later call returns early, so the saved position is silently dropped
    and the resumed epoch replays the epoch's first batches (Lightning-AI/pytorch-lightning#20550, open in 2.6).
    At `on_train_start` the state has been restored and no batch fetched: load it now and re-create the fetcher's
    iterator, as the normal path does. A no-op when Lightning has already loaded it (nothing pending).
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loop = trainer.fit_loop
        if not getattr(loop, "_combined_loader_states_to_load", None):
            return
        if not loop.restarting:
            # the checkpoint's epoch had finished (e.g. last.ckpt of a completed epoch): the next epoch starts at its
            # beginning and Lightning ignores the saved position on purpose; so do we
            loop._combined_loader_states_to_load = []
            return
        if loop._combined_loader is None or loop._data_fetcher is None:
            raise RuntimeError("RestoreLoaderPosition: the fit loop has loader states but no loader (Lightning changed?)")
        loop._load_combined_loader_states()
        if loop._combined_loader_states_to_load:
            raise RuntimeError("RestoreLoaderPosition: Lightning did not load the saved loader states")
        iter(loop._data_fetcher)  # the iterator made before the restore started at the wrong position
        log.info("resumed the training loader at %s", loop._combined_loader._state_dicts())
