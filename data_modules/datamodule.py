"""The LightningDataModule: prepares once, streams training batches to every rank, serves full-ranking evaluation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from data_modules.evaluation import RankingEvalSet
from data_modules.manifest import load_manifest, verify_checksums
from data_modules.resumable import ResumableLoader
from data_modules.side import SideData
from data_modules.streaming import TrainStream

log = logging.getLogger("fusionrec.data")


class FusionDataModule(pl.LightningDataModule):
    """Streams a prepared dataset.

    Args:
        dataset_dir: the prepared dataset folder (manifest.json + shards).
        prepare_config: optional prepare YAML; `prepare_data` runs it first (rank 0 of each node; a no-op when
            the fingerprint matches), so one run config goes from raw files to a trained model. Nodes sharing a
            filesystem build it once: the others wait on the folder's build lock and reuse it.
        batch_size: GLOBAL training batch (summed over ranks); each rank gets batch_size / world_size rows.
        eval_batch_size: users per evaluation batch on each rank.
        history_len: L, items of the user's history in each example.
        history_mode: which history a training example carries: `before` (items strictly earlier in time) or
            `all` (the user's latest items except the example's own); `auto` picks `before` for time-ordered
            splits and `all` for random ones, so training sees the same kind of history as evaluation.
        num_negatives: N sampled negatives per example (0: in-batch negatives only).
        negative_sampler: uniform | popularity (∝ count ** popularity_alpha; logQ kept for correction).
        num_workers: DataLoader workers per rank for training.
        buffer_blocks: shuffle window in blocks (row groups); memory stays bounded by it.
        seed: fixes the example order and negatives per epoch, for any world size.
        verify: check every shard's and side array's sha256 against the manifest at setup (once per process: the
            loaders then only compare sizes). False skips hashing; sizes are still checked when a file is opened.
        predict_split: which users `fusionrec predict` ranks for (their held-out items are not used).
    """

    def __init__(
        self,
        dataset_dir: str = "data/prepared/ml-100k",
        prepare_config: str | None = None,
        batch_size: int = 1024,
        eval_batch_size: int = 256,
        history_len: int = 50,
        history_mode: Literal["auto", "before", "all"] = "auto",
        num_negatives: int = 0,
        negative_sampler: Literal["uniform", "popularity"] = "uniform",
        popularity_alpha: float = 0.75,
        num_workers: int = 0,
        buffer_blocks: int = 16,
        seed: int = 2020,
        verify: bool = True,
        predict_split: Literal["valid", "test"] = "test",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.dataset_dir = Path(dataset_dir).expanduser()
        self.side: SideData | None = None
        self._train: ResumableLoader | None = None

    def prepare_data(self) -> None:
        if self.hparams.prepare_config:
            from data_modules.prepare.config import PrepareConfig
            from data_modules.prepare.pipeline import prepare

            cfg = PrepareConfig.from_yaml(self.hparams.prepare_config)
            cfg.output.dir = str(self.dataset_dir)
            prepare(cfg)

    def setup(self, stage: str | None = None) -> None:
        if self.side is not None:
            return
        manifest = load_manifest(self.dataset_dir)
        if self.hparams.verify:
            verify_checksums(self.dataset_dir, manifest)
        self.side = SideData(self.dataset_dir, manifest, verify=self.hparams.verify)
        c = manifest["counts"]
        log.info("dataset %s: %d users, %d items, train/valid/test %d/%d/%d (rank %d of %d)", self.dataset_dir, c["users"],
                 c["items"], c["train"], c["valid"], c["test"], self._rank(), self._world())

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def _world(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def train_dataloader(self) -> ResumableLoader:
        if self._train is None:
            h = self.hparams
            stream = TrainStream(self.dataset_dir, global_batch_size=h.batch_size, history_len=h.history_len,
                                 history_mode=self.resolved_history_mode(),
                                 num_negatives=h.num_negatives, negative_sampler=h.negative_sampler,
                                 popularity_alpha=h.popularity_alpha, seed=h.seed, buffer_blocks=h.buffer_blocks,
                                 rank=self._rank(), world_size=self._world(), verify=h.verify)
            self._train = ResumableLoader(DataLoader(stream, batch_size=None, num_workers=h.num_workers))
        if self.trainer is not None:
            self._train.set_epoch(self.trainer.current_epoch)
        return self._train

    def resolved_history_mode(self) -> str:
        if self.hparams.history_mode != "auto":
            return self.hparams.history_mode
        assert self.side is not None, "call setup() first"
        split = self.side.manifest["config"]["split"]
        timed = split["protocol"] in ("leave_one_out", "temporal") or (split["protocol"] == "ratio" and split["order"] == "time")
        return "before" if timed else "all"

    def _eval_loader(self, split: str) -> DataLoader:
        assert self.side is not None, "call setup() first"
        ds = RankingEvalSet(self.dataset_dir, self.side.manifest, split, self.hparams.history_len, self._rank(), self._world(),
                            verify=self.hparams.verify)
        return DataLoader(ds, batch_size=self.hparams.eval_batch_size, shuffle=False, collate_fn=ds.collate)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.hparams.predict_split)
