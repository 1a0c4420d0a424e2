"""`fusionrec recommend --export DIR (--user U [U ...] | --users-file F) [--k 10] [--exact] [--attribution]`.

Top-K items per user from a `fusionrec export` folder (trainer/inference/export.py), one JSON line per user on
stdout or in `--out`:

    {"user": raw id, "user_index": i, "retrieval": "faiss-hnsw" | "exact", "k": K, "seen_filtered": n,
     "items": [{"rank": 1, "item": raw id, "item_index": j, "score": u . v, "attribution": {...}}, ...]}

The user's vector is the exported one (conditioned as evaluation conditions the export's split), the items its seen
ones are left out (seen.safetensors: the items evaluation masks), and the candidates come from the HNSW index
(trainer/inference/ann_index.py, re-scored exactly) or, with `--exact`, from scoring every item. So `--exact` gives
the top K `fusionrec predict` writes, and the index gives it up to the index's recall.

`--attribution` splits each score by item source and by user source with explain's code (explain/core.py
`attribute_items`: exact for the gated head, exact Shapley over source masks otherwise). It rebuilds the model
from the export's model.safetensors and needs the prepared dataset the export names (its side data: tokens, graph,
histories); a plain recommendation needs only the export folder.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.numpy import load_file

from trainer.inference.ann_index import ExactIndex, HNSWConfig, HNSWIndex

log = logging.getLogger("fusionrec.recommend")
__all__ = ["ServingExport", "open_export", "recommend", "main"]


@dataclass
class ServingExport:
    """An export folder loaded for serving: users (n_users, D) and the item indexes over the rankable items."""

    root: Path
    meta: dict[str, Any]
    users: np.ndarray
    user_ids: list[str]
    item_ids: list[str]
    seen_offsets: np.ndarray
    seen_items: np.ndarray
    exact: ExactIndex
    ann: HNSWIndex
    _attributor: Any = field(default=None, repr=False)

    def seen(self, user: int) -> np.ndarray:
        """Dense ids of the items `user` has seen (never recommended)."""
        return self.seen_items[self.seen_offsets[user]:self.seen_offsets[user + 1]]

    def user_index(self, raw: Sequence[str]) -> list[int]:
        index = {u: i for i, u in enumerate(self.user_ids)}
        unknown = [u for u in raw if u not in index]
        if unknown:
            raise ValueError(f"unknown user id(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''}: not in "
                             f"{self.root / 'id_maps' / 'users.parquet'} ({len(index)} users, e.g. {self.user_ids[:3]})")
        return [index[u] for u in raw]


def _ids(path: Path) -> list[str]:
    m = pd.read_parquet(path)
    if list(m["index"]) != list(range(len(m))):
        raise ValueError(f"{path}: column 'index' is not 0..{len(m) - 1} in order")
    return m["id"].astype(str).tolist()


def open_export(root: str | Path) -> ServingExport:
    root = Path(root)
    meta_path = root / "config.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: --export must be a folder written by `fusionrec export`")
    meta = json.loads(meta_path.read_text())
    ret = meta.get("retrieval")
    if ret is None:
        raise ValueError(f"{meta_path} has no 'retrieval' entry: the export predates the item index; re-run "
                         "`fusionrec export` on its checkpoint")
    files = meta["files"]
    for name in (files["user_embeddings"], files["item_embeddings"], ret["index"], ret["seen"]):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name} is missing from the export: re-run `fusionrec export`")
    users = load_file(str(root / files["user_embeddings"]))["embeddings"]
    items = load_file(str(root / files["item_embeddings"]))["embeddings"]
    seen = load_file(str(root / ret["seen"]))
    ids = None
    if ret["candidates"] != "all items":
        ids = load_file(str(root / ret["candidates"]))["items"]
    exact = ExactIndex(items if ids is None else items[ids], ids)
    ann = HNSWIndex.load(root / ret["index"], exact, HNSWConfig(**ret["hnsw"]))
    out = ServingExport(root, meta, users, _ids(root / "id_maps" / "users.parquet"),
                        _ids(root / "id_maps" / "items.parquet"), seen["offsets"], seen["items"], exact, ann)
    if len(out.user_ids) != len(users) or len(out.item_ids) != len(items):
        raise ValueError(f"{root}: id maps of {len(out.user_ids)} users / {len(out.item_ids)} items, embeddings of "
                         f"{len(users)} / {len(items)}: the folder mixes two exports")
    return out


def recommend(exp: ServingExport, users: Sequence[int], k: int = 10,
              exact: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per user (dense ids): (scores (k',), item ids (k',)), best first, seen items left out."""
    if k < 1:
        raise ValueError(f"k={k}: expected >= 1")
    index = exp.exact if exact else exp.ann
    return index.search(exp.users[np.asarray(users, dtype=np.int64)], k, [exp.seen(u) for u in users])


class Attributor:
    """The export's model rebuilt (model.safetensors, strict) over the prepared dataset it names, and explain's
    catalog of it, to split scores by source (explain/core.py `attribute_items`)."""

    def __init__(self, exp: ServingExport):
        from safetensors.torch import load_file as load_torch

        from data_modules.side import SideData
        from trainer.engine.module import FusionModule
        from trainer.inference.explain.core import catalog

        dataset_dir = Path(exp.meta["dataset"]["dir"])
        if not (dataset_dir / "manifest.json").is_file():
            raise FileNotFoundError(f"--attribution needs the prepared dataset the export was made from, "
                                    f"{dataset_dir} (its side data): not found")
        self.model = FusionModule(**exp.meta["model"])
        self.model.build_towers(SideData(dataset_dir), int(exp.meta.get("history_len", 50)))
        self.model.load_state_dict(load_torch(str(exp.root / exp.meta["files"]["model"])), strict=True)
        self.model.eval()
        self.cat = catalog(self.model, dataset_dir, exp.meta.get("split", "test"), int(exp.meta.get("history_len", 50)))

    def __call__(self, user: int, items: np.ndarray) -> list[dict[str, Any]]:
        """Per item: {"item": shares by item source, "user": shares by user source} (explain's record format)."""
        import torch

        from trainer.inference.explain import _shares
        from trainer.inference.explain.core import attribute_items

        if len(items) == 0:
            return []
        batch = self.cat.eval_set.collate([user])
        ctx = {**self.cat.ctx, **batch}
        with torch.no_grad():
            u, _ = self.model.encode_eval_users(batch, ctx)
        att = attribute_items(self.model, self.cat, batch, ctx, u, torch.as_tensor(items, dtype=torch.long)[None])
        return [{"item": _shares(att.item, 0, c), "user": _shares(att.user, 0, c)} for c in range(len(items))]


def records(exp: ServingExport, users: Sequence[int], k: int = 10, exact: bool = False,
            attribution: bool = False) -> list[dict[str, Any]]:
    """One JSON-ready record per user (see the module docstring)."""
    if attribution and exp._attributor is None:
        exp._attributor = Attributor(exp)
    out = []
    for u, (scores, items) in zip(users, recommend(exp, users, k, exact)):
        att = exp._attributor(u, items) if attribution else [None] * len(items)
        out.append({
            "user": exp.user_ids[u], "user_index": int(u), "retrieval": "exact" if exact else exp.ann.kind, "k": k,
            "seen_filtered": int(len(exp.seen(u))),
            "items": [{"rank": r + 1, "item": exp.item_ids[i], "item_index": int(i), "score": float(s),
                       **({"attribution": a} if a is not None else {})}
                      for r, (s, i, a) in enumerate(zip(scores, items, att))],
        })
    return out


def main(argv: Sequence[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="fusionrec recommend", description=__doc__.split("\n\n")[0])
    p.add_argument("--export", required=True, help="folder written by `fusionrec export`")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", nargs="+", help="raw user id(s), as in the raw data")
    who.add_argument("--users-file", help="file with one raw user id per line (batch)")
    p.add_argument("--k", type=int, default=10, help="items per user (default 10)")
    p.add_argument("--exact", action="store_true", help="score every item instead of searching the HNSW index")
    p.add_argument("--attribution", action="store_true",
                   help="split each score by item and user source (rebuilds the model; needs the prepared dataset)")
    p.add_argument("--ef-search", type=int, help="HNSW search list (default: the export's, config.json retrieval)")
    p.add_argument("--out", help="write the JSON lines here (default: stdout)")
    a = p.parse_args(list(argv))
    try:
        exp = open_export(a.export)
        if a.ef_search:
            exp.ann.config = HNSWConfig(exp.ann.config.m, exp.ann.config.ef_construction, a.ef_search)
        raw = list(a.user or [])
        if a.users_file:
            raw = [line.strip() for line in Path(a.users_file).read_text().splitlines() if line.strip()]
            if not raw:
                raise ValueError(f"{a.users_file}: no user ids (one per line expected)")
        lines = [json.dumps(r) for r in records(exp, exp.user_index(raw), a.k, a.exact, a.attribution)]
    except (FileNotFoundError, ValueError) as e:
        print(f"fusionrec recommend: error: {e}", file=sys.stderr)
        return 2
    text = "".join(line + "\n" for line in lines)
    if a.out:
        out = Path(a.out)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text)
        tmp.replace(out)
        print(f"wrote {len(lines)} users' top {a.k} to {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
