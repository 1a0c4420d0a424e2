"""benchmarks/gpu_all.py, the one GPU entry point: its `--preset cpu` smoke runs every stage end to end (2 gloo ranks,
tiny models), and the wall-clock budget skips what no longer fits while keeping what was measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.env import child_env

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *args: str, timeout: int = 400) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu_all"
    p = subprocess.run([sys.executable, "benchmarks/gpu_all.py", "--preset", "cpu", "--out", str(out), *args],
                       cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=timeout)
    return p, json.loads((out / "summary.json").read_text())


@pytest.mark.e2e
def test_a_budget_of_nothing_skips_every_job_and_still_writes_the_summary(tmp_path):
    p, summary = _run(tmp_path, "--budget", "0", timeout=120)
    assert p.returncode == 1, p.stderr  # nothing measured
    assert summary["rows"] == [] and len(summary["skipped"]) >= 3
    assert all("s left" in s["why"] for s in summary["skipped"])
    assert "skipped:" in p.stdout and "not GPU figures" in p.stdout


@pytest.mark.e2e
@pytest.mark.slow
def test_the_cpu_smoke_measures_every_stage(tmp_path):
    p, summary = _run(tmp_path, "--budget", "360")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    stages = {r["stage"]: r for r in summary["rows"]}
    assert set(stages) == {"text", "fit", "largest"}, summary
    text = [r for r in summary["rows"] if r["stage"] == "text"]
    assert all(r["tokens_per_s"] > 0 and r["peak_gib"] > 0 for r in text), text
    assert stages["fit"]["examples_per_s"] > 0 and stages["fit"]["peak_mib"] > 0
    assert "error" not in stages["largest"] and stages["largest"]["tokens_per_s"] > 0
    assert "| text cpu-decoder seq 64 ddp |" in p.stdout
