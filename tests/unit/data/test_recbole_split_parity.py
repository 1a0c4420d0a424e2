"""RecBole's default ml-100k protocol, reproduced without RecBole.

The expected digest was computed from the train/valid/test files written by RecBole 1.2.1 itself
(`../shared/peers/recbole_dump_split.py`, seed 2020: 80,808 / 9,596 / 9,596 rows): sha256 over the sorted lines
"user\\titem\\tsplit" with original ids. If RECBOLE_SPLIT_DIR points at such a dump, the sets are compared directly too.
"""

import hashlib
import os
from pathlib import Path

import pandas as pd
import pytest

from data_modules.prepare.config import SplitConfig
from data_modules.prepare.split import split_interactions

pytestmark = pytest.mark.unit

RECBOLE_DIGEST = "f2c7dc93733c83031d05d88c55c0d83365a97d7ccdadb4e07885093dd1e6cf6c"
NAMES = ("train", "valid", "test")


@pytest.fixture(scope="module")
def ml100k_inter():
    from data_modules.readers.assets import find_ml100k

    try:
        folder = Path(find_ml100k())
    except Exception as e:  # no cache, no recbole wheel, no internet
        pytest.skip(f"MovieLens-100K not obtainable here: {e}")
    inter = pd.read_csv(folder / "ml-100k.inter", sep="\t", dtype=str)
    inter.columns = ["user", "item", "rating", "timestamp"]
    return inter


def test_recbole_protocol_reproduces_recbole_split_exactly(ml100k_inter):
    inter = ml100k_inter
    dense = inter.assign(user=pd.Index(pd.unique(inter["user"])).get_indexer(inter["user"]))
    part = split_interactions(dense, SplitConfig(protocol="recbole", seed=2020))
    assert [int((part == c).sum()) for c in range(3)] == [80808, 9596, 9596]
    lines = sorted(f"{u}\t{i}\t{NAMES[p]}" for u, i, p in zip(inter["user"], inter["item"], part))
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == RECBOLE_DIGEST
    dump = os.environ.get("RECBOLE_SPLIT_DIR")
    if dump:
        for code, name in enumerate(NAMES):
            ref = pd.read_csv(Path(dump) / f"{name}.csv", dtype=str)
            assert set(zip(ref["user"], ref["item"])) == set(zip(inter["user"][part == code], inter["item"][part == code]))
