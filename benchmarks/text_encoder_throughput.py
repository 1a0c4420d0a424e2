"""Text-encoder fine-tuning throughput: tokens/s, model TFLOP/s, MFU and peak memory per strategy.

    python benchmarks/text_encoder_throughput.py                        # GPU: ~100M encoder + ~1.1B decoder,
                                                                        #   seq 128 and 512, ddp / zero-2 / zero-3, bf16
    python benchmarks/text_encoder_throughput.py --preset cpu           # CPU smoke run: tiny models, 2 gloo ranks, fp32
    python benchmarks/text_encoder_throughput.py --largest              # GPU: largest decoder ZeRO-3 offload fine-tunes

fusionrec's own TextEncoder (last-token pooling for the decoder, mean for the encoder, a projection on top) in full
fine-tuning, randomly initialised from a real architecture's config (speed does not depend on the weights), under
torchrun with one process per device. Every text has exactly `seq` tokens, so tokens/s counts no padding. A
step = forward + backward + optimizer on `--batch` texts per rank; `--warmup` steps are not timed. Figures:
tokens/s over all ranks; model TFLOP/s from trainer/model/flops.py (2N + attention per token, x3 for forward + backward,
recomputation not counted); MFU against the device's peak dense bf16 rate (trainer.model.flops.PEAK_BF16); the largest
rank's peak memory (CUDA max allocated; max RSS on CPU). Per-run logs and JSON under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (name, architecture, config kwargs, pooling); sizes of real models' families, random weights
MODELS = {
    "encoder-110m": ("bert", {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                              "intermediate_size": 3072, "vocab_size": 30522, "max_position_embeddings": 512}, "mean"),
    "decoder-1.1b": ("llama", {"hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 32,
                               "num_key_value_heads": 4, "intermediate_size": 5632, "vocab_size": 32000,
                               "max_position_embeddings": 2048}, "last"),
    "cpu-encoder": ("bert", {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                             "intermediate_size": 512, "vocab_size": 30522, "max_position_embeddings": 512}, "mean"),
    "cpu-decoder": ("llama", {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                              "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 32000}, "last"),
}  # fmt: skip
# decoders tried by --largest, ascending (Llama shapes: hidden, layers, heads, kv heads, intermediate)
LADDER = [("3b", 3072, 28, 24, 8, 8192), ("7b", 4096, 32, 32, 8, 11008), ("13b", 5120, 40, 40, 8, 13824),
          ("20b", 6144, 44, 48, 8, 16384), ("34b", 8192, 48, 64, 8, 22016), ("70b", 8192, 80, 64, 8, 28672)]  # fmt: skip


def save_random(name: str, arch: str, kwargs: dict, folder: Path, dtype: torch.dtype) -> str:
    """A randomly initialised model of `arch` saved with save_pretrained (fusionrec loads it like any model)."""
    import transformers

    path = folder / name
    if (path / "config.json").is_file():
        return str(path)
    cfg = (transformers.BertConfig if arch == "bert" else transformers.LlamaConfig)(**kwargs, pad_token_id=0)
    model = transformers.AutoModel.from_config(cfg, dtype=dtype)
    model.save_pretrained(str(path))
    return str(path)


def worker(a: argparse.Namespace) -> None:
    """One rank: build the TextEncoder under the strategy, time `steps` steps, write <out>/rank<r>.json."""
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
    import deepspeed

    from trainer.engine.strategies import _without_shm_comm_op, load_deepspeed_config
    from trainer.model.encoders.text import TextEncoder
    from trainer.model.flops import peak_flops

    with _without_shm_comm_op():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    bf16 = cuda and not a.fp32
    n = a.batch * 4  # entities; each step draws a batch of them
    offsets = np.arange(n + 1, dtype=np.int64) * a.seq
    tokens = np.random.default_rng(rank).integers(5, 1000, size=n * a.seq)
    _, _, pooling = MODELS.get(a.model, ("llama", {}, "last"))
    kw = {"dim": 128, "pooling": pooling, "mode": "full", "pad_token_id": 0, "max_length": a.seq, "show_progress": False,
          "gradient_checkpointing": a.checkpointing}  # fmt: skip
    ds = None
    if a.strategy.startswith("deepspeed"):
        ds = load_deepspeed_config(a.strategy)
        ds.update({"train_micro_batch_size_per_gpu": a.batch, "gradient_accumulation_steps": 1,
                   "optimizer": {"type": "AdamW", "params": {"lr": 1e-5, "torch_adam": True}},
                   "bf16": {"enabled": bf16}})  # fmt: skip
    hf = None
    if ds is not None and ds["zero_optimization"]["stage"] == 3:
        from transformers.integrations import HfDeepSpeedConfig

        hf = HfDeepSpeedConfig(ds)  # noqa: F841  from_pretrained creates the weights partitioned
    enc = TextEncoder(a.model_path, offsets, tokens, dtype="bfloat16" if (bf16 and ds is not None) else None, **kw)
    if ds is None:
        enc = enc.to(device)
        model = torch.nn.parallel.DistributedDataParallel(enc, device_ids=[local] if cuda else None)
        opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=1e-5, fused=cuda)
    else:
        model, opt, *_ = deepspeed.initialize(model=enc, config=ds, model_parameters=[p for p in enc.parameters() if p.requires_grad])
    target = torch.randn(a.batch, 128, device=device)
    gen = torch.Generator().manual_seed(rank)
    t0 = flops0 = tok0 = None
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            if cuda:
                torch.cuda.synchronize()
            dist.barrier()
            t0, flops0, tok0 = time.perf_counter(), enc.flops_processed, enc.tokens_processed
        ids = torch.randint(0, n, (a.batch,), generator=gen).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and ds is None):
            loss = ((model(ids).float() - target) ** 2).mean()
        if ds is None:
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            model.backward(loss)
            model.step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rec = {"rank": rank, "world": world, "seconds": seconds, "tokens": enc.tokens_processed - tok0,
           "flops": enc.flops_processed - flops0, "peak_gib": peak, "peak_flops": peak_flops(device),
           "device": torch.cuda.get_device_name(device) if cuda else "cpu", "loss": float(loss)}  # fmt: skip
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / f"rank{rank}.json").write_text(json.dumps(rec))
    dist.barrier()


def launch(a: argparse.Namespace, model: str, path: str, seq: int, strategy: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(a.procs),
           str(Path(__file__).resolve()), "--worker", "--model", model, "--model-path", path, "--seq", str(seq),
           "--strategy", strategy, "--batch", str(a.batch if seq <= 128 else max(1, a.batch // 4)),
           "--steps", str(a.steps), "--warmup", str(a.warmup), "--out", str(out)]  # fmt: skip
    cmd += ["--fp32"] if a.fp32 else []
    cmd += ["--checkpointing"] if a.checkpointing else []
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(out / "log.txt", "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=a.timeout, env=env, cwd=REPO)
    recs = [json.loads(q.read_text()) for q in sorted(out.glob("rank*.json"))]
    row = {"model": model, "seq": seq, "strategy": strategy}
    if p.returncode != 0 or len(recs) != a.procs:
        return {**row, "error": f"exit {p.returncode}; see {out / 'log.txt'}"}
    s = max(r["seconds"] for r in recs)
    flops = sum(r["flops"] for r in recs)
    peak = recs[0]["peak_flops"]
    return {**row, "device": recs[0]["device"], "ranks": a.procs, "tokens_per_s": sum(r["tokens"] for r in recs) / s,
            "tflops": flops / s / 1e12, "mfu": (flops / s / (peak * a.procs)) if peak else None,
            "peak_gib": max(r["peak_gib"] for r in recs)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["gpu", "cpu"], default="gpu" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--seqs", nargs="+", type=int, default=[128, 512])
    ap.add_argument("--strategies", nargs="+", default=["ddp", "deepspeed_stage_2", "deepspeed_stage_3"])
    ap.add_argument("--procs", type=int, default=None, help="ranks [all GPUs; 2 on CPU]")
    ap.add_argument("--batch", type=int, default=None, help="texts per rank per step at seq <= 128 (/4 above)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--fp32", action="store_true", help="no bf16 (always on CPU)")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in the backbone")
    ap.add_argument("--largest", action="store_true", help="find the largest decoder ZeRO-3 offload fine-tunes")
    ap.add_argument("--out", default=str(REPO / "runs" / "text_encoder_throughput"))
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--model-path", dest="model_path", help=argparse.SUPPRESS)
    ap.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--strategy", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    cpu = a.preset == "cpu"
    a.fp32 = a.fp32 or cpu
    a.procs = a.procs or (2 if cpu else max(1, torch.cuda.device_count()))
    a.batch = a.batch or (8 if cpu else 64)
    a.steps = a.steps or (5 if cpu else 20)
    models = a.models or (["cpu-encoder", "cpu-decoder"] if cpu else ["encoder-110m", "decoder-1.1b"])
    cache = Path(tempfile.gettempdir()) / "fusionrec-bench-models"
    rows = []
    if a.largest:
        a.strategies, a.seqs = ["deepspeed_stage_3_offload"], [512]
        a.batch, a.checkpointing = min(a.batch, 8), True
        for name, h, layers, heads, kv, inter in LADDER:
            kwargs = {"hidden_size": h, "num_hidden_layers": layers, "num_attention_heads": heads,
                      "num_key_value_heads": kv, "intermediate_size": inter, "vocab_size": 32000}  # fmt: skip
            path = save_random(f"llama-{name}", "llama", kwargs, cache, torch.bfloat16)
            row = launch(a, f"decoder-{name}", path, 512, "deepspeed_stage_3_offload", Path(a.out) / f"largest-{name}")
            rows.append(row)
            print(json.dumps(row), flush=True)
            if "error" in row:
                break
    else:
        for model in models:
            arch, kwargs, _ = MODELS[model]
            path = save_random(model, arch, kwargs, cache, torch.float32)
            for seq in a.seqs:
                for strategy in a.strategies:
                    row = launch(a, model, path, seq, strategy, Path(a.out) / f"{model}-{seq}-{strategy}")
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    label = "CPU (gloo, fp32) - not a GPU figure" if cpu else f"GPU, {'fp32' if a.fp32 else 'bf16'}"
    print(f"\n### text-encoder full fine-tuning throughput ({label}; {a.procs} ranks, batch {a.batch}/rank at seq 128)\n")
    print("| model | seq | strategy | tokens/s | model TFLOP/s | MFU | peak memory (GiB, max rank) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['seq']} | {r['strategy']} | {r['error']} | | | |")
            continue
        m = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"| {r['model']} | {r['seq']} | {r['strategy']} | {r['tokens_per_s']:,.0f} | {r['tflops']:.3f} | {m} | {r['peak_gib']:.2f} |")


if __name__ == "__main__":
    main()
