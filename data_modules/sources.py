"""Turn a `SourceConfig` into canonical tables by calling the one reader that knows its format.

An explicit `if` chain instead of a string registry: every reader is imported by name, so a reader's
signature is one click away from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_modules.errors import DataError
from data_modules.prepare.config import SourceConfig
from data_modules.tables import CanonicalTables


def resolve_path(cfg: SourceConfig) -> Path:
    """The raw data location; `ml-100k` alone means: find (or fetch) MovieLens-100K; `hub:<name>` (format
    hf_datasets) is a Hugging Face Hub dataset, returned as it is."""
    if cfg.format == "hf_datasets" and cfg.path.startswith("hub:"):
        return Path(cfg.path)
    if cfg.path == "ml-100k" and cfg.format == "recbole":
        from data_modules.readers.assets import find_ml100k

        return Path(find_ml100k())
    p = Path(cfg.path).expanduser()
    if not p.exists():
        raise DataError(f"source.path does not exist (format {cfg.format!r})", path=p)
    return p


def source_files(cfg: SourceConfig) -> list[Path]:
    """Every input file (the source folder's files and files named in options), for the fingerprint. A Hub
    dataset has none here: its name and options (revision) are in the fingerprint, not its contents."""
    if cfg.format == "hf_datasets" and cfg.path.startswith("hub:"):
        return []
    root = resolve_path(cfg)
    files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
    files += [Path(v).expanduser() for v in _strings(cfg.options) if Path(v).expanduser().is_file()]
    return files


def _strings(x: Any) -> list[str]:
    if isinstance(x, str):
        return [x]
    if isinstance(x, dict):
        return [s for v in x.values() for s in _strings(v)]
    if isinstance(x, (list, tuple)):
        return [s for v in x for s in _strings(v)]
    return []


def read_source(cfg: SourceConfig) -> CanonicalTables:
    path = resolve_path(cfg)
    opts = dict(cfg.options)
    if cfg.format == "recbole":
        from data_modules.readers.recbole import read_recbole

        return read_recbole(path, name=cfg.name or path.name, **opts)
    if cfg.format == "movielens":
        from data_modules.readers.movielens import read_movielens

        return read_movielens(path, **opts)
    if cfg.format == "amazon":
        from data_modules.readers.amazon import read_amazon

        return read_amazon(path, **opts)
    if cfg.format == "lastfm":
        from data_modules.readers.lastfm import read_lastfm

        return read_lastfm(path, **opts)
    if cfg.format == "ciao":
        from data_modules.readers.ciao import read_ciao

        return read_ciao(path, **opts)
    if cfg.format == "hf_datasets":
        from data_modules.readers.hf_datasets import read_hf_dataset

        return read_hf_dataset(cfg.path if cfg.path.startswith("hub:") else path, opts)
    if cfg.format == "generic":
        from data_modules.readers.generic import read_generic

        return read_generic(opts, base_dir=path)
    raise ValueError(f"unknown source format {cfg.format!r}")
