"""`fusionrec fit --init_from CKPT`: start training from a checkpoint trained on the dataset this one extends.

An appended dataset (data_modules/prepare/append.py) keeps every parent user and item at its dense index and
every vocabulary code, and lists its ancestors' fingerprints in `manifest.lineage`. So a checkpoint whose
`fusionrec_dataset` fingerprint is the dataset's own or one of its ancestors' has weights that still mean the
same thing row by row; any other checkpoint is refused (DatasetMismatchError): its id rows would land on other
users and items. So is a parent checkpoint when some of the dataset's valid / test interactions were the parent's
training rows (`lineage.parent_train_in_eval`, e.g. a random split redrawn over the grown table): its held-out
scores would not be held out (`--model.allow_dataset_change true` overrides this one).

Loading (`grow_into`): the model is built for the new dataset first (Lightning's `configure_model`), then each of
its parameters is taken from the checkpoint:

* same shape: copied;
* an `nn.Embedding` / `nn.EmbeddingBag` with more rows (user / item ids, rating biases, categorical vocabularies): the old rows copied
  to the same index, the new rows kept from the model's own initialisation, except that new user / item id rows
  are set from side sources where the tower has one: the mean of the (loaded) id rows of the `k` old entities
  nearest by the tower's tabular source (cosine of the attribute vectors, computed with the loaded weights);
* the graph source's node table (users, then items, then kg entities) moved block by block, new nodes the same
  way as new ids; kg entity rows are copied only when the entity count is unchanged;
* anything else of another shape (a changed model config) is a ValueError naming the parameter.

The checkpoint is read with `torch.load(weights_only=True)` after its zip CRCs are checked; only weights are
taken: the optimizer, scheduler and loop state start fresh (a fine-tune, not a resume).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.engine.backbone_weights import restore_frozen_backbones
from trainer.engine.checkpointing import load_weights_only
from trainer.engine.dataset_guard import KEY as DATASET_KEY
from trainer.engine.dataset_guard import DatasetMismatchError
from trainer.model.encoders.graph import GraphEncoder

log = logging.getLogger("fusionrec.init_from")
NEIGHBOURS = 10
"""Old entities averaged for a new id row (nearest by the tabular source)."""


def accepted_fingerprints(manifest: dict[str, Any]) -> list[str]:
    """The dataset's own fingerprint, then its ancestors' (nearest first): whose checkpoints `init_from` takes."""
    return [str(manifest.get("fingerprint")), *((manifest.get("lineage") or {}).get("ancestors") or [])]


def check_lineage(stored: dict[str, Any] | None, manifest: dict[str, Any], dataset_dir: str | Path,
                  checkpoint: str, allow_change: bool = False) -> tuple[int, int]:
    """(users, items) of the checkpoint's dataset after checking it is this dataset or an ancestor of it, and, for
    the parent, that none of this dataset's valid / test interactions were its training rows (`allow_change`
    overrides that second check only: an unrelated dataset is always refused)."""
    if stored is None:
        raise DatasetMismatchError(f"checkpoint {checkpoint} records no prepared-dataset fingerprint (written by an "
                                   "older fusionrec): cannot tell which users and items its id rows belong to")
    chain = accepted_fingerprints(manifest)
    if stored.get("fingerprint") not in chain:
        raise DatasetMismatchError(
            f"--init_from {checkpoint} was trained on the prepared dataset {stored.get('dir')} (fingerprint "
            f"{str(stored.get('fingerprint'))[:16]}…, counts {stored.get('counts')}), which is neither the dataset "
            f"given, {Path(dataset_dir).resolve()} (fingerprint {chain[0][:16]}…), nor one of its ancestors "
            f"({len(chain) - 1} in its manifest lineage): its id rows would belong to other users and items. Extend "
            "the checkpoint's dataset with `fusionrec data prepare CONFIG --append NEW... --out DIR` and fine-tune on that")
    lineage = manifest.get("lineage") or {}
    leak = lineage.get("parent_train_in_eval") or {}
    if stored.get("fingerprint") == (lineage.get("parent") or {}).get("fingerprint") and sum(leak.values()):
        what = (f"--init_from {checkpoint}: {leak.get('valid', 0)} valid and {leak.get('test', 0)} test interactions of "
                f"{Path(dataset_dir).resolve()} were training interactions of the parent it was trained on, so its "
                "scores on them are not held-out scores")
        if not allow_change:
            raise DatasetMismatchError(f"{what}. Split the appended dataset so the parent's training rows stay in "
                                       "training (e.g. split.protocol temporal), or pass "
                                       "--model.allow_dataset_change true if that is intended")
        log.warning("%s; continuing because the dataset change is allowed explicitly", what)
    counts = stored.get("counts") or {}
    return int(counts["users"]), int(counts["items"])


def init_from_checkpoint(module: nn.Module, checkpoint: str | Path, manifest: dict[str, Any],
                         dataset_dir: str | Path, allow_change: bool = False) -> dict[str, Any]:
    """Load `checkpoint` into the built `module` (a FusionModule with towers) growing its tables; returns what was
    done: {"copied", "grown": {name: (old rows, new rows)}, "from_side": {table: rows}}."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"--init_from {path}: not a checkpoint file (a DeepSpeed checkpoint folder: "
                                "consolidate it first, `python <folder>/zero_to_fp32.py <folder> model.ckpt`)")
    ckpt = load_weights_only(path)
    old_users, old_items = check_lineage(ckpt.get(DATASET_KEY), manifest, dataset_dir, str(path), allow_change)
    restore_frozen_backbones(module, ckpt, str(path))  # frozen text weights are not stored: verified and put back
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"--init_from {path}: no state_dict in the checkpoint")
    report = grow_into(module, state, old_users, old_items)
    log.info("init_from %s: %d tensors copied, %d grown %s, new rows from side sources %s; optimizer starts fresh",
             path, report["copied"], len(report["grown"]), report["grown"], report["from_side"])
    return report


def grow_into(module: nn.Module, state: dict[str, Tensor], old_users: int, old_items: int) -> dict[str, Any]:
    """Copy `state` (a parent's state dict) into `module`'s parameters, growing id tables (see module docstring)."""
    towers = module.towers
    graphs = {id(m.embedding.weight): m for m in module.modules() if isinstance(m, GraphEncoder)}
    embeddings = {id(m.weight) for m in module.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    ids = {id(t.encoders["id"].embedding.weight): (t, old) for t, old in ((towers.user, old_users), (towers.item, old_items))
           if "id" in t.encoders}
    report: dict[str, Any] = {"copied": 0, "grown": {}, "from_side": {}}
    unknown = [k for k in state if k not in module.state_dict()]
    if unknown:
        raise ValueError(f"--init_from: the checkpoint has {len(unknown)} tensors this model does not (e.g. "
                         f"{unknown[0]!r}): build the model with the config the checkpoint was trained with")
    with torch.no_grad():
        grown: list[tuple[nn.Parameter, Tensor]] = []
        for name, p in module.named_parameters():
            if name not in state:
                raise ValueError(f"--init_from: the checkpoint has no {name!r}: build the model with the config "
                                 "the checkpoint was trained with")
            old = state[name].to(p.dtype)
            if old.shape == p.shape:
                p.copy_(old)
                report["copied"] += 1
                continue
            if old.dim() != p.dim() or old.shape[1:] != p.shape[1:] or old.shape[0] > p.shape[0] or id(p) not in embeddings:
                raise ValueError(f"--init_from: {name} is {tuple(old.shape)} in the checkpoint but {tuple(p.shape)} here: "
                                 "only embedding tables may grow (new ids or vocabulary values); use the model config "
                                 "the checkpoint was trained with")
            if id(p) in graphs:
                _graph_rows(graphs[id(p)], p, old, old_users, old_items)
            else:
                p[: old.shape[0]] = old
            report["grown"][name] = (int(old.shape[0]), int(p.shape[0]))
            grown.append((p, old))
        # new id rows from side sources, once every old weight (the tabular source's too) is in place
        for p, _ in grown:
            if id(p) in ids:
                tower, n_old = ids[id(p)]
                near = nearest_old(tower, n_old, p.shape[0])
                if near is not None:
                    rows, idx = near
                    p[rows] = p[idx].mean(dim=1)
                    report["from_side"][f"{'user' if tower is towers.user else 'item'}_id"] = int(len(rows))
                    _graph_from_side(graphs, tower is towers.user, rows, idx, old_users, old_items, report)
    return report


def _graph_rows(g: GraphEncoder, p: Tensor, old: Tensor, old_users: int, old_items: int) -> None:
    """Node table [users | items | entities] of the parent moved to the child's blocks (new rows keep their init)."""
    n_ent_old = old.shape[0] - old_users - old_items
    n_ent_new = p.shape[0] - g.n_users - g.n_items
    if old_users > g.n_users or old_items > g.n_items:
        raise ValueError(f"--init_from: the checkpoint's graph has {old_users} users / {old_items} items, more than "
                         f"this dataset's {g.n_users} / {g.n_items}")
    p[:old_users] = old[:old_users]
    p[g.n_users:g.n_users + old_items] = old[old_users:old_users + old_items]
    if n_ent_old == n_ent_new:
        p[g.n_users + g.n_items:] = old[old_users + old_items:]
    elif n_ent_new:
        log.warning("init_from: the knowledge graph has %d entities, the checkpoint's %d: entity rows start from "
                    "their initialisation", n_ent_new, n_ent_old)


def _graph_from_side(graphs: dict[int, GraphEncoder], users: bool, rows: Tensor, idx: Tensor, old_users: int,
                     old_items: int, report: dict[str, Any]) -> None:
    """New users' / items' graph nodes set like their id rows (mean of the same old neighbours' nodes)."""
    for g in graphs.values():
        w = g.embedding.weight
        base = 0 if users else g.n_users
        w[base + rows] = w[base + idx].mean(dim=1)
        report["from_side"][f"graph_{'user' if users else 'item'}"] = int(len(rows))


def nearest_old(tower: nn.Module, n_old: int, n: int, k: int = NEIGHBOURS) -> tuple[Tensor, Tensor] | None:
    """(new rows (R,), their `k` nearest old entities (R, k)) by cosine of the tower's tabular source vectors, for
    the new entities n_old..n-1 that have attributes; None when the tower has no tabular source or nothing is new."""
    enc = tower.encoders["tabular"] if "tabular" in tower.encoders else None
    if enc is None or n <= n_old or n_old == 0:
        return None
    was = enc.training
    enc.eval()
    try:
        vec = torch.cat([enc(torch.arange(s, min(s + 4096, n))) for s in range(0, n, 4096)])
    finally:
        enc.train(was)
    new = torch.arange(n_old, n)
    has = _has_attributes(enc, new)
    if not has.any():
        return None
    unit = F.normalize(vec, dim=-1)
    sims = unit[new[has]] @ unit[:n_old].T  # (R, n_old)
    return new[has], sims.topk(min(k, n_old), dim=1).indices


def _has_attributes(enc: nn.Module, ids: Tensor) -> Tensor:
    """(R,) bool: entities with at least one known categorical / multi-categorical code or a numeric field."""
    out = torch.zeros(len(ids), dtype=torch.bool)
    for name, buf in enc.named_buffers():
        if name == "cat_codes" and buf.numel():
            out |= (buf[ids] > 0).any(dim=1)
        elif name.startswith("multi_offsets_"):
            out |= (buf[ids + 1] - buf[ids]) > 0
        elif name == "num_values" and buf.numel():
            out |= torch.ones(len(ids), dtype=torch.bool)
    return out
