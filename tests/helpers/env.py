"""The environment for a test's child processes (fusionrec, torchrun): offline, one thread per rank, loopback."""

from __future__ import annotations

import os

LAUNCHER_PREFIXES = ("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "TORCHELASTIC_", "RUN_DIR")


def child_env(**extra: str) -> dict[str, str]:
    """os.environ without any launcher's variables (a test run inside a Slurm job or torchrun must not leak
    them), plus offline Hugging Face, one intra-op thread, gloo on loopback, unbuffered output, and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_PREFIXES)}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONUNBUFFERED": "1"})  # fmt: skip
    env.update(extra)
    return env
