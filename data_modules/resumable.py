"""`ResumableLoader`: a DataLoader over a `TrainStream` whose position is saved in checkpoints.

The position is (epoch, batches_done): how many batches of the epoch this loader has yielded. Since
every rank yields one batch per global batch, batches_done is also the number of global batches
consumed, so a state saved at one world size or worker count resumes at another: the next iteration
starts at global batch `batches_done` of that epoch.

Epochs, explicitly:
- `iter()` continues the current epoch from `batches_done`; if the epoch was completed
  (batches_done == len) it first moves to the start of the next epoch. So a plain loop over the
  loader walks epochs 0, 1, 2, ...; an iteration abandoned midway (limit_train_batches) is continued,
  not restarted, by the next `iter()`.
- `set_epoch(e)` moves to the start of epoch e, unless the loader is already in epoch e (so a data
  module calling `set_epoch(trainer.current_epoch)` keeps a position just loaded from a checkpoint).
- `load_state_dict(state)` moves to the saved position.

Lightning sees `state_dict`/`load_state_dict` (duck typing) and stores the state in its checkpoints;
it does not prefetch from loaders with `__len__`, so batches_done counts exactly the batches trained.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from data_modules.streaming import TrainStream


class ResumableLoader:
    """Wraps `DataLoader(stream, batch_size=None, num_workers=..., persistent_workers=False)`.

    Workers receive a copy of the stream when an iteration starts, which is how a new position reaches
    them; persistent workers would keep a stale copy, so they are refused.
    """

    def __init__(self, loader: DataLoader):
        if not isinstance(loader.dataset, TrainStream):
            raise ValueError(
                f"ResumableLoader needs a DataLoader over a TrainStream, got {type(loader.dataset).__name__}"
            )
        if loader.batch_size is not None:
            raise ValueError(
                f"the DataLoader must use batch_size=None (the stream yields batches), got {loader.batch_size}"
            )
        if loader.persistent_workers:
            raise ValueError("persistent_workers=True is not supported: workers must see each new position")
        self.loader = loader
        self.epoch, self.batches_done = loader.dataset.epoch, loader.dataset.start_batch
        self._generation = 0  # bumped on every move, so an abandoned iterator cannot move the count

    @property
    def dataset(self) -> TrainStream:
        return self.loader.dataset  # type: ignore[return-value]

    def __len__(self) -> int:
        """Batches per epoch on this rank (the whole epoch, also when resuming mid-epoch)."""
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` at the next `iter()`; a no-op when already in that epoch."""
        if epoch != self.epoch:
            self.epoch, self.batches_done = int(epoch), 0
            self._generation += 1

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.batches_done >= len(self):
            self.epoch, self.batches_done = self.epoch + 1, 0
        self.dataset.set_position(self.epoch, self.batches_done)
        self._generation += 1
        return self._count(iter(self.loader), self._generation)

    def _count(
        self, it: Iterator[dict[str, torch.Tensor]], generation: int
    ) -> Iterator[dict[str, torch.Tensor]]:
        for batch in it:
            if generation == self._generation:
                self.batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The position plus what must match for it to mean the same rows on resume."""
        ds = self.dataset
        return {
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "global_batch_size": ds.global_batch_size,
            "seed": ds.seed,
            "n_rows": ds.n_rows,
            "buffer_blocks": ds.buffer_blocks,
            "block_rows": ds.block_rows,
            "world_size": ds.world_size,  # informational: resuming at another world size is allowed
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at global batch `batches_done` of `epoch`; the order-defining settings must match."""
        ds = self.dataset
        for key in ("global_batch_size", "seed", "n_rows", "buffer_blocks", "block_rows"):
            if key in state and state[key] != getattr(ds, key):
                raise ValueError(
                    f"cannot resume: checkpoint has {key}={state[key]!r}, this loader has {getattr(ds, key)!r}"
                )
        if not 0 <= state["batches_done"] <= len(self):
            raise ValueError(f"cannot resume: batches_done={state['batches_done']} outside [0, {len(self)}]")
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])
        self._generation += 1
