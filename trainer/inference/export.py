"""`fusionrec export CHECKPOINT --out DIR [--config RUN.yaml]`: a trained model as plain files for serving.

    DIR/model.safetensors            the whole FusionModule state dict (every key, tied weights stored per key)
    DIR/adapter/{item,user}/         peft `save_pretrained` of each text source trained with LoRA (if any)
    DIR/user_embeddings.safetensors  "embeddings" (n_users, D): every user's fused vector, conditioned as in
                                     `fusionrec predict` (history = train + valid items for the test split)
    DIR/item_embeddings.safetensors  "embeddings" (n_items, D): every item's fused vector, as ranked in evaluation
                                     (items without training interactions use text and attributes only)
    DIR/id_maps/{users,items}.parquet  row i of the embeddings = dense index i -> raw id (copied from the dataset)
    DIR/item_index.faiss             FAISS HNSW graph (inner product) over the item vectors (trainer/inference/ann_index.py)
    DIR/seen.safetensors             "offsets" (n_users + 1,), "items": each user's items evaluation masks (seen)
    DIR/candidates.safetensors       "items": the only rankable items, written under cold_start_eval
    DIR/config.json                  model hyper-parameters, dataset fingerprint, source paths, file list
Scores are `user_embeddings @ item_embeddings.T`, the same numbers evaluation ranks by; `fusionrec recommend`
(trainer/inference/recommend.py) serves top-K from these files. The folder is written beside DIR and swapped in
whole, so DIR is either the previous export or the new one.

The model is rebuilt from the run config (Lightning's `config.yaml` in the checkpoint's log folder, or `--config`)
and the prepared dataset it names; weights load with `torch.load(weights_only=True)`; a DeepSpeed ZeRO checkpoint
folder (ZeRO-1/2/3) is consolidated to fp32 first, its shards read with the same weights-only load.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from data_modules import layout
from data_modules.evaluation import RankingEvalSet
from data_modules.side import SideData
from trainer.engine.backbone_weights import KEY as BACKBONES_KEY
from trainer.engine.backbone_weights import restore_frozen_backbones
from trainer.engine.checkpointing import load_weights_only
from trainer.engine.dataset_guard import KEY as DATASET_KEY
from trainer.engine.dataset_guard import check_dataset, dataset_identity
from trainer.engine.module import FusionModule
from trainer.inference.ann_index import INDEX_FILE, ExactIndex, HNSWConfig, HNSWIndex

log = logging.getLogger("fusionrec.export")


def find_run_config(checkpoint: Path) -> Path:
    """`config.yaml` that Lightning saved in the log folder: next to the checkpoint or one level up
    (`<log_dir>/checkpoints/<name>.ckpt`)."""
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise FileNotFoundError(f"no config.yaml next to {checkpoint} or in its parent folder: pass --config RUN.yaml")


def load_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """A Lightning checkpoint file, or a DeepSpeed checkpoint folder as one (`state_dict` consolidated to fp32, and
    the client state's `fusionrec_dataset`); both read with weights_only loads. The state dict of a file
    lacks its frozen text-backbone weights (trainer/engine/backbone_weights.py)."""
    if checkpoint.is_dir():
        from trainer.engine.checkpoint_checksums import verify_checksums
        from trainer.engine.strategies import consolidate_zero_checkpoint, zero_client_state

        verify_checksums(checkpoint)  # a truncated shard or an unfinished save: an error naming the file
        client = zero_client_state(checkpoint)  # also holds DeepSpeed's own copy of the module: keep our records only
        return {**{k: client[k] for k in (DATASET_KEY, BACKBONES_KEY) if k in client},
                "state_dict": consolidate_zero_checkpoint(checkpoint)}
    return load_weights_only(checkpoint)


def load_model(checkpoint: str | Path, config: str | Path | None = None,
               allow_dataset_change: bool = False) -> tuple[FusionModule, dict[str, Any]]:
    """(model in eval mode with the checkpoint's weights, the run config's `data` section). Refuses a run config
    whose dataset is not the one the checkpoint was trained on (trainer/engine/dataset_guard.py)."""
    checkpoint = Path(checkpoint)
    cfg_path = Path(config) if config else find_run_config(checkpoint)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg = cfg.get("fit", cfg)  # a config dumped with the subcommand on top
    data = dict(cfg["data"])
    model = FusionModule(**{k: v for k, v in cfg["model"].items() if not k.startswith("_")})
    dataset_dir = Path(data["dataset_dir"]).expanduser()
    side = SideData(dataset_dir)
    ckpt = load_checkpoint(checkpoint)
    check_dataset(ckpt.get(DATASET_KEY), dataset_identity(side.manifest, dataset_dir), str(checkpoint),
                  allow_dataset_change, override="--allow-dataset-change")
    model.build_towers(side, int(data.get("history_len", 50)))
    restore_frozen_backbones(model, ckpt, str(checkpoint))  # verified against the recorded digest, then filled in
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.eval(), data | {"config_path": str(cfg_path)}


@torch.no_grad()
def all_embeddings(model: FusionModule, dataset_dir: Path, history_len: int, split: str = "test",
                   batch_size: int = 256, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(users (n_users, D), items (n_items, D)) exactly as evaluation computes them: items via the module's
    catalog encoding, users via `encode_eval_users` on `split`'s conditioning (RankingEvalSet), for every user."""
    ctx = model.towers.context()  # what FusionModule's evaluation encodes the catalog and users with
    items = model._all_items(ctx)
    side = SideData(dataset_dir)
    ds = RankingEvalSet(dataset_dir, side.manifest, split, history_len)
    ds.users = np.arange(side.n_users)  # every user, not only those with held-out items
    users = []
    for batch in tqdm(DataLoader(ds, batch_size=batch_size, collate_fn=ds.collate), desc="users", unit="batch",
                      disable=not progress):
        users.append(model.encode_eval_users(batch, {**ctx, **batch})[0])
    return torch.cat(users), items


def _full_state_dict(model: FusionModule) -> dict[str, torch.Tensor]:
    """Every key of the state dict; a tensor shared by several keys (tied item ids) is copied per key, because
    safetensors refuses aliases and a strict load needs every key."""
    seen: set[int] = set()
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        key = v.untyped_storage().data_ptr()
        out[k] = v.clone().contiguous() if key in seen or not v.is_contiguous() else v
        seen.add(key)
    return out


def _check_out(out: Path) -> None:
    """`out` must be new, empty, or an earlier export: the whole folder is replaced, so refuse anything else."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file())):
        raise ValueError(f"--out {out} exists and is not a fusionrec export (no config.json): not replacing it; "
                         "choose a new or empty folder")


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace `out` by the finished folder `tmp` with renames on one filesystem: a reader sees the old export or
    the new one, never a mix of both (between the two renames `out` is briefly absent)."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def write_retrieval(out: Path, model: FusionModule, items: torch.Tensor, eval_set: RankingEvalSet,
                    hnsw: HNSWConfig) -> dict[str, Any]:
    """seen.safetensors ("offsets" (n_users + 1,), "items" (nnz,): per user, the distinct items evaluation masks
    for the export's split), candidates.safetensors ("items" (M,): the rankable items, written only under
    cold_start_eval) and the HNSW index of the rankable items' vectors; returns config.json's "retrieval"."""
    n_users, n_items = len(eval_set.seq_offsets) - 1, len(items)
    owner = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(eval_set.seq_offsets))
    pairs = np.unique(owner * n_items + eval_set.seq_items.astype(np.int64))  # distinct (user, item), sorted
    offsets = np.concatenate([[0], np.cumsum(np.bincount(pairs // n_items, minlength=n_users))])
    save_file({"offsets": torch.from_numpy(offsets.astype(np.int64)),
               "items": torch.from_numpy((pairs % n_items).astype(np.int64))}, str(out / "seen.safetensors"))
    vectors = items.detach().cpu().float().numpy()
    ids = None
    if model.cold_start_eval:  # evaluation ranks only items without training interactions
        ids = torch.nonzero(model.item_cold.cpu()).flatten()
        save_file({"items": ids.to(torch.int64).contiguous()}, str(out / "candidates.safetensors"))
        ids = ids.numpy()
    exact = ExactIndex(vectors if ids is None else vectors[ids], ids)
    HNSWIndex.build(exact, hnsw).save(out / INDEX_FILE)
    return {"index": INDEX_FILE, "library": f"faiss {_faiss_version()}", "kind": HNSWIndex.kind,
            "metric": "inner product (the evaluation score; cosine when model.normalize)",
            "hnsw": asdict(hnsw), "seen": "seen.safetensors",
            "candidates": "candidates.safetensors" if ids is not None else "all items",
            "items_indexed": len(exact.ids)}


def _faiss_version() -> str:
    import faiss

    return faiss.__version__


def export(checkpoint: str | Path, out: str | Path, config: str | Path | None = None, progress: bool = True,
           allow_dataset_change: bool = False, hnsw: HNSWConfig | None = None) -> Path:
    """Write the export to a temporary folder beside `out`, then swap it in (`_swap_in`)."""
    checkpoint, out = Path(checkpoint), Path(out)
    hnsw = hnsw or HNSWConfig()
    _check_out(out)
    steps = tqdm(total=6, desc="export", unit="step", disable=not progress)
    model, data = load_model(checkpoint, config, allow_dataset_change)
    dataset_dir = Path(data["dataset_dir"]).expanduser()
    steps.update()
    out.parent.mkdir(parents=True, exist_ok=True)
    final, out = out, out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(out, ignore_errors=True)  # left by a run of this process id that was killed
    out.mkdir()
    try:
        n_users, n_items, meta = _write(model, data, dataset_dir, checkpoint, out, hnsw, steps, progress)
        _swap_in(out, final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    steps.close()
    log.info("exported %s to %s: model.safetensors, %d user and %d item embeddings (dim %d), id_maps, %s index of "
             "%d items, config.json%s", checkpoint, final, n_users, n_items, meta["dim"], meta["retrieval"]["kind"],
             meta["retrieval"]["items_indexed"], "".join(f", adapter/{t}" for t in meta["files"]["adapters"]))
    return final


def _write(model: FusionModule, data: dict[str, Any], dataset_dir: Path, checkpoint: Path, out: Path,
           hnsw: HNSWConfig, steps: tqdm, progress: bool) -> tuple[int, int, dict[str, Any]]:
    """Every file of the export into `out`; returns (users, items, config.json's content)."""
    save_file(_full_state_dict(model), str(out / "model.safetensors"))
    steps.update()
    adapters = {}
    for tower in ("item", "user"):
        encoders = getattr(model.towers, tower).encoders
        enc = encoders["text"] if "text" in encoders else None
        if enc is not None and enc.mode == "lora":
            enc.backbone.save_pretrained(str(out / "adapter" / tower))
            adapters[tower] = f"adapter/{tower}"
    steps.update()
    split = data.get("predict_split", "test")
    history_len = int(data.get("history_len", 50))
    users, items = all_embeddings(model, dataset_dir, history_len, split, progress=progress)
    save_file({"embeddings": users.contiguous()}, str(out / "user_embeddings.safetensors"))
    save_file({"embeddings": items.contiguous()}, str(out / "item_embeddings.safetensors"))
    steps.update()
    side = SideData(dataset_dir)
    retrieval = write_retrieval(out, model, items, RankingEvalSet(dataset_dir, side.manifest, split, history_len),
                                hnsw)
    steps.update()
    shutil.copytree(dataset_dir / layout.ID_MAPS, out / "id_maps", dirs_exist_ok=True)
    manifest = side.manifest
    meta = {
        "model": dict(model.hparams),
        "dataset": {"dir": str(dataset_dir.resolve()), "name": manifest.get("name"),
                    "fingerprint": manifest.get("fingerprint"), "counts": manifest.get("counts")},
        "checkpoint": str(checkpoint.resolve()),
        "run_config": str(Path(data["config_path"]).resolve()),
        "split": split,
        "history_len": history_len,
        "user_conditioning": f"{split} split: history = train" + (" + valid" if split == "test" else "") + " items",
        "score": "user_embeddings @ item_embeddings.T",
        "dim": int(items.shape[1]),
        "retrieval": retrieval,
        "files": {"model": "model.safetensors", "user_embeddings": "user_embeddings.safetensors",
                  "item_embeddings": "item_embeddings.safetensors", "id_maps": "id_maps", "adapters": adapters,
                  "index": retrieval["index"], "seen": retrieval["seen"]},
    }
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    steps.update()
    return len(users), len(items), meta
