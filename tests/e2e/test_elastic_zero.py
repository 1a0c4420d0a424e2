"""SIGKILL of one rank under DeepSpeed ZeRO-2 and ZeRO-3, then a damaged checkpoint folder.

1. `MAX_RESTARTS=1 bash launch/torchrun.sh fit --strategy_name deepspeed_stage_2` on 2 gloo ranks; `KillOnce`
   (tests/e2e/test_elastic.py) SIGKILLs rank 1 after step 5. torchrun restarts both ranks, the launcher hands them
   the launch's newest complete DeepSpeed folder (`last.ckpt/` of step 4: mid-epoch, with its checksum manifest),
   and the resumed fit ends with the same validation metrics and train losses as an uninterrupted ZeRO-2 fit, bit
   for bit (ZeRO on CPU is deterministic: same partitions, same reduction order). Nothing lost or repeated. The
   same under ZeRO-3 (parameters partitioned as well).
2. One shard of the resumed run's `last.ckpt/` truncated: `fusionrec fit --ckpt_path` on it (2 ranks) and
   `fusionrec export` of it fail with one line naming the file; a restarted worker skips it and takes the older
   complete folder.

Same settings as tests/e2e/test_elastic.py (configs/tiny.yaml, 2 epochs of 5 steps, checkpoints every 2 steps).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_elastic import ENV, EVERY, KILL_AT, REPO, TINY, fit, scalars
from trainer.engine.checkpoint_checksums import MANIFEST, verify_checksums

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ZERO = "deepspeed_stage_2"


def kill_and_resume(tmp_path: Path, strategy: str) -> tuple[Path, Path]:
    """An uninterrupted fit and one whose rank 1 is SIGKILLed after step 5; asserts the restart resumed the first
    attempt's last.ckpt folder and reproduced the uninterrupted run. Returns (that folder, the resumed log dir)."""
    full, _ = fit(tmp_path / "full", strategy=strategy)
    marker = tmp_path / "killed-once"
    final, log = fit(tmp_path / "elastic", kill_marker=marker, strategy=strategy)

    assert marker.exists(), log
    assert "1/1 attempts left; will restart worker group" in log, log
    first = tmp_path / "elastic" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert first.is_dir() and (first / MANIFEST).is_file(), sorted(first.rglob("*"))  # a complete DeepSpeed folder
    verify_checksums(first)
    resumed_from = f"restart 1: resuming with --ckpt_path {first}"
    assert f"torchrun.sh: rank 0, {resumed_from}" in log and f"torchrun.sh: rank 1, {resumed_from}" in log, log
    assert final.name == "version_1", final

    want_val, got_val = scalars(full, "val/"), scalars(final, "val/")
    assert {s for _, s in want_val} == {KILL_AT - 1, 2 * KILL_AT - 1}, want_val
    assert any(t == "val/ndcg@10" for t, _ in want_val), sorted(want_val)
    assert got_val == want_val  # bit-identical float32s
    want_loss, got_loss = scalars(full, "train/loss"), scalars(final, "train/loss")
    resumed_steps = sorted(s for t, s in got_loss if t == "train/loss")
    assert resumed_steps == list(range(KILL_AT // EVERY * EVERY, 2 * KILL_AT)), resumed_steps  # from step 4
    assert got_loss == {k: want_loss[k] for k in got_loss}
    return first, final


def test_killed_zero2_rank_resumes_from_the_checkpoint_folder_exactly_and_a_damaged_folder_is_refused(tmp_path):
    pytest.importorskip("deepspeed")
    first, final = kill_and_resume(tmp_path, ZERO)

    # -- a truncated shard in the newest folder ------------------------------------------------------------------
    damaged = final / "checkpoints" / "last.ckpt"
    verify_checksums(damaged)
    shard = damaged / "checkpoint" / "mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    named = f"{damaged}: checkpoint/mp_rank_00_model_states.pt ({shard.stat().st_size} bytes) fails its sha256 check"

    cmd = ["bash", str(REPO / "launch" / "torchrun.sh"), "fit", "--config", str(TINY),
           "--data.dataset_dir", str(tmp_path / "data"), "--trainer.default_root_dir", str(tmp_path / "again"),
           "--trainer.logger.init_args.save_dir", str(tmp_path / "again"), "--trainer.max_epochs", "2",
           "--strategy_name", ZERO, "--ckpt_path", str(damaged)]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, env={**ENV, "NPROC_PER_NODE": "2"}, capture_output=True, text=True, timeout=150)
    assert p.returncode != 0 and f"fusionrec fit: error: DeepSpeed checkpoint folder {named}" in p.stderr, (
        p.stdout[-3000:] + p.stderr[-3000:])  # one line from each rank, no traceback

    p = subprocess.run([sys.executable, "-m", "trainer.cli", "export", str(damaged), "--out", str(tmp_path / "x"),
                        "--no-progress"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and f"fusionrec export: error: DeepSpeed checkpoint folder {named}" in p.stderr, p.stderr
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())

    # a restarted worker of the second launch (recorded, not run) resumes the older complete folder
    recorder = tmp_path / "python"
    recorder.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {tmp_path / "args.txt"}\n')
    recorder.chmod(0o755)
    env = {**ENV, "PYTHON": str(recorder), "TORCHELASTIC_RESTART_COUNT": "1", "RANK": "0", "FUSIONREC_LAUNCHED": "0",
           "RUN_DIR": str(tmp_path / "elastic")}
    p = subprocess.run(["bash", str(REPO / "launch" / "torchrun.sh"), "--worker", "fit", "--config", str(TINY)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert f"skipping {damaged}: a file in it fails its checksum" in p.stderr, p.stderr
    args = (tmp_path / "args.txt").read_text().splitlines()
    assert args[args.index("--ckpt_path") + 1] == str(first), args


def test_killed_zero3_rank_resumes_from_the_checkpoint_folder_exactly(tmp_path):
    """The same under ZeRO-3: parameters are partitioned too, each rank's folder files hold its partition."""
    pytest.importorskip("deepspeed")
    kill_and_resume(tmp_path, "deepspeed_stage_3")
