"""Where the real datasets live: MovieLens-100K (found or fetched) and the shared test data folder.

`find_ml100k()` returns a folder holding RecBole atomic files `ml-100k.inter/.user/.item[/.kg/.link]`.
It tries, in order, the cheapest source that works:
1. `$FUSIONREC_ML100K_DIR` (an error if set but wrong: a typo must not silently trigger a download);
2. the cache `~/.cache/fusionrec/ml-100k` (or `$FUSIONREC_CACHE/ml-100k`);
3. the `recbole==1.2.1` wheel, fetched with `pip download --no-deps` (it ships ml-100k with a KG);
4. the official GroupLens zip, read by the MovieLens reader and written as atomic files (no KG).
Steps 3 and 4 need the network and write into the cache atomically (temp folder, then rename).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd

from data_modules.errors import DataError
from data_modules.tables import CanonicalTables

log = logging.getLogger(__name__)

RECBOLE_SPEC = "recbole==1.2.1"
WHEEL_PREFIX = "recbole/dataset_example/ml-100k/"
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
NAME = "ml-100k"


def cache_dir() -> Path:
    return Path(os.environ.get("FUSIONREC_CACHE", "~/.cache/fusionrec")).expanduser()


def shared_data_dir() -> Path | None:
    """The shared real-data folder: `$FUSIONREC_SHARED_DATA`, else `<repo>/../shared/data`; None if absent."""
    env = os.environ.get("FUSIONREC_SHARED_DATA")
    p = Path(env).expanduser() if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    return p if p.is_dir() else None


def _complete(folder: Path) -> bool:
    return all((folder / f"{NAME}.{s}").is_file() for s in ("inter", "user", "item"))


def find_ml100k(*, download: bool = True) -> Path:
    """Return a folder with the ml-100k atomic files, fetching them into the cache if needed."""
    env = os.environ.get("FUSIONREC_ML100K_DIR")
    if env:
        folder = Path(env).expanduser()
        if not _complete(folder):
            raise DataError(f"FUSIONREC_ML100K_DIR has no {NAME}.inter/.user/.item", path=folder)
        return folder
    target = cache_dir() / NAME
    if _complete(target):
        return target
    if not download:
        raise DataError("MovieLens-100K not found (set FUSIONREC_ML100K_DIR or allow download)", path=target)
    errors = []
    for fetch in (_from_recbole_wheel, _from_grouplens):
        try:
            fetch(target)
            return target
        except Exception as e:  # try the next source; report all of them at the end
            log.warning("fetching %s via %s failed: %s", NAME, fetch.__name__, e)
            errors.append(f"{fetch.__name__}: {e}")
    raise DataError(f"MovieLens-100K could not be obtained: {'; '.join(errors)}", path=target)


def _install(target: Path, fill) -> None:
    """Build the folder in a temp dir next to `target` and rename it into place (no half-written cache)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=target.parent))
    try:
        fill(tmp)
        if not _complete(tmp):
            raise DataError(f"download did not produce {NAME}.inter/.user/.item", path=tmp)
        if target.exists():  # an incomplete earlier attempt
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _from_recbole_wheel(target: Path) -> None:
    wheels = cache_dir() / "wheels"
    found = sorted(wheels.glob("recbole-1.2.1-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", RECBOLE_SPEC, "-d", str(wheels)]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {run.stderr.strip()[-500:]}")
        found = sorted(wheels.glob("recbole-1.2.1-*.whl"))
    if not found:
        raise RuntimeError(f"pip download left no recbole wheel in {wheels}")
    _install(target, lambda tmp: extract_from_wheel(found[0], tmp))


def extract_from_wheel(wheel: Path, folder: Path) -> None:
    """Copy `recbole/dataset_example/ml-100k/*` out of a recbole wheel (a zip) into `folder`, flat."""
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            if member.startswith(WHEEL_PREFIX) and not member.endswith("/"):
                (folder / Path(member).name).write_bytes(z.read(member))


def _from_grouplens(target: Path) -> None:
    from data_modules.readers.movielens import read_movielens

    def fill(tmp: Path) -> None:
        zpath = tmp / "ml-100k.zip"
        with urllib.request.urlopen(GROUPLENS_URL, timeout=120) as r, open(zpath, "wb") as f:
            shutil.copyfileobj(r, f)
        with zipfile.ZipFile(zpath) as z:
            z.extractall(tmp / "raw")
        write_recbole_ml100k(read_movielens(tmp / "raw" / "ml-100k", variant="100k"), tmp)
        shutil.rmtree(tmp / "raw")
        zpath.unlink()

    _install(target, fill)


def write_recbole_ml100k(t: CanonicalTables, folder: Path) -> None:
    """Write MovieLens-100K tables as RecBole's atomic files, with RecBole's column names and title style."""
    inter = t.interactions[["user", "item", "rating", "timestamp"]]
    inter.to_csv(
        folder / f"{NAME}.inter",
        sep="\t",
        index=False,
        header=["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
    )
    users = t.users[["user", "age", "gender", "occupation", "zip_code"]]
    users.to_csv(
        folder / f"{NAME}.user",
        sep="\t",
        index=False,
        header=["user_id:token", "age:token", "gender:token", "occupation:token", "zip_code:token"],
    )
    items = pd.DataFrame(
        {
            "item_id:token": t.items["item"],
            # RecBole drops the "(1995)" suffix from titles; the year is its own column
            "movie_title:token_seq": t.items["title"].str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True),
            "release_year:token": t.items["release_year"],
            "class:token_seq": t.items["genres"].map(" ".join),
        }
    )
    items.to_csv(folder / f"{NAME}.item", sep="\t", index=False)
