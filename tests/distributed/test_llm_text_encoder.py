"""A decoder LLM as the text encoder on 2 gloo CPU ranks: ZeRO-3 full fine-tuning and LoRA under ZeRO-2.

The model is a tiny randomly initialised Llama (2 layers, hidden 64) saved with save_pretrained, so the real
`from_pretrained` path runs — under ZeRO-3 with transformers' DeepSpeed integration, as trainer/engine/strategies.py sets
it up, so the weights are created partitioned and no rank ever holds the whole model (tests/distributed/llm_probe.py
records what each rank holds). Tolerances: pooled outputs 1e-5 absolute (float32; the sharded model gathers the
same weights, only kernels' summation order may differ).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.models import save_tiny_llama
from tests.launch_support.local_slurm import free_port

pytestmark = pytest.mark.distributed
transformers = pytest.importorskip("transformers")
pytest.importorskip("deepspeed")

REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "tests" / "distributed" / "llm_probe.py"
ENV = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}  # fmt: skip
for _k in [k for k in ENV if k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "TORCHELASTIC_"))]:
    del ENV[_k]


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def probe(model: str, out: Path, what: str) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "--max_restarts", "0",
           str(PROBE), model, str(out), what]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-6000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def zero3(llama, tmp_path_factory) -> tuple[list[dict], Path]:
    out = tmp_path_factory.mktemp("zero3")
    return probe(llama, out, "zero3"), out


def test_zero3_creates_the_decoder_partitioned(zero3):
    records, _ = zero3
    for r in records:
        assert r["backbone_partitioned"] == r["backbone_tensors"] > 0, r
        assert r["backbone_local_numel_now"] == 0, r  # outside a forward only empty placeholders remain
        assert r["flops_params"] == r["flops_params_unsharded"] > 0, r
        # each rank holds its half of every tensor, padded up to a multiple of the world size
        assert 0.5 <= r["backbone_local"] / r["backbone_full"] <= 0.5 + r["backbone_tensors"] / r["backbone_full"], r
    assert records[0]["backbone_full"] == records[1]["backbone_full"]


def test_zero3_pooled_outputs_equal_the_unsharded_model_left_and_right_padded(zero3):
    for r in zero3[0]:
        assert r["pooled_max_abs_diff_right"] < 1e-5, r
        assert r["pooled_max_abs_diff_left"] < 1e-5, r


def test_zero3_full_fine_tuning_trains_the_same_on_both_ranks(zero3):
    a, b = (r["losses"] for r in zero3[0])
    assert a == pytest.approx(b, rel=1e-6)  # same data on both ranks: same loss after every step
    assert a[-1] < a[0]


def test_zero3_text_cache_is_built_sharded_across_ranks(zero3):
    records, out = zero3
    for r in records:
        assert r["cache_shape"] == [11, 64] and r["cache_max_abs_diff"] < 1e-5, r
    # ceil(11 / 2) = 6 rows each (rank 1 encodes its 5 rows + 1 repeat, dropped), and nobody encodes all 11
    total = records[0]["cache_tokens_this_rank"] + records[1]["cache_tokens_this_rank"]
    assert 0 < records[0]["cache_tokens_this_rank"] < total and 0 < records[1]["cache_tokens_this_rank"] < total
    files = sorted(p.name for p in (out / "cache").rglob("rows-*.safetensors"))
    assert files == ["rows-0-6.safetensors", "rows-6-11.safetensors"], files


def test_lora_under_zero2_trains_only_the_adapters(llama, tmp_path):
    records = probe(llama, tmp_path, "lora_zero2")
    for r in records:
        assert r["lora_tensors"] > 0 and r["trainable_non_lora"] == [], r
        assert r["base_after"] == r["base_before"], r  # frozen base weights untouched
        assert r["lora_after"] != r["lora_before"], r
        assert r["losses"][-1] < r["losses"][0], r
    assert records[0]["lora_after"] == pytest.approx(records[1]["lora_after"], rel=1e-6)  # replicas agree


@pytest.fixture(scope="module")
def llama_minilm_vocab(tmp_path_factory) -> str:
    """A tiny random Llama over the tiny fixture's prepared token ids (MiniLM's vocabulary, 30,522)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama_30k"), vocab_size=30522, hidden=32)


@pytest.mark.parametrize(("strategy", "mode"), [("deepspeed_stage_3", "full"), ("deepspeed_stage_2", "lora")])
def test_fusionrec_fit_fine_tunes_a_decoder_text_encoder(llama_minilm_vocab, tmp_path, strategy, mode):
    """The real `fusionrec fit` on configs/tiny.yaml with the decoder as item text encoder (last-token pooling,
    left padding), 2 ranks: the model is created partitioned under ZeRO-3 (configure_model), trains, and
    validates with the catalog's text encoded once, sharded across the ranks."""
    probe_cb = {"class_path": "tests.distributed.strategy_probe.StrategyProbe", "init_args": {"out": str(tmp_path / "probe")}}
    args = ["fit", "--config", str(REPO / "configs" / "tiny.yaml"), "--strategy_name", strategy,
            "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.max_epochs", "1",
            "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.callbacks", json.dumps([probe_cb]), "--trainer.default_root_dir", str(tmp_path),
            "--data.dataset_dir", str(tmp_path / "prepared"),
            "--model.model.text.model", llama_minilm_vocab, "--model.model.text.pooling", "last",
            "--model.model.text.padding_side", "left", "--model.model.text.mode", mode,
            "--model.model.text.length_buckets", "2", "--model.model.text.lora_target_modules", "[q_proj, v_proj]"]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "--max_restarts", "0",
           "-m", "trainer.cli", *args]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-6000:]
    records = [json.loads((tmp_path / "probe" / f"rank{r}.json").read_text()) for r in range(2)]
    for r in records:
        assert len(r["loss"]) == 5 and all(v == v for v in r["loss"]), r["loss"]  # 5 finite steps
        assert "val/ndcg@10" in r["val"], r["val"]
        params = r["params"]
        if strategy == "deepspeed_stage_3":  # every parameter, the decoder's included, is partitioned
            assert params["partitioned_tensors"] == params["tensors"], params
            assert params["local"] / params["full"] < 0.5 + params["tensors"] / params["full"], params
    assert records[0]["val"] == records[1]["val"]  # reduced across ranks
    # evaluation encoded the 16 items' text sharded: rows [0, 8) on rank 0, [8, 16) on rank 1
    assert "item text cache: rank 0 encoded rows [0, 8) of 16" in log, log[-4000:]
    assert "item text cache: rank 1 encoded rows [8, 16) of 16" in log, log[-4000:]


def test_a_million_item_catalog_is_encoded_sharded_and_ranked(llama, tmp_path):
    """1M items: each rank runs the backbone on its half of the catalog's text only (tokens move to the device a
    batch at a time; the token arrays and the gathered vectors stay in host memory), and every rank can then rank
    all items for a user."""
    records = probe(llama, tmp_path, "catalog")
    a, b = records
    for r in records:
        assert r["cache_shape"] == [1_000_000, 64] and r["probe_max_abs_diff"] < 1e-5, r
    assert a["tokens_this_rank"] + b["tokens_this_rank"] == a["tokens_total"]  # disjoint halves, nothing twice
    assert 0.45 < a["tokens_this_rank"] / a["tokens_total"] < 0.55
    assert a["top10"] == b["top10"]  # both ranks hold the same catalog
    stored = sorted(p.name for p in (tmp_path / "cache").rglob("rows-*.safetensors"))
    assert stored == ["rows-0-500000.safetensors", "rows-500000-1000000.safetensors"]
