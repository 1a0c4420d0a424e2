"""What `fusionrec report` reads from one run folder: TensorBoard scalars, the run config, predictions.

A run folder is a Lightning log folder (`<save_dir>/<name>/version_N`): `events.out.tfevents*` (fit, and any
test / predict run logged into the same version), `config.yaml` (LightningCLI's saved config) and, after
`fusionrec predict`, `predictions/rank-*.parquet` (trainer/inference/prediction_writer.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

HEAD_SHARE = 0.2
"""Share of the catalog, most popular first (by training interactions), that is the *head*; the rest is the long
tail (the 20 / 80 split of Abdollahpouri et al., "Managing Popularity Bias in Recommender Systems", 2019)."""


@dataclass
class Popularity:
    """Popularity bias of one run's recommendations (top-K per user from `fusionrec predict`).

    coverage: distinct recommended items / catalog size; tail_share: share of recommended slots that are long-tail
    items; catalog_tail_share: the tail's share of training interactions (what a popularity-blind sampler of
    interactions would give); decile_share (10,): share of recommended slots per catalog popularity decile (most
    popular first); train_decile_share (10,): idem for training interactions."""

    k: int
    users: int
    n_items: int
    coverage: float
    tail_share: float
    catalog_tail_share: float
    mean_rec_popularity: float
    decile_share: np.ndarray
    train_decile_share: np.ndarray


@dataclass
class RunData:
    """One run folder, read. `scalars[tag]` is a frame with columns step, value (one row per step: the last
    value logged at that step, so a resumed run's repeated steps count once)."""

    path: Path
    label: str
    scalars: dict[str, pd.DataFrame]
    config: dict[str, Any]
    monitor: str | None = None
    mode: str = "max"
    best_step: int | None = None
    valid: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    user_gates: pd.DataFrame | None = None  # per-user gates from predictions: one column per source
    popularity: Popularity | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def metric_names(self) -> list[str]:
        """Every ranking / rating metric logged, without the split prefix, in the order first seen."""
        names: list[str] = []
        for tag in self.scalars:
            if tag.startswith(("val/", "test/")):
                n = tag.split("/", 1)[1]
                if n not in names:
                    names.append(n)
        return names


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders named by `paths`: each is a folder with event files, or a folder above such folders (every
    `version_*` below it, sorted). A path with neither is a FileNotFoundError naming it."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise FileNotFoundError(f"run folder {p} does not exist")
        if any(p.glob("events.out.tfevents*")):
            out.append(p)
            continue
        below = sorted({f.parent for f in p.rglob("events.out.tfevents*")})
        if not below:
            raise FileNotFoundError(f"{p}: no TensorBoard event files (events.out.tfevents*) in it or below it")
        out.extend(below)
    return out


def read_scalars(run: Path) -> dict[str, pd.DataFrame]:
    """tag -> frame (step, value) from every event file of `run` (fit, test and predict runs logged there)."""
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # one "directory watcher advancing" line per file
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        ev = acc.Scalars(tag)
        df = pd.DataFrame({"step": [e.step for e in ev], "value": [e.value for e in ev]})
        out[tag] = df.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)
    return out


def read_run(run: Path, label: str, dataset_dir: str | Path | None = None) -> RunData:
    """Everything the report shows for one run. `dataset_dir` overrides the prepared dataset named by the run's
    config (`data.dataset_dir`, resolved against the current folder), which popularity bias needs."""
    cfg_path = run / "config.yaml"
    config = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else {}
    data = RunData(path=run, label=label, scalars=read_scalars(run), config=config or {})
    if not cfg_path.is_file():
        data.notes.append("no config.yaml: the monitored metric is assumed to be val/ndcg (max)")
    data.monitor, data.mode = _monitor(data.config)
    _best(data)
    data.test = {t.split("/", 1)[1]: float(df["value"].iloc[-1]) for t, df in data.scalars.items() if t.startswith("test/")}
    preds = sorted((run / "predictions").glob("rank-*.parquet"))
    if preds:
        frame = pd.concat([pd.read_parquet(p) for p in preds], ignore_index=True)
        gates = [c for c in frame.columns if c.startswith("gate_")]
        if gates:
            per_user = frame.drop_duplicates("user")[gates]
            data.user_gates = per_user.rename(columns=lambda c: c.removeprefix("gate_")).reset_index(drop=True)
        ds = Path(dataset_dir) if dataset_dir else _dataset_dir(data.config)
        if ds is not None and (ds / "side" / "item_popularity.npy").is_file():
            data.popularity = dataset_popularity(frame, ds)
        else:
            data.notes.append(f"popularity bias: no prepared dataset at {ds} (pass --dataset DIR)")
    else:
        data.notes.append("no predictions/rank-*.parquet: run `fusionrec predict` with "
                          f"--trainer.logger.init_args.version {run.name.removeprefix('version_')} for popularity bias")
    return data


def dataset_popularity(frame: pd.DataFrame, dataset_dir: Path) -> Popularity:
    """`popularity` against a prepared dataset: its training popularity (`side/item_popularity.npy`, checked
    against the manifest) and item id map."""
    from data_modules.side import SideData

    pop = np.asarray(SideData(dataset_dir).array("item_popularity"), dtype=np.int64)
    ids = pd.read_parquet(dataset_dir / "id_maps" / "items.parquet", columns=["index", "id"])
    item_ids = np.empty(len(ids), dtype=object)
    item_ids[ids["index"].to_numpy()] = ids["id"].astype(str).to_numpy()
    try:
        return popularity(frame, pop, item_ids)
    except KeyError as e:
        raise ValueError(f"predicted item {e.args[0]!r} is not in {dataset_dir}/id_maps/items.parquet: "
                         "another dataset than the run's? (--dataset)") from None


def popularity(frame: pd.DataFrame, pop: np.ndarray, item_ids: np.ndarray) -> Popularity:
    """Popularity bias of a predictions frame (user, rank, item raw id, ...). pop (n_items,): training
    interactions per dense item index; item_ids (n_items,): raw id per dense index. An item not in `item_ids` is
    a KeyError naming it."""
    index_of = {str(v): i for i, v in enumerate(item_ids)}
    rec = frame["item"].astype(str).map(index_of)
    if rec.isna().any():
        raise KeyError(str(frame["item"][rec.isna()].iloc[0]))
    rec_idx = rec.to_numpy(dtype=np.int64)
    n = len(pop)
    # popularity order, most popular first; ties by index so the split is deterministic
    order = np.lexsort((np.arange(n), -pop))
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    n_head = max(1, int(round(HEAD_SHARE * n)))
    tail = position >= n_head
    decile = np.minimum(position * 10 // n, 9)
    rec_dec = np.bincount(decile[rec_idx], minlength=10) / max(len(rec_idx), 1)
    train_dec = np.bincount(decile, weights=pop, minlength=10) / max(pop.sum(), 1)
    return Popularity(
        k=int(frame["rank"].max()),
        users=int(frame["user"].nunique()),
        n_items=n,
        coverage=len(np.unique(rec_idx)) / n,
        tail_share=float(tail[rec_idx].mean()),
        catalog_tail_share=float(pop[tail].sum() / max(pop.sum(), 1)),
        mean_rec_popularity=float(pop[rec_idx].mean()),
        decile_share=rec_dec,
        train_decile_share=train_dec,
    )


def _monitor(config: dict[str, Any]) -> tuple[str | None, str]:
    """(monitored metric, mode) of the run's ModelCheckpoint callback; val/ndcg max when the config names none."""
    for cb in (config.get("trainer") or {}).get("callbacks") or []:
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("ModelCheckpoint"):
            args = cb.get("init_args") or {}
            if args.get("monitor"):
                return str(args["monitor"]), str(args.get("mode", "min"))
    return "val/ndcg", "max"


def _best(data: RunData) -> None:
    """The best validation step by the monitored metric, and every validation metric at that step."""
    mon = data.scalars.get(data.monitor or "")
    if mon is None or mon.empty:
        vals = [t for t in data.scalars if t.startswith("val/")]
        if not vals:
            return
        data.notes.append(f"{data.monitor} was not logged: the last validation is shown")
        mon = data.scalars[vals[0]]
        i = len(mon) - 1
    else:
        i = int(mon["value"].idxmax() if data.mode == "max" else mon["value"].idxmin())
    data.best_step = int(mon["step"].iloc[i])
    for tag, df in data.scalars.items():
        if tag.startswith("val/"):
            at = df[df["step"] == data.best_step]
            data.valid[tag.split("/", 1)[1]] = float((at if len(at) else df)["value"].iloc[-1])


def _dataset_dir(config: dict[str, Any]) -> Path | None:
    d = (config.get("data") or {}).get("dataset_dir")
    return Path(d).expanduser() if d else None


def labels(runs: list[Path]) -> list[str]:
    """Short distinct names: the last path parts that tell the runs apart (`tiny/version_0`)."""
    for depth in range(2, 8):
        names = ["/".join(r.resolve().parts[-depth:]) for r in runs]
        if len(set(names)) == len(names):
            return names
    return [str(r) for r in runs]
