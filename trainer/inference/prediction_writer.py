"""Writes `fusionrec predict` output: one parquet file per rank with each user's top-K items and source gates.

<output_dir>/predictions/rank-<r>.parquet   columns: user (raw id), rank (1..K), item (raw id), score,
                                            gate_<source> per user-tower source (when the fusion has gates)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from data_modules import layout

log = logging.getLogger("fusionrec.predict")


class PredictionWriter(BasePredictionWriter):
    """Collects the whole predict epoch and writes this rank's rows once, atomically (temp file + `os.replace`).

    Each predict batch from `FusionModule.predict_step` holds `user` (B,), `items` (B, K), `scores` (B, K) and
    optionally `gates` (B, S), S = the user tower's sources in `pl_module.towers.user.names` order. Dense indices are
    mapped back to the raw ids of the prepared dataset's `id_maps/{users,items}.parquet`.

    Args:
        output_dir: folder under which `predictions/` is written; None = the trainer's `log_dir`
            (the logger's version folder), else its `default_root_dir`.
    """

    def __init__(self, output_dir: str | None = None):
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self.last_path: Path | None = None

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        batches = _flatten(predictions)
        # the FusionModule / FusionDataModule pair: towers are built in configure_model, dataset_dir is a plain path
        ids = Path(cast(Any, trainer).datamodule.dataset_dir) / layout.ID_MAPS
        gate_names = list(cast(Any, pl_module).towers.user.names)
        frame = predictions_frame(
            batches, _id_map(ids / "users.parquet"), _id_map(ids / "items.parquet"), gate_names
        )
        root = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        path = root / "predictions" / f"rank-{trainer.global_rank}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            frame.to_parquet(tmp, index=False)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.last_path = path
        log.info(
            "wrote %d predictions for %d users (rank %d) to %s",
            len(frame),
            frame["user"].nunique(),
            trainer.global_rank,
            path,
        )


def predictions_frame(
    batches: Sequence[dict[str, Any]], users_map: np.ndarray, items_map: np.ndarray, gate_names: Sequence[str]
) -> pd.DataFrame:
    """Long format, one row per (user, rank): `user`, `rank` (1..K), `item`, `score` (float32) and `gate_<name>`
    (float32, the user's gate repeated on each of its K rows). `*_map` are (n,) arrays: dense index -> raw id."""
    columns = ["user", "rank", "item", "score", *(f"gate_{n}" for n in gate_names)]
    if not batches:
        return pd.DataFrame({c: pd.Series(dtype="float32") for c in columns})
    users = np.concatenate([_np(b["user"]) for b in batches]).astype(np.int64)  # (N,)
    items = np.concatenate([_np(b["items"]) for b in batches]).astype(np.int64)  # (N, K)
    scores = np.concatenate([_np(b["scores"]) for b in batches]).astype(np.float32)  # (N, K)
    n, k = items.shape
    out: dict[str, Any] = {
        "user": np.repeat(users_map[users], k),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
        "item": items_map[items.reshape(-1)],
        "score": scores.reshape(-1),
    }
    if all("gates" in b for b in batches):
        gates = np.concatenate([_np(b["gates"]) for b in batches]).astype(np.float32)  # (N, S)
        if gates.shape[1] != len(gate_names):
            raise ValueError(
                f"gates have {gates.shape[1]} columns but the user tower has sources {list(gate_names)}"
            )
        for i, name in enumerate(gate_names):
            out[f"gate_{name}"] = np.repeat(gates[:, i], k)
    return pd.DataFrame(out)


def _flatten(predictions: Sequence[Any]) -> list[dict[str, Any]]:
    """One dataloader gives a list of batch dicts; several give a list of such lists."""
    flat: list[dict[str, Any]] = []
    for p in predictions:
        flat.extend(_flatten(p) if isinstance(p, (list, tuple)) else [p])
    return flat


def _id_map(path: Path) -> np.ndarray:
    """(n,) object array of raw id strings, position = dense index."""
    t = pq.read_table(path, columns=["index", "id"]).to_pandas()
    ids = np.empty(len(t), dtype=object)
    ids[t["index"].to_numpy()] = t["id"].astype(str).to_numpy()
    return ids


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
