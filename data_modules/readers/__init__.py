"""Source readers: one public format each -> `CanonicalTables` (see `data_modules/tables.py`).

Every reader is a plain function imported by name (no registry); `data_modules.sources.read_source`
picks one from the configured format. Row-level problems go to the returned table's quarantine;
unusable input (a missing file or column) raises `DataError` naming it.
"""

from data_modules.readers.amazon import read_amazon
from data_modules.readers.assets import find_ml100k, shared_data_dir
from data_modules.readers.ciao import read_ciao
from data_modules.readers.generic import read_generic
from data_modules.readers.hf_datasets import read_hf_dataset
from data_modules.readers.lastfm import read_lastfm
from data_modules.readers.movielens import read_movielens
from data_modules.readers.recbole import read_recbole

__all__ = [
    "find_ml100k",
    "read_amazon",
    "read_ciao",
    "read_generic",
    "read_hf_dataset",
    "read_lastfm",
    "read_movielens",
    "read_recbole",
    "shared_data_dir",
]
