"""Hugging Face `datasets` as input: a dataset saved with `save_to_disk`, or a Hub dataset when online, mapped to
the canonical tables by the generic reader's schema (data_modules/readers/generic.py).

    read_hf_dataset(source, schema) -> CanonicalTables

`source` is a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (read with `load_from_disk`),
or `hub:<owner>/<name>` (read with `load_dataset`, which needs the internet: with HF_HUB_OFFLINE /
HF_DATASETS_OFFLINE set it is a DataError saying so and what to do instead). `schema` is the generic reader's,
with a dataset *split* where the generic one names a file:

    interactions:                          # `split` of the DatasetDict; omit it for a single Dataset
      split: reviews
      columns: {user: reviewerID, item: asin, rating: overall, timestamp: unixReviewTime, review: reviewText}
    items: {split: meta, key: asin, fields: {title: text, description: text, category: multi_categorical}}
    users: {dataset: other_saved_folder, key: user_id, fields: {...}}   # `dataset`: another saved dataset / hub:
    graphs: {social: {split: trust, src: a, dst: b}}
    splits: {train: train, valid: validation, test: test}               # a pre-split DatasetDict
    hub: {name: null, revision: null}      # Hub only: load_dataset's configuration name and revision

Only the mapped columns are converted (a review's nested `style` dict never is). A text field holding a list of
strings (Amazon 2018 `description`) is joined with spaces. Everything else — ids as strings, rating and timestamp
checks, quarantine of rows without a user or item, multi-categorical lists — is the generic reader's; quarantine
rows are 1-based row numbers of the split, and `file` is `<source>/<split>`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_modules.errors import DataError, Quarantine
from data_modules.readers.generic import INTERACTION_COLUMNS, read_generic
from data_modules.tables import GRAPH_COLUMNS, CanonicalTables

HUB = "hub:"
SECTIONS = ("interactions", "users", "items")


def is_hub(source: str | Path) -> bool:
    return str(source).startswith(HUB)


def read_hf_dataset(source: str | Path, schema: Mapping[str, Any]) -> CanonicalTables:
    """Read the dataset `source` (a save_to_disk folder or `hub:<name>`) mapped by `schema` (module docstring)."""
    opened: dict[str, Any] = {}  # dataset source -> Dataset | DatasetDict, each opened once
    hub_opts = dict(schema.get("hub") or {})

    def dataset(ref: str | Path) -> Any:
        key = str(ref)
        if key not in opened:
            opened[key] = _open(ref, hub_opts)
        return opened[key]

    base = Path(str(source)) if not is_hub(source) else Path(str(source).removeprefix(HUB))
    where: dict[str, tuple[str | Path, str | None, str]] = {}  # pseudo path -> (dataset source, split, section)
    generic: dict[str, Any] = {k: v for k, v in schema.items() if k not in (*SECTIONS, "graphs", "splits", "hub")}

    def section(kind: str, spec: Mapping[str, Any], split: str | None = None) -> dict[str, Any]:
        spec = dict(spec)
        ref = spec.pop("dataset", None) or source
        split = split if split is not None else spec.pop("split", None)
        spec.pop("split", None)
        name = f"{Path(str(ref).removeprefix(HUB)).name}/{split}" if split else Path(str(ref).removeprefix(HUB)).name
        where[str(base / name)] = (ref, split, kind)
        return {**spec, "path": name}

    for key in SECTIONS:
        if schema.get(key) or (key == "interactions" and not schema.get("splits")):
            # no interactions section: the whole dataset (or its one split), canonical column names
            generic[key] = section(key, schema.get(key) or {})
    if schema.get("splits"):
        generic["splits"] = {}
        for split_name, split in dict(schema["splits"]).items():
            # one pseudo path per split; read_generic maps each with the interactions section's columns
            generic["splits"][split_name] = section("interactions", schema.get("interactions") or {}, str(split))["path"]
    if schema.get("graphs"):
        generic["graphs"] = {g: section(g, spec) for g, spec in dict(schema["graphs"]).items()}

    def load(path: Path, spec: Mapping[str, Any], q: Quarantine) -> pd.DataFrame:
        ref, split, kind = where[str(path)]
        ds = _split(dataset(ref), split, ref)
        wanted = _wanted_columns(kind, spec, ds.column_names, path)
        try:
            sub = ds.select_columns(wanted)
            # a damaged Arrow file is memory-mapped as is: offsets or UTF-8 pointing anywhere crash pyarrow's kernels
            # (a segfault, not an exception) unless the buffers are validated in full before anything reads them
            sub.data.table.validate(full=True)
            frame = sub.to_pandas()
        except Exception as e:  # the Arrow file is memory-mapped: damage past its schema shows only when read
            raise DataError(f"cannot read the dataset's Arrow data (damaged?): {type(e).__name__}: {e}",
                            path=ref if is_hub(ref) else Path(ref)) from e
        frame.attrs["rows_read"] = len(frame)
        for col, kind in (spec.get("fields") or {}).items():
            if kind == "text" and col in frame.columns:
                frame[col] = frame[col].map(_join_text)
        return frame

    return read_generic(generic, base_dir=base, loader=load)


def _open(ref: str | Path, hub_opts: Mapping[str, Any]) -> Any:
    import datasets

    if is_hub(ref):
        name = str(ref).removeprefix(HUB)
        if _offline():
            raise DataError(
                f"Hub dataset {name!r} cannot be downloaded: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set. Where the "
                f"internet is reachable run `datasets.load_dataset({name!r}).save_to_disk(DIR)` and set source.path "
                "to DIR")
        try:
            return datasets.load_dataset(name, hub_opts.get("name"), revision=hub_opts.get("revision"))
        except (ConnectionError, OSError, ValueError) as e:  # unreachable Hub, unknown name, bad configuration
            raise DataError(f"Hub dataset {name!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    path = Path(ref).expanduser()
    if not path.is_dir():
        raise DataError("not a folder written by `datasets` save_to_disk (or use hub:<owner>/<name>)", path=path)
    try:
        return datasets.load_from_disk(str(path))
    except Exception as e:  # no dataset_info/state json; a damaged Arrow file fails in pyarrow in many ways
        raise DataError(f"datasets.load_from_disk failed: {type(e).__name__}: {e}", path=path) from e


def _offline() -> bool:
    import datasets

    flags = (os.environ.get(v, "") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(f.upper() in ("1", "ON", "YES", "TRUE") for f in flags) or bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))


def _split(ds: Any, split: str | None, ref: str | Path) -> Any:
    """The Dataset for `split` of `ds` (a Dataset or DatasetDict); a DatasetDict of one split needs none."""
    import datasets

    if isinstance(ds, (datasets.DatasetDict, dict)):
        if split is None:
            if len(ds) == 1:
                return next(iter(ds.values()))
            raise DataError(f"{ref}: a DatasetDict with splits {sorted(ds)}: name one with `split:`")
        if split not in ds:
            raise DataError(f"{ref}: no split {split!r} (splits: {sorted(ds)})")
        return ds[split]
    if split is not None:
        raise DataError(f"{ref}: a single Dataset has no splits; remove `split: {split}`")
    return ds


def _wanted_columns(kind: str, spec: Mapping[str, Any], present: list[str], path: Path) -> list[str]:
    """The dataset columns that schema section `kind` (interactions, users, items or a graph name) maps, as the
    generic reader will look them up: only these are converted to pandas."""
    if kind == "interactions":
        mapping = spec.get("columns") or {c: c for c in INTERACTION_COLUMNS if c in present}
        cols = [str(v) for v in {"user": "user", "item": "item", **mapping}.values()]
    elif kind in ("users", "items"):
        cols = [str(spec.get("key", kind[:-1])), *map(str, spec.get("fields") or {})]
    else:
        names = [c for c in GRAPH_COLUMNS.get(kind, ()) if not (kind == "item_item" and c == "relation" and c not in spec)]
        cols = [str(spec.get(c, c)) for c in names]
    cols = list(dict.fromkeys(cols))
    missing = [c for c in cols if c not in present]
    if missing:
        raise DataError(f"mapped column(s) {missing} not in the dataset; columns present: {present}", path=path,
                        field=missing[0])
    return cols


def _join_text(v: Any) -> Any:
    if isinstance(v, (list, tuple, np.ndarray)):
        return " ".join(str(x) for x in v if x is not None and str(x))
    return v
