"""Incremental preparation: extend a prepared dataset with new raw files into a new prepared folder.

`append.parent` names a prepared folder; `append.paths` the raw inputs beyond `source` (each read by the same
reader, with the same name and options). The child is the whole pipeline run again over `source` + every path,
so cleaning (duplicates across old and new rows), filtering and the split see the union. What stays fixed:

* ids: the parent's users and items keep their dense index (its id maps come first, in order); ids met for the
  first time get the next indices, in order of first appearance (`pinned_index`);
* vocabularies: categorical and multi-categorical codes of the parent stay, new values get the next codes;
  numeric fields keep the parent's mean / std (so a trained model's tables and projections mean the same thing);
* lineage: the manifest records the parent (folder, fingerprint, counts) and every ancestor's fingerprint,
  nearest first, so `fit --init_from` accepts a checkpoint trained on any of them (trainer/engine/init_from.py).

The parent folder is never touched; the child is written atomically like any prepared folder (write.atomic_dir).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_modules import layout
from data_modules.errors import DataError
from data_modules.integrity import read_parquet
from data_modules.manifest import load_manifest
from data_modules.prepare.config import PrepareConfig
from data_modules.prepare.split import TEST, VALID
from data_modules.sources import read_source, source_files
from data_modules.tables import CanonicalTables


class Parent:
    """The prepared folder an append extends: its manifest, id maps (raw ids in index order) and field schemas."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.manifest = load_manifest(self.root)
        self.users = _id_map(self.root, "users", int(self.manifest["counts"]["users"]))
        self.items = _id_map(self.root, "items", int(self.manifest["counts"]["items"]))

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    def schema(self, entity: str) -> dict[str, Any]:
        """The parent's field schema of `users` / `items` (vocabularies, numeric stats); {} when it has none."""
        return (self.manifest.get("schema") or {}).get(entity) or {}

    def paths(self) -> list[str]:
        """The raw inputs the parent itself appended to its `source` (empty unless it is a child too)."""
        return list((((self.manifest.get("config") or {}).get("append") or {}).get("paths")) or [])

    def train_keys(self, n_items: int) -> np.ndarray:
        """(E,) int64 user * n_items + item of the parent's training interactions, in the child's dense ids (the
        same as the parent's: they keep their index)."""
        keys = []
        for s in self.manifest["shards"]["train"]:
            t = read_parquet(self.root / s["path"], columns=["user", "item"])
            keys.append(t["user"].to_numpy().astype(np.int64) * n_items + t["item"].to_numpy().astype(np.int64))
        return np.concatenate(keys) if keys else np.zeros(0, np.int64)

    def lineage(self, n_users: int, n_items: int, paths: list[str], inter: pd.DataFrame,
                part: np.ndarray) -> dict[str, Any]:
        """The child's `manifest.lineage` (`paths`: all its appended inputs; `inter`, `part`: its dense interactions
        and split codes): the parent, every ancestor fingerprint (nearest first), what this step added, and
        how many of the child's valid / test interactions the parent trained on (a model of the parent has seen
        them: `fit --init_from` refuses such a pair unless the change is allowed explicitly)."""
        above = (self.manifest.get("lineage") or {}).get("ancestors") or []
        counts = self.manifest["counts"]
        seen = self.train_keys(n_items)
        keys = inter["user"].to_numpy().astype(np.int64) * n_items + inter["item"].to_numpy().astype(np.int64)
        trained = np.isin(keys, seen)
        return {"parent": {"dir": str(self.root.resolve()), "fingerprint": self.fingerprint,
                           "name": self.manifest.get("name"),
                           "counts": {"users": int(counts["users"]), "items": int(counts["items"])}},
                "ancestors": [self.fingerprint, *above],
                "added": {"users": n_users - len(self.users), "items": n_items - len(self.items),
                          "paths": list(paths[len(self.paths()):])},
                "parent_train_in_eval": {"valid": int((trained & (part == VALID)).sum()),
                                         "test": int((trained & (part == TEST)).sum())}}


def _id_map(root: Path, name: str, expected: int) -> pd.Index:
    path = root / layout.ID_MAPS / f"{name}.parquet"
    if not path.is_file():
        raise DataError(f"the parent has no {name} id map: not a prepared folder", path=path)
    t = read_parquet(path).to_pandas()
    if len(t) != expected or not np.array_equal(t["index"].to_numpy(), np.arange(expected)):
        raise DataError(f"{name} id map has {len(t)} rows with indices not 0..{expected - 1}, but the manifest counts "
                        f"{expected}: the parent folder is damaged", path=path)
    return pd.Index(t["id"].astype(str).to_numpy(dtype=object), name=name[:-1])


def check_parent(cfg: PrepareConfig, out: Path) -> Parent:
    """The parent of `cfg.append`, after checking the child rebuilds it: the same `source`, and the parent's own
    appended paths (a chain) first in `append.paths`. The child must go to another folder than the parent."""
    app = cfg.append
    assert app is not None
    engine = getattr(getattr(cfg, "engine", None), "kind", "memory")
    if engine != "memory":
        raise ValueError(f"append: engine.kind={engine!r} does not support append yet; use engine.kind=memory")
    parent = Parent(app.parent)
    if parent.root.resolve() == out.resolve():
        raise DataError("append writes a NEW prepared folder: output.dir (or --out) must differ from append.parent",
                        path=out)
    theirs = (parent.manifest.get("config") or {})
    mine = json.loads(json.dumps(asdict(cfg.source), default=str))
    if (src := theirs.get("source")) != mine:
        raise DataError(f"append: source {mine} is not the parent's source {src}: the child re-reads "
                        "the parent's inputs, so give the parent's prepare config", path=parent.root / layout.MANIFEST)
    before = parent.paths()
    if list(app.paths[:len(before)]) != before or len(app.paths) <= len(before):
        raise DataError(f"append.paths {app.paths} must start with the parent's own appended paths {before} and add "
                        "at least one", path=parent.root / layout.MANIFEST)
    return parent


def fingerprint_part(cfg: PrepareConfig) -> tuple[dict[str, Any], list[Path]]:
    """What an append adds to the fingerprint: the parent's fingerprint (not its folder) and the appended paths'
    files (hashed by content like `source`'s)."""
    app = cfg.append
    assert app is not None
    files = [f for p in app.paths for f in source_files(replace(cfg.source, path=p))]
    return {"parent_fingerprint": Parent(app.parent).fingerprint, "paths": list(app.paths)}, files


def read_tables(cfg: PrepareConfig) -> CanonicalTables:
    """`source` then each `append.paths` entry, read by the same reader and stacked: interactions and graph edges
    concatenated (cleaning removes duplicates later), user / item rows by id with the newest file winning."""
    base = read_source(cfg.source)
    if cfg.append is None:
        return base
    for i, path in enumerate(cfg.append.paths):
        add = read_source(replace(cfg.source, path=path))
        _stack(base, add, f"append[{i}]:{path}")
    return base


def _stack(base: CanonicalTables, add: CanonicalTables, tag: str) -> None:
    base.interactions = pd.concat([base.interactions, add.interactions], ignore_index=True)
    if base.origin is not None and add.origin is not None:
        base.origin = pd.concat([base.origin, add.origin], ignore_index=True)
    else:
        base.origin = None
    for ent in ("users", "items"):
        mine, theirs = getattr(base, ent), getattr(add, ent)
        if theirs is None:
            continue
        fields_attr = f"{ent[:-1]}_fields"
        if mine is not None:
            a, b = getattr(base, fields_attr), getattr(add, fields_attr)
            if {k: str(v) for k, v in a.items()} != {k: str(v) for k, v in b.items()}:
                raise DataError(f"{tag}: {ent} fields {dict(b)} differ from the parent's {dict(a)}")
            key = ent[:-1]
            theirs = pd.concat([mine[~mine[key].astype(str).isin(theirs[key].astype(str))], theirs], ignore_index=True)
        else:
            setattr(base, fields_attr, getattr(add, fields_attr))
        setattr(base, ent, theirs)
    for name, g in add.graphs.items():
        base.graphs[name] = pd.concat([base.graphs[name], g], ignore_index=True) if name in base.graphs else g
    base.quarantine.merge(add.quarantine)
    base.rows_read.update({f"{tag}/{k}": v for k, v in add.rows_read.items()})


def pinned_index(parent: pd.Index, ids: pd.Series, name: str) -> pd.Index:
    """Dense index of the child: the parent's ids in their order, then ids new in `ids` in order of appearance."""
    seen = pd.Index(pd.unique(ids.astype(str)))
    new = seen[~seen.isin(parent)]
    return pd.Index(np.concatenate([parent.to_numpy(dtype=object), new.to_numpy(dtype=object)]), name=name)


def with_appended(cfg: PrepareConfig, paths: list[str], out: str) -> PrepareConfig:
    """`fusionrec data prepare CONFIG --append NEW... --out DIR`: CONFIG's prepared folder (`output.dir`) is the
    parent; the child reads CONFIG's inputs (its `source` and any `append.paths`) plus `paths`, into `out`."""
    from data_modules.prepare.config import AppendConfig

    if not out:
        raise ValueError("--append writes a new prepared folder: give it with --out DIR")
    before = cfg.append.paths if cfg.append is not None else []
    child = replace(cfg, append=AppendConfig(parent=cfg.output.dir, paths=[*before, *paths]))
    child.output = replace(cfg.output, dir=out)
    return child
