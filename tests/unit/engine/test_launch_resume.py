"""Which checkpoint the launchers resume: the newest Lightning checkpoint file OR DeepSpeed checkpoint folder.

Under ZeRO, Lightning saves `last.ckpt` / `hpc_ckpt_N.ckpt` as a folder (`latest` names the tag subfolder holding
the shards); a launcher that only looks for files restarts a requeued ZeRO job from scratch. A folder is complete
when its checksum manifest exists and every file matches it (trainer/engine/checkpoint_checksums.py); a newer
folder that is not (an unfinished save, a truncated shard) is skipped with a line saying why. Both scripts run here
for real, with `srun` and the fusionrec / python command replaced by scripts that record their arguments.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from trainer.engine.checkpoint_checksums import write_checksums

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]


def _touch(path: Path, t: float, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (t, t))


def _zero_folder(ckpt: Path, t: float) -> Path:
    """A DeepSpeed checkpoint folder as fusionrec saves it: shards, `latest`, then the checksum manifest."""
    _touch(ckpt / "checkpoint" / "mp_rank_00_model_states.pt", t, "model states")
    _touch(ckpt / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", t, "optimizer partition")
    _touch(ckpt / "latest", t, "checkpoint")
    manifest = write_checksums(ckpt)
    os.utime(manifest, (t, t))
    return ckpt


@pytest.fixture
def run_dir(tmp_path: Path) -> dict[str, Path]:
    """An older checkpoint file, a newer complete DeepSpeed folder, and still newer folders that must be skipped:
    one whose save never finished (shards and `latest`, no manifest), one with a truncated shard, one with only
    `latest`. Only the complete folder may be picked."""
    runs = tmp_path / "runs"
    plain = runs / "version_0" / "checkpoints" / "last.ckpt"
    _touch(plain, 1000)
    zero = _zero_folder(runs / "version_1" / "checkpoints" / "last.ckpt", 2000)
    _touch(runs / "version_1" / "checkpoints" / "hpc_ckpt_3.ckpt" / "checkpoint" / "mp_rank_00_model_states.pt", 3000)
    _touch(runs / "version_1" / "checkpoints" / "hpc_ckpt_3.ckpt" / "latest", 3000, "checkpoint")
    damaged = _zero_folder(runs / "version_2" / "checkpoints" / "last.ckpt", 3000)
    shard = damaged / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:5])  # truncated after the save
    os.utime(shard, (3000, 3000))
    _touch(runs / "version_3" / "checkpoints" / "last.ckpt" / "latest", 3000, "global_step9")
    return {"runs": runs, "plain": plain, "zero": zero, "damaged": damaged}


def _recorder(path: Path, out: Path) -> Path:
    path.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {out}\n')
    path.chmod(0o755)
    return path


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_", "FUSIONREC"))}
    return {**env, **extra}


def _ckpt_arg(args: list[str]) -> str | None:
    return args[args.index("--ckpt_path") + 1] if "--ckpt_path" in args else None


def test_slurm_sbatch_resumes_the_newest_deepspeed_checkpoint_folder(tmp_path, run_dir):
    out = tmp_path / "args.txt"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # srun: drop its options, run the command
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "srun").chmod(0o755)
    env = _env(tmp_path, RUN_DIR=str(run_dir["runs"]), FUSIONREC=str(_recorder(tmp_path / "fusionrec", out)),
               PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    p = subprocess.run(["bash", str(REPO / "launch" / "slurm.sbatch"), "fit", "--config", "configs/tiny.yaml"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    args = out.read_text().splitlines()
    assert _ckpt_arg(args) == str(run_dir["zero"]), (args, p.stdout)
    assert f"last checkpoint {run_dir['zero']}" in p.stdout, p.stdout
    assert f"skipping {run_dir['damaged']}: a file in it fails its checksum" in p.stderr, p.stderr
    assert "hpc_ckpt_3.ckpt: no fusionrec-checksums.sha256 (its save did not finish)" in p.stderr, p.stderr


def test_torchrun_worker_restart_resumes_the_deepspeed_checkpoint_folder_of_this_launch(tmp_path, run_dir):
    out = tmp_path / "args.txt"
    python = _recorder(tmp_path / "python", out)

    def worker(launched: str) -> list[str]:
        out.unlink(missing_ok=True)
        env = _env(tmp_path, RUN_DIR=str(run_dir["runs"]), PYTHON=str(python), TORCHELASTIC_RESTART_COUNT="1",
                   RANK="0", FUSIONREC_LAUNCHED=launched)
        p = subprocess.run(["bash", str(REPO / "launch" / "torchrun.sh"), "--worker", "fit", "--config", "x.yaml"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        return out.read_text().splitlines()

    args = worker("1500")  # after the plain file, before the DeepSpeed folder was complete
    assert args[:3] == ["-m", "trainer.cli", "fit"] and _ckpt_arg(args) == str(run_dir["zero"]), args
    assert _ckpt_arg(worker("2500")) is None  # nothing this launch wrote: start over, never an older job's
