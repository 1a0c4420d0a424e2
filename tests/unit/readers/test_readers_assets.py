"""Finding MovieLens-100K offline: env var, cache, a recbole wheel already downloaded; GroupLens conversion."""

import zipfile
from pathlib import Path

import pytest

from data_modules.errors import DataError
from data_modules.readers import assets
from data_modules.readers.movielens import read_movielens
from data_modules.readers.recbole import read_recbole

pytestmark = pytest.mark.unit

FIX = Path(__file__).parents[2] / "fixtures" / "readers"


def _atomic(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    assets.write_recbole_ml100k(read_movielens(FIX / "movielens" / "ml-100k"), folder)
    return folder


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.delenv("FUSIONREC_ML100K_DIR", raising=False)
    monkeypatch.setenv("FUSIONREC_CACHE", str(tmp_path / "cache"))
    return monkeypatch


def test_env_var_wins_and_a_wrong_one_is_an_error(env, tmp_path):
    folder = _atomic(tmp_path / "mine")
    env.setenv("FUSIONREC_ML100K_DIR", str(folder))
    assert assets.find_ml100k(download=False) == folder
    env.setenv("FUSIONREC_ML100K_DIR", str(tmp_path / "typo"))
    with pytest.raises(DataError, match="typo"):
        assets.find_ml100k()


def test_cache_then_no_download(env, tmp_path):
    with pytest.raises(DataError, match="not found"):
        assets.find_ml100k(download=False)
    _atomic(tmp_path / "cache" / "ml-100k")
    assert assets.find_ml100k(download=False) == tmp_path / "cache" / "ml-100k"


def test_extracts_from_a_recbole_wheel_in_the_cache(env, tmp_path):
    src = _atomic(tmp_path / "src")
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / "recbole-1.2.1-py3-none-any.whl", "w") as z:
        for f in src.iterdir():
            z.write(f, assets.WHEEL_PREFIX + f.name)
        z.writestr("recbole/__init__.py", "")
    folder = assets.find_ml100k()  # the wheel is already there: pip is not called
    assert folder == tmp_path / "cache" / "ml-100k"
    assert sorted(p.name for p in folder.iterdir()) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".ml-100k-")]  # temp dir cleaned up


def test_grouplens_conversion_reads_back_like_recbole(tmp_path):
    original = read_movielens(FIX / "movielens" / "ml-100k")
    t = read_recbole(_atomic(tmp_path / "ml-100k"), name="ml-100k")
    t.validate()
    assert t.interactions.equals(original.interactions)
    items = t.items.set_index("item")
    assert items.loc["377", "movie_title"] == "Misérables, Les"  # RecBole style: year in its own column
    assert items.loc["377", "release_year"] == "1995" and items.loc["302", "class"][0] == "Crime"
    assert t.users.set_index("user").loc["186", "zip_code"] == "00000"


def test_shared_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FUSIONREC_SHARED_DATA", str(tmp_path))
    assert assets.shared_data_dir() == tmp_path
    monkeypatch.setenv("FUSIONREC_SHARED_DATA", str(tmp_path / "absent"))
    assert assets.shared_data_dir() is None
