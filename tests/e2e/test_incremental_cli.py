"""The real commands of an incremental update on the tiny fixture: `fusionrec data prepare --append` of new raw files
(two new users, one new item), `fusionrec fit` on the parent, `fusionrec fit --init_from` on the child (tables grown,
training goes on, checkpoints written) and the refusal of a checkpoint of an unrelated dataset (exit 2, one line)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
for _k in [k for k in ENV if k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "TORCHELASTIC_"))]:
    del ENV[_k]


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "trainer.cli", *args], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=180)
    if ok:
        assert p.returncode == 0, f"{args} failed:\n{(p.stdout + p.stderr)[-6000:]}"
    return p


def fit(data: Path, out: Path, *extra: str, ok: bool = True) -> subprocess.CompletedProcess:
    return run("fit", "--config", "configs/tiny.yaml", "--data.dataset_dir", str(data), "--data.prepare_config", "null",
               "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(out),
               "--trainer.logger.init_args.save_dir", str(out), *extra, ok=ok)


def test_append_then_fit_init_from(tmp_path):
    parent, child, other = tmp_path / "parent", tmp_path / "child", tmp_path / "other"
    # a temporal split: the child's valid / test rows are its newest, never the parent's training rows
    cfg = tmp_path / "tiny_temporal.yaml"
    cfg.write_text((REPO / "configs/data/tiny.yaml").read_text().replace("protocol: recbole", "protocol: temporal"),
                   encoding="utf-8")
    run("data", "prepare", str(cfg), "--out", str(parent))
    p = run("data", "prepare", str(cfg), "--append", "tests/fixtures/tiny_append", "--parent", str(parent),
            "--out", str(child))
    assert f"wrote {child}" in p.stdout and "22 users, 17 items" in p.stdout
    lineage = json.loads((child / "manifest.json").read_text())["lineage"]
    assert lineage["ancestors"] == [json.loads((parent / "manifest.json").read_text())["fingerprint"]]
    assert lineage["parent_train_in_eval"] == {"valid": 0, "test": 0}

    log = fit(parent, tmp_path / "runs_parent").stdout
    ckpt = re.search(r"last: (\S+\.ckpt)", log).group(1)
    done = fit(child, tmp_path / "runs_child", "--init_from", ckpt)
    out = done.stdout + done.stderr
    assert "'towers.user.encoders.id.embedding.weight': (20, 22)" in out
    assert "new rows from side sources {'user_id': 2" in out and "optimizer starts fresh" in out
    assert re.search(r"best checkpoint: \S+\.ckpt", done.stdout)

    # a checkpoint of another preparation of the same files (RecBole's split) is not an ancestor: refused
    run("data", "prepare", "configs/data/tiny.yaml", "--out", str(other))
    other_ckpt = re.search(r"last: (\S+\.ckpt)", fit(other, tmp_path / "runs_other").stdout).group(1)
    refused = fit(child, tmp_path / "runs_refused", "--init_from", other_ckpt, ok=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "nor one of its ancestors" in refused.stderr
