"""Property, for every reader (issue 10, part 3): whatever damage one input file has, reading it and preparing
it end in a DataError or in prepared data, never in another exception; a reader's DataError names a file of the
damaged copy; every quarantine sample names the file it came from; the reader loses no interaction row
uncounted (per interactions file: rows read = rows kept + rows quarantined from it); and preparation's
conservation record (data_modules/prepare/conservation.py) balances: entering = kept + quarantined + merged +
filtered, with entering = the rows the reader handed over.

Readers covered: RecBole atomic, MovieLens 100K / 1M / latest, Amazon 2018 / 2023 (reviews + metadata), Last.fm
HetRec (+ KGCN KG), Ciao, generic CSV / TSV / JSONL (and Parquet built here), Hugging Face `datasets` folders
(save_to_disk, damaged values or a damaged Arrow file), and the MovieLens-100K asset lookup
(`source.path: ml-100k` through FUSIONREC_ML100K_DIR). Each example copies one fixture folder
(tests/fixtures/readers), damages one of its files with tests/helpers/damage.py, and reads it through
`read_source` as `fusionrec data prepare` does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from data_modules.errors import DataError  # noqa: E402
from data_modules.prepare import pipeline  # noqa: E402
from data_modules.prepare.config import PrepareConfig, SourceConfig  # noqa: E402
from data_modules.sources import read_source  # noqa: E402
from tests.helpers.damage import JUNK, damage  # noqa: E402

pytestmark = pytest.mark.unit
FIX = Path(__file__).resolve().parents[2] / "fixtures" / "readers"

# name -> (fixture folder, source config with {dir} for the damaged copy, interactions files)
TEXT_CASES: dict[str, tuple[Path, dict[str, Any], tuple[str, ...]]] = {
    "recbole": (FIX / "recbole" / "tiny", {"format": "recbole", "path": "{dir}", "name": "tiny"}, ("tiny.inter",)),
    "movielens-100k": (FIX / "movielens" / "ml-100k", {"format": "movielens", "path": "{dir}"}, ("u.data",)),
    "movielens-1m": (FIX / "movielens" / "ml-1m", {"format": "movielens", "path": "{dir}"}, ("ratings.dat",)),
    "movielens-latest": (FIX / "movielens" / "ml-latest-small", {"format": "movielens", "path": "{dir}"},
                         ("ratings.csv",)),
    "amazon-2018": (FIX / "amazon" / "2018", {"format": "amazon", "path": "{dir}"}, ("Gift_Cards_5.json",)),
    "amazon-2023": (FIX / "amazon" / "2023", {"format": "amazon", "path": "{dir}/All_Beauty.jsonl",
                                              "options": {"meta": "{dir}/meta_All_Beauty.jsonl"}}, ("All_Beauty.jsonl",)),
    "lastfm": (FIX / "lastfm", {"format": "lastfm", "path": "{dir}/hetrec", "options": {"kg_dir": "{dir}/kg"}},
               ("user_artists.dat",)),
    "ciao": (FIX / "ciao", {"format": "ciao", "path": "{dir}"}, ("ratings.tsv",)),
    "generic": (FIX / "generic", {"format": "generic", "path": "{dir}", "options": {
        "splits": {"train": "presplit/train.csv", "valid": "presplit/valid.csv", "test": "presplit/test.csv"},
        "users": {"path": "users.tsv", "key": "uid", "fields": {"gender": "categorical", "likes": "multi_categorical"}},
        "items": {"path": "items.jsonl", "key": "id", "fields": {"name": "text", "genres": "multi_categorical",
                                                                 "year": "numeric"}},
        "graphs": {"social": {"path": "trust.csv", "columns": {"src": "a", "dst": "b"}},
                   "kg": {"path": "kg.tsv", "columns": {"item": "movie", "relation": "rel", "entity": "tail"}}},
    }}, ("train.csv", "valid.csv", "test.csv")),
    # the asset lookup: `source.path: ml-100k` finds RecBole files named ml-100k.* in FUSIONREC_ML100K_DIR
    "assets-ml100k": (FIX / "recbole" / "tiny", {"format": "recbole", "path": "ml-100k"}, ("ml-100k.inter",)),
}
PRESPLIT = {"generic", "hf_datasets"}
# 30 valid interactions (6 users x 8 items, ratings 1-5, timestamps in 1997-98) for the value-damage cases
BASE_ROWS = pd.DataFrame({"user": [f"u{k % 6}" for k in range(30)], "item": [f"i{(k * 5) % 8}" for k in range(30)],
                          "rating": [str(1 + k % 5) for k in range(30)],
                          "timestamp": [str(880_000_000 + 3_600 * k) for k in range(30)]})


@contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _fill(spec: Any, folder: Path) -> Any:
    if isinstance(spec, str):
        return spec.replace("{dir}", str(folder))
    if isinstance(spec, dict):
        return {k: _fill(v, folder) for k, v in spec.items()}
    return spec


@st.composite
def text_case(draw) -> tuple[str, str, bytes]:
    """(case, file relative to the case folder, its damaged bytes)."""
    name = draw(st.sampled_from(sorted(TEXT_CASES)))
    root = TEXT_CASES[name][0]
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    # the interactions file half the time: it is where the invariant bites
    inter = [f for f in files if f.rsplit("/", 1)[-1] in TEXT_CASES[name][2] or f == "tiny.inter"]
    rel = draw(st.sampled_from(inter)) if draw(st.booleans()) else draw(st.sampled_from(files))
    return name, rel, draw(damage((root / rel).read_bytes()))


VALUE = st.one_of(st.none(), JUNK, st.sampled_from(["", " 196 ", "196", "242", "3.5", "-5", "1e12", "-1",
                                                   "1700000000000", "nan", "inf", "0"]))


@st.composite
def damaged_frame(draw) -> pd.DataFrame:
    """BASE_ROWS (a prefix) with some values replaced by junk, None or implausible numbers."""
    df = BASE_ROWS.copy().astype(object)
    for _ in range(draw(st.integers(0, 8))):
        df.iat[draw(st.integers(0, len(df) - 1)), draw(st.integers(0, df.shape[1] - 1))] = draw(VALUE)
    return df.iloc[: draw(st.integers(0, len(df)))]


def _damage_file(path: Path, draw) -> None:
    """Flip, cut or zero bytes of a binary file (Parquet, Arrow)."""
    data = bytearray(path.read_bytes())
    op = draw(st.sampled_from(["none", "none", "truncate", "flip", "zero"]))
    if op == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif op in ("flip", "zero") and data:
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = 0 if op == "zero" else data[i] ^ (1 << draw(st.integers(0, 7)))
    path.write_bytes(bytes(data))


def _build_case(name: str, rel: str, data: bytes, tmp: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Copy the fixture into tmp, write the damaged file; return (source config, environment)."""
    root, spec, _ = TEXT_CASES[name]
    folder = tmp / "src"
    shutil.copytree(root, folder)
    env: dict[str, str] = {}
    if name == "assets-ml100k":
        for f in list(folder.iterdir()):
            f.rename(folder / f.name.replace("tiny.", "ml-100k."))
        rel = rel.replace("tiny.", "ml-100k.")
        env["FUSIONREC_ML100K_DIR"] = str(folder)
    (folder / rel).write_bytes(data)
    return _fill(spec, folder), env


def _check_tables(t, tmp: Path, inter_files: tuple[str, ...]) -> None:
    q = t.quarantine
    for s in q.samples:
        assert s["file"] and str(s["file"]).startswith(str(tmp)), s  # every reason names its file
    if t.origin is not None:
        assert len(t.origin) == len(t.interactions)
    # complete samples (no rule past its sample cap): count per file exactly
    if all(n <= q.sample_per_rule for n in q.counts.values()) and t.origin is not None:
        kept = Counter(Path(str(f)).name for f in t.origin["file"])
        # a rejected row names its line; a sample without one is about an attribute (a product's conflicting
        # categories), its row kept
        rejected = Counter(Path(str(s["file"])).name for s in q.samples if s["row"] is not None)
        for f in inter_files:
            if f in t.rows_read:
                assert t.rows_read[f] == kept[f] + rejected[f], (f, t.rows_read, dict(kept), q.samples)


def _prepare(source: dict[str, Any], tmp: Path, n_entering: int, presplit: bool) -> None:
    cfg = PrepareConfig.from_dict({
        "source": source, "clean": {"max_bad_fraction": 1.0},
        "split": {"protocol": "presplit"} if presplit else {"protocol": "ratio", "ratios": [0.8, 0.1, 0.1]},
        "output": {"dir": str(tmp / "out")},
    })  # fmt: skip
    try:
        res = pipeline.prepare(cfg)
    except DataError:
        event("prepare: DataError")
        return  # a clear error (e.g. a split left without training rows); no traceback
    event("prepared")  # (outcome shares: pytest --hypothesis-show-statistics)
    c = res.manifest["conservation"]
    removed = sum(c["quarantined"].values()) + sum(c["merged"].values()) + sum(c["filtered"].values())
    assert c["entering"] == n_entering == c["kept"] + removed, c


def _read_and_prepare(source: dict[str, Any], env: dict[str, str], tmp: Path, inter_files: tuple[str, ...],
                      presplit: bool) -> None:
    with _env(**env):
        try:
            t = read_source(SourceConfig(**source))
        except DataError as e:
            assert str(tmp) in str(e), e  # names a file of the damaged copy
            event("reader: DataError")
            return
        event("reader: quarantined rows" if t.quarantine.counts else "reader: nothing to quarantine")
        _check_tables(t, tmp, inter_files)
        _prepare(source, tmp, len(t.interactions), presplit)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text_case())
def test_every_text_reader_survives_damage_and_conserves_rows(case):
    name, rel, data = case
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        source, env = _build_case(name, rel, data, tmp)
        _read_and_prepare(source, env, tmp, TEXT_CASES[name][2], name in PRESPLIT)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_frame(), st.data())
def test_parquet_with_damaged_values_or_bytes(frame, data):
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "src").mkdir()
        path = tmp / "src" / "ratings.parquet"
        frame.to_parquet(path)
        _damage_file(path, data.draw)
        source = {"format": "generic", "path": str(tmp / "src"), "options": {"interactions": {"path": "ratings.parquet"}}}
        _read_and_prepare(source, {}, tmp, ("ratings.parquet",), False)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_frame(), st.data())
def test_hf_datasets_folder_with_damaged_values_or_arrow_file(frame, data):
    datasets = pytest.importorskip("datasets")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        out = tmp / "src"
        frame = frame.map(lambda v: None if v is None else str(v))  # one Arrow type per column
        datasets.Dataset.from_pandas(frame, preserve_index=False).save_to_disk(str(out))
        arrow = sorted(out.glob("*.arrow"))
        if arrow:
            _damage_file(arrow[0], data.draw)
        source = {"format": "hf_datasets", "path": str(out), "options": {}}
        with _env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"):
            _read_and_prepare(source, {}, tmp, (out.name,), False)
