"""One rank of tests/distributed/test_llm_text_encoder.py (started by torchrun, 2 gloo CPU ranks).

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed/llm_probe.py MODEL_DIR OUT zero3|lora_zero2|catalog

zero3: a decoder LLM (tiny random Llama) as fusionrec's TextEncoder, created under ZeRO-3 the way
trainer/engine/strategies.py does it (HfDeepSpeedConfig, so from_pretrained partitions while loading): records the
parameter elements this rank holds, the pooled last-token outputs for left- and right-padded batches next to an
unsharded copy's, a few training steps through the DeepSpeed engine, and the text cache built sharded across ranks.
lora_zero2: LoRA adapters (peft) under ZeRO-2: a few steps; records losses and checksums of adapter and base weights.
catalog: a generated 1M-item catalog's text cache, built sharded, then full ranking over it.
Writes OUT/rank<r>.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from trainer.engine.strategies import _without_shm_comm_op  # noqa: E402
from trainer.engine.text_cache import TextCacheStore, build_sharded, cache_key  # noqa: E402
from trainer.model.encoders.text import TextEncoder  # noqa: E402

# 11 entities of very different lengths (an empty one included): padding matters on both sides
SEQS = [[5, 17, 99, 4, 250], [7, 8], [300, 301, 302], [], [9] * 12, [11, 12, 13, 14], [40], [41, 42],
        [50, 51, 52, 53, 54, 55, 56], [60, 61, 62], [70]]  # fmt: skip


def csr() -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(SEQS) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in SEQS], out=offsets[1:])
    return offsets, np.asarray([t for s in SEQS for t in s], dtype=np.int64)


def ds_config(stage: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
    }


def encoder(path: str, mode: str, side: str = "right", **kw) -> TextEncoder:
    torch.manual_seed(0)  # the projection is the same on every rank and in the reference
    return TextEncoder(path, *csr(), dim=8, pooling="last", mode=mode, pad_token_id=0, padding_side=side,
                       show_progress=False, cache_batch_size=2, **kw)  # fmt: skip


def gather(t: torch.Tensor) -> torch.Tensor:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.stack(out)


def checksum(params) -> float:
    return float(sum(p.detach().double().sum() for p in params))


def zero3(path: str, out: Path, rank: int) -> dict:
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    ids = torch.arange(len(SEQS))
    with torch.no_grad():
        ref = {side: encoder(path, "full", side).eval().encode_text(ids) for side in ("right", "left")}
    ref_flops_params = encoder(path, "full")._shape.params
    cfg = ds_config(3)
    hf = HfDeepSpeedConfig(cfg)  # noqa: F841  (transformers keeps a weak reference: keep it alive)
    enc = encoder(path, "full", "right", length_buckets=3)
    backbone = list(enc.backbone.parameters())
    rec: dict = {
        "backbone_local": sum(int(p.ds_tensor.numel()) for p in backbone if hasattr(p, "ds_tensor")),
        "backbone_full": sum(int(getattr(p, "ds_numel", p.numel())) for p in backbone),
        "backbone_partitioned": sum(1 for p in backbone if hasattr(p, "ds_tensor")),
        "backbone_tensors": len(backbone),
        "backbone_local_numel_now": sum(p.numel() for p in backbone),  # 0-size placeholders outside forward
        # FLOPs accounting reads the full sizes (ds_numel), not the empty local placeholders
        "flops_params": enc._shape.params, "flops_params_unsharded": ref_flops_params,
    }
    engine, *_ = deepspeed.initialize(model=enc, config=cfg, model_parameters=[p for p in enc.parameters() if p.requires_grad])
    with torch.no_grad():
        enc.eval()
        for side in ("right", "left"):
            enc.padding_side = side
            rec[f"pooled_max_abs_diff_{side}"] = float((enc.encode_text(ids) - ref[side]).abs().max())
    enc.padding_side = "right"
    enc.train()
    losses = []
    target = torch.randn(len(SEQS), 8, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        loss = ((engine(ids) - target) ** 2).mean()
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    rec["losses"] = losses
    # the text cache, sharded: this rank encodes only its rows; the gathered cache equals a one-process encode
    store = TextCacheStore(out / "cache", cache_key(enc))
    before = enc.tokens_processed
    cache = build_sharded(enc, rank, dist.get_world_size(), gather, store)
    rec["cache_tokens_this_rank"] = enc.tokens_processed - before
    with torch.no_grad():
        whole = torch.cat([enc.encode_ids(torch.tensor([i])) for i in range(len(SEQS))])
    rec["cache_max_abs_diff"] = float((cache - whole).abs().max())
    rec["cache_shape"] = list(cache.shape)
    return rec


def lora_zero2(path: str, rank: int) -> dict:
    import deepspeed

    enc = encoder(path, "lora", lora_r=4, lora_target_modules=["q_proj", "v_proj", "gate_proj"])
    lora = [p for n, p in enc.backbone.named_parameters() if "lora_" in n]
    base = [p for n, p in enc.backbone.named_parameters() if "lora_" not in n]
    rec: dict = {"lora_tensors": len(lora), "trainable_non_lora": [n for n, p in enc.backbone.named_parameters()
                                                                   if p.requires_grad and "lora_" not in n]}
    rec["base_before"], rec["lora_before"] = checksum(base), checksum(lora)
    engine, *_ = deepspeed.initialize(model=enc, config=ds_config(2), model_parameters=[p for p in enc.parameters() if p.requires_grad])
    ids = torch.arange(len(SEQS))
    target = torch.randn(len(SEQS), 8, generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(5):
        loss = ((engine(ids) - target) ** 2).mean()
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    rec["losses"], rec["base_after"], rec["lora_after"] = losses, checksum(base), checksum(lora)
    return rec


def catalog(path: str, out: Path, rank: int, n: int = 1_000_000) -> dict:
    """A generated 1M-item catalog (2-5 tokens per item): its text cache built sharded, then full ranking of a few
    users over all items from the gathered vectors."""
    import time

    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 6, size=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = rng.integers(1, 500, size=int(offsets[-1]))
    torch.manual_seed(0)
    enc = TextEncoder(path, offsets, tokens, dim=8, pooling="last", mode="frozen", pad_token_id=0,
                      show_progress=False, cache_batch_size=32768)  # fmt: skip
    t0 = time.perf_counter()
    cache = build_sharded(enc, rank, dist.get_world_size(), gather, TextCacheStore(out / "cache", cache_key(enc)))
    seconds, encoded = time.perf_counter() - t0, enc.tokens_processed
    probe_ids = torch.tensor([0, 1, 499_999, 500_000, 777_777, n - 1])
    with torch.no_grad():
        direct = torch.cat([enc.encode_ids(probe_ids[i : i + 1]) for i in range(len(probe_ids))])
        items = enc.proj(cache)  # (n, 8): every item scored at once
        users = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
        top = (users @ items.T).topk(10, dim=1).indices
    return {"n": n, "cache_shape": list(cache.shape), "tokens_this_rank": encoded,
            "tokens_total": int(np.minimum(lengths, enc.max_length).sum()), "seconds": seconds,
            "probe_max_abs_diff": float((cache[probe_ids] - direct).abs().max()), "top10": top.tolist()}


def main() -> None:
    path, out, what = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    import deepspeed

    with _without_shm_comm_op():
        deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    rec = {"zero3": lambda: zero3(path, out, rank), "lora_zero2": lambda: lora_zero2(path, rank),
           "catalog": lambda: catalog(path, out, rank)}[what]()
    rec["rank"], rec["world_size"] = rank, dist.get_world_size()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(rec, indent=1))
    dist.barrier()


if __name__ == "__main__":
    main()
