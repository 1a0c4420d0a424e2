"""Elastic restart: under `MAX_RESTARTS=1 bash launch/torchrun.sh fit`, a rank killed with SIGKILL mid-epoch makes
torchrun restart both ranks, and the restarted fit resumes from the run's last.ckpt: it ends with the same
validation metrics and train losses as an uninterrupted 2-rank fit, bit for bit.

Both runs: configs/tiny.yaml on 2 gloo ranks for 2 epochs (5 steps each, validation after steps 5 and 10), a
checkpoint every 2 steps with save_last, no source dropout and a flat learning rate after warmup (min_lr_ratio 1,
as in test_resume.py). In the interrupted run `KillOnce` (below, loaded by class_path) SIGKILLs rank 1 after step 5,
before that epoch's validation; last.ckpt then holds step 4 (epoch 0, batch 4 of 5: mid-epoch), so the restart
redoes step 5, validates epoch 0 and finishes — in a new TensorBoard version, whose events are compared.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import pytorch_lightning as pl
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers.env import child_env

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
EVERY, KILL_AT = 2, 5
# LOGLEVEL: torchrun's agent logs "... will restart worker group" at INFO
ENV = child_env(LOGLEVEL="INFO", NPROC_PER_NODE="2", ACCELERATOR="cpu")


class KillOnce(pl.Callback):
    """SIGKILL this process after optimizer step `step` on global rank `rank`, once: `marker` is created first,
    so the restarted group (same arguments) does not kill again. Test-only: a crash no Python code can catch."""

    def __init__(self, marker: str, step: int = KILL_AT, rank: int = 1) -> None:
        self.marker, self.step, self.rank = Path(marker), step, rank

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)


def fit(out: Path, *, kill_marker: Path | None = None, strategy: str = "ddp") -> tuple[Path, str]:
    """launch/torchrun.sh fit on 2 CPU ranks with MAX_RESTARTS=1 under `strategy`; returns (newest TensorBoard log
    dir, log)."""
    callbacks = [
        "    - class_path: pytorch_lightning.callbacks.ModelCheckpoint\n"
        f'      init_args: {{every_n_train_steps: {EVERY}, save_last: true, save_top_k: -1, filename: "s{{step}}"}}\n'
    ]
    if kill_marker is not None:
        callbacks.append(f"    - class_path: tests.e2e.test_elastic.KillOnce\n      init_args: {{marker: '{kill_marker}'}}\n")
    out.mkdir(parents=True)
    (out / "callbacks.yaml").write_text("trainer:\n  callbacks:\n" + "".join(callbacks))
    cmd = [
        "bash", str(REPO / "launch" / "torchrun.sh"), "fit",
        "--config", str(TINY), "--config", str(out / "callbacks.yaml"),
        "--data.dataset_dir", str(out.parent / "data"),
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.max_epochs", "2", "--model.model.source_dropout", "{}", "--model.optim.min_lr_ratio", "1.0",
        "--strategy_name", strategy,
    ]  # fmt: skip
    # configs/tiny.yaml's inputs are relative to the repository; every output goes to tmp_path
    # a session of its own: on a timeout the workers are killed with the agent instead of lingering
    p = subprocess.Popen(
        cmd, cwd=REPO, env={**ENV, "MAX_RESTARTS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    try:
        log = p.communicate(timeout=150)[0]
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        log = p.communicate()[0]
    (out / "torchrun.log").write_text(log)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{log[-6000:]}"
    return sorted((out / "tiny").glob("version_*"))[-1], log


def scalars(log_dir: Path, prefix: str) -> dict[tuple[str, int], float]:
    """(tag, step) -> value for the tags starting with `prefix` in a run's TensorBoard events (rank 0's)."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = [t for t in acc.Tags()["scalars"] if t.startswith(prefix)]
    return {(t, e.step): e.value for t in tags for e in acc.Scalars(t)}


def test_killed_rank_restarts_and_resumes_exactly(tmp_path):
    full, _ = fit(tmp_path / "full")
    marker = tmp_path / "killed-once"
    final, log = fit(tmp_path / "elastic", kill_marker=marker)

    assert marker.exists(), log
    assert "1/1 attempts left; will restart worker group" in log, log  # torchrun's agent
    first = tmp_path / "elastic" / "tiny" / "version_0"
    resumed_from = f"restart 1: resuming with --ckpt_path {first / 'checkpoints' / 'last.ckpt'}"
    assert f"torchrun.sh: rank 0, {resumed_from}" in log and f"torchrun.sh: rank 1, {resumed_from}" in log, log
    assert final.name == "version_1", final  # the restart logged to a new version

    want_val, got_val = scalars(full, "val/"), scalars(final, "val/")
    assert {s for _, s in want_val} == {KILL_AT - 1, 2 * KILL_AT - 1}, want_val  # after each epoch's last step
    assert any(t == "val/ndcg@10" for t, _ in want_val), sorted(want_val)
    assert got_val == want_val  # bit-identical float32s: same model, same data order after the resume

    want_loss, got_loss = scalars(full, "train/loss"), scalars(final, "train/loss")  # and its parts
    resumed_steps = sorted(s for t, s in got_loss if t == "train/loss")
    assert resumed_steps == list(range(KILL_AT // EVERY * EVERY, 2 * KILL_AT)), resumed_steps  # from step 4
    assert got_loss == {k: want_loss[k] for k in got_loss}
