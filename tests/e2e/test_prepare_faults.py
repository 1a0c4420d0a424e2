"""`fusionrec data prepare` under faults, as real processes: two started together into one output folder (one
builds, the other waits on the build lock and reuses it), and a builder SIGKILLed mid-write (no folder that looks
complete; the previous one survives; a re-run completes and is not blocked by the dead builder's lock)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from data_modules import layout
from data_modules.manifest import load_manifest, verify_checksums
from data_modules.prepare import pipeline
from data_modules.prepare.config import PrepareConfig
from data_modules.prepare.lock import build_lock, lock_path
from tests.helpers.env import child_env

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "tiny"


def write_config(tmp_path: Path, out: Path) -> Path:
    """The tiny fixture's prepare config without text (no tokenizer: each process starts in seconds)."""
    cfg = {"source": {"format": "recbole", "path": str(FIXTURE), "name": "tiny"},
           "clean": {"rating_range": [1, 5], "max_bad_fraction": 0.05},
           "split": {"protocol": "recbole", "seed": 2020},
           "output": {"dir": str(out), "shard_rows": 64, "block_rows": 16}}
    path = tmp_path / "prepare.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_prepare(config: Path, log: Path, *extra: str) -> subprocess.Popen:
    f = open(log, "w")  # noqa: SIM115 - closed by the child's exit; the test reads the file afterwards
    return subprocess.Popen([sys.executable, "-m", "trainer.cli", "data", "prepare", str(config), *extra], cwd=REPO,
                            env=child_env(), stdout=f, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_two_processes_preparing_one_folder_build_it_once_and_both_succeed(tmp_path):
    out = tmp_path / "shared" / "tiny"
    config = write_config(tmp_path, out)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    # The test holds the build lock while both start, so they certainly overlap: each must see the lock taken and
    # wait. Released, one of them builds and the other, still waiting, must reuse what it wrote.
    with build_lock(out):
        procs = [start_prepare(config, log) for log in logs]
        wait_for(lambda: all("is being prepared by another process" in log.read_text() for log in logs),
                 "both processes to wait on the build lock")
        assert not out.exists()
    for p in procs:
        p.wait(timeout=120)
    texts = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(texts)
    assert sum(t.count("prepared tiny in") for t in texts) == 1, "\n".join(texts)  # one build
    assert sorted(t.strip().splitlines()[-1].split()[0] for t in texts) == ["reused", "wrote"]
    # both printed the same manifest (fingerprint, creation time and build seconds included): the one on disk
    summaries = [t[t.index("dataset      tiny"):t.rindex("\n", 0, len(t.rstrip()))] for t in texts]
    assert summaries[0] == summaries[1]
    m = load_manifest(out)
    assert f"prepared {m['created']} in {m['seconds']}s" in summaries[0]
    verify_checksums(out, m)
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]  # no lock file or temporary folder left


KILLED_MID_WRITE = """
import os, signal, sys
from data_modules.prepare import pipeline
from data_modules.prepare.config import PrepareConfig
real = pipeline.write_side
def write_then_die(*args, **kwargs):
    real(*args, **kwargs)                 # the shards and side arrays are on disk ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... id maps and manifest are not: killed (no finally, no atexit)
pipeline.write_side = write_then_die
pipeline.prepare(PrepareConfig.from_yaml(sys.argv[1]), force=len(sys.argv) > 2)
"""


def kill_mid_write(config: Path, *force: str) -> None:
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_MID_WRITE), str(config), *force], cwd=REPO,
                       env=child_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stdout + p.stderr


def test_sigkill_during_a_first_prepare_leaves_no_complete_looking_folder_and_a_rerun_completes(tmp_path):
    out = tmp_path / "tiny"
    config = write_config(tmp_path, out)
    kill_mid_write(config)
    assert not out.exists()  # nothing at the output path: nothing can mistake it for a prepared dataset
    (partial,) = [p for p in tmp_path.iterdir() if p.name.startswith(".tiny.tmp-")]
    assert list((partial / "train").glob("*.parquet")) and not (partial / layout.MANIFEST).exists()  # killed mid-way
    assert lock_path(out).exists()  # the dead builder's lock file, no longer locked by anyone

    p = start_prepare(config, tmp_path / "rerun.log")
    assert p.wait(timeout=120) == 0, (tmp_path / "rerun.log").read_text()
    log = (tmp_path / "rerun.log").read_text()
    assert "wrote" in log and "waiting" not in log  # the kernel released the killed builder's lock
    verify_checksums(out, load_manifest(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepare.yaml", "rerun.log", "tiny"]  # partial removed


def test_sigkill_during_a_rebuild_keeps_the_previous_dataset(tmp_path):
    out = tmp_path / "tiny"
    config = write_config(tmp_path, out)
    pipeline.prepare(PrepareConfig.from_yaml(config))
    manifest = load_manifest(out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    kill_mid_write(config, "--force")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    again = pipeline.prepare(PrepareConfig.from_yaml(config))  # the survivor is complete: reused as it is
    assert again.reused and again.manifest == manifest
    verify_checksums(out, again.manifest)
