"""`fusionrec export CHECKPOINT --out DIR [--config RUN.yaml]`: a trained model as plain files for serving.

    DIR/model.safetensors            the whole FusionModule state dict (every key, tied weights stored per key)
    DIR/adapter/{item,user}/         peft `save_pretrained` of each text source trained with LoRA (if any)
    DIR/user_embeddings.safetensors  "embeddings" (n_users, D): every user's fused vector, conditioned as in
                                     `fusionrec predict` (history = train + valid items for the test split)
    DIR/item_embeddings.safetensors  "embeddings" (n_items, D): every item's fused vector, as ranked in evaluation
                                     (items without training interactions use text and attributes only)
    DIR/id_maps/{users,items}.parquet  row i of the embeddings = dense index i -> raw id (copied from the dataset)
    DIR/config.json                  model hyper-parameters, dataset fingerprint, source paths, file list
Scores are `user_embeddings @ item_embeddings.T`, the same numbers evaluation ranks by.

The model is rebuilt from the run config (Lightning's `config.yaml` in the checkpoint's log folder, or `--config`)
and the prepared dataset it names; weights load with `torch.load(weights_only=True)`; a DeepSpeed ZeRO checkpoint
folder (ZeRO-1/2/3) is consolidated to fp32 first, its shards read with the same weights-only load.
"""

from __future__ import annotations

import json
import logging
import shutil
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


def export(checkpoint: str | Path, out: str | Path, config: str | Path | None = None, progress: bool = True,
           allow_dataset_change: bool = False) -> Path:
    checkpoint, out = Path(checkpoint), Path(out)
    steps = tqdm(total=5, desc="export", unit="step", disable=not progress)
    model, data = load_model(checkpoint, config, allow_dataset_change)
    dataset_dir = Path(data["dataset_dir"]).expanduser()
    steps.update()
    out.mkdir(parents=True, exist_ok=True)
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
    users, items = all_embeddings(model, dataset_dir, int(data.get("history_len", 50)), split, progress=progress)
    save_file({"embeddings": users.contiguous()}, str(out / "user_embeddings.safetensors"))
    save_file({"embeddings": items.contiguous()}, str(out / "item_embeddings.safetensors"))
    steps.update()
    shutil.copytree(dataset_dir / layout.ID_MAPS, out / "id_maps", dirs_exist_ok=True)
    manifest = SideData(dataset_dir).manifest
    meta = {
        "model": dict(model.hparams),
        "dataset": {"dir": str(dataset_dir.resolve()), "name": manifest.get("name"),
                    "fingerprint": manifest.get("fingerprint"), "counts": manifest.get("counts")},
        "checkpoint": str(checkpoint.resolve()),
        "run_config": str(Path(data["config_path"]).resolve()),
        "user_conditioning": f"{split} split: history = train" + (" + valid" if split == "test" else "") + " items",
        "score": "user_embeddings @ item_embeddings.T",
        "dim": int(items.shape[1]),
        "files": {"model": "model.safetensors", "user_embeddings": "user_embeddings.safetensors",
                  "item_embeddings": "item_embeddings.safetensors", "id_maps": "id_maps", "adapters": adapters},
    }
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    steps.update()
    steps.close()
    log.info("exported %s to %s: model.safetensors, %d user and %d item embeddings (dim %d), id_maps, config.json%s",
             checkpoint, out, len(users), len(items), items.shape[1],
             "".join(f", adapter/{t}" for t in adapters))
    return out
