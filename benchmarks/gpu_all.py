"""Every GPU-only figure from one command, inside a wall-clock budget: a short GPU loan yields all of them at once.

    python benchmarks/gpu_all.py                       # GPU: budget 480 s, figures to runs/gpu_all/summary.json
    python benchmarks/gpu_all.py --budget 900 --json benchmarks/results/gpu_all.json
    python benchmarks/gpu_all.py --preset cpu --budget 120   # CPU smoke (2 gloo ranks, tiny models; CI runs it)

Jobs run one after another, most wanted first, each a subprocess with the budget left as its timeout:
  1. text  - text-encoder full fine-tuning: tokens/s, model TFLOP/s, MFU, peak memory (benchmarks/text_encoder_throughput.py)
             for a ~1.1B decoder and a ~110M encoder at 512 and 128 tokens, under ddp and ZeRO-3;
  2. fit   - the ml100k fused model's `fusionrec fit` under ddp, ZeRO-2, ZeRO-3: examples/s, peak memory
             (benchmarks/gpu_check.py);
  3. largest - the largest decoder ZeRO-3 offload fine-tunes (a ladder of Llama shapes, 3B upwards, until one fails).
Before each job the budget left is checked against the job's least plausible time; a job that does not fit is
listed as skipped, never started. After every job its row is printed and the summary JSON rewritten, so a run cut
short (the loan ends, a timeout) still leaves every figure measured so far. `--preset cpu` runs the same three stages
with tiny models, fp32 and gloo, labelled as not GPU figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import gpu_check  # noqa: E402
from benchmarks import text_encoder_throughput as tet  # noqa: E402


def _text_jobs(preset: str, procs: int) -> list[tuple[str, float, Callable[[Path, float], dict]]]:
    cpu = preset == "cpu"
    grid = ([("cpu-decoder", 64, "ddp"), ("cpu-encoder", 64, "deepspeed_stage_3")] if cpu else
            [(m, s, st) for m in ("decoder-1.1b", "encoder-110m") for s in (512, 128) for st in ("ddp", "deepspeed_stage_3")])
    cache = Path(tempfile.gettempdir()) / "fusionrec-bench-models"
    jobs = []
    for model, seq, strategy in grid:
        def run(out: Path, left: float, model: str = model, seq: int = seq, strategy: str = strategy) -> dict:
            arch, kwargs, _ = tet.MODELS[model]
            path = tet.save_random(model, arch, kwargs, cache, torch.float32)
            a = SimpleNamespace(procs=procs, batch=8 if cpu else 64, steps=2 if cpu else 20, warmup=1 if cpu else 3,
                                fp32=cpu, checkpointing=False, timeout=left)
            return tet.launch(a, model, path, seq, strategy, out)
        jobs.append((f"text {model} seq {seq} {strategy}", 10.0 if cpu else 60.0, run))
    return jobs


def _fit_jobs(preset: str, procs: int) -> list[tuple[str, float, Callable[[Path, float], dict]]]:
    cpu = preset == "cpu"
    strategies = ["ddp"] if cpu else list(gpu_check.STRATEGIES)
    config = "configs/tiny.yaml" if cpu else "configs/ml100k.yaml"
    jobs = []
    for strategy in strategies:
        def run(out: Path, left: float, strategy: str = strategy) -> dict:
            a = gpu_check.parse_args(["--config", config, "--steps", "3" if cpu else "60", "--warmup", "1" if cpu else "10",
                                      "--precision", "32-true" if cpu else "bf16-mixed"])
            extra = ["--data.dataset_dir", str(out / "prepared")] if cpu else []
            a.extra = extra
            cmd = gpu_check.command(strategy, a, procs, out)
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "log.txt", "w") as log:
                rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=left).returncode
            row = gpu_check.summarise(strategy, out, procs)
            return row if rc == 0 else {"strategy": strategy, "error": f"exit {rc}; see {out / 'log.txt'}"}
        jobs.append((f"fit {Path(config).stem} {strategy}", 20.0 if cpu else 90.0, run))
    return jobs


def _largest_jobs(preset: str, procs: int) -> list[tuple[str, float, Callable[[Path, float], dict]]]:
    cpu = preset == "cpu"
    ladder = [("tiny", 64, 2, 4, 2, 128)] if cpu else tet.LADDER
    cache = Path(tempfile.gettempdir()) / "fusionrec-bench-models"
    jobs = []
    for name, h, layers, heads, kv, inter in ladder:
        def run(out: Path, left: float, name: str = name, shape: tuple = (h, layers, heads, kv, inter)) -> dict:
            h, layers, heads, kv, inter = shape
            kwargs = {"hidden_size": h, "num_hidden_layers": layers, "num_attention_heads": heads,
                      "num_key_value_heads": kv, "intermediate_size": inter, "vocab_size": 32000}
            path = tet.save_random(f"llama-{name}", "llama", kwargs, cache, torch.float32 if cpu else torch.bfloat16)
            a = SimpleNamespace(procs=procs, batch=2 if cpu else 8, steps=1 if cpu else 5, warmup=1, fp32=cpu,
                                checkpointing=True, timeout=left)
            return tet.launch(a, f"decoder-{name}", path, 64 if cpu else 512, "deepspeed_stage_3_offload", out)
        jobs.append((f"largest decoder-{name} ZeRO-3 offload", 15.0 if cpu else 120.0, run))
    return jobs


def run_all(preset: str, budget: float, out: Path, stages: list[str], procs: int, say: Callable[[str], None] = print
            ) -> dict[str, Any]:
    """Runs the stages' jobs in order while the budget allows; returns (and keeps writing) the summary."""
    t0 = time.monotonic()
    builders = {"text": _text_jobs, "fit": _fit_jobs, "largest": _largest_jobs}
    summary: dict[str, Any] = {"preset": preset, "budget_s": budget, "procs": procs,
                               "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                               "label": "CPU smoke (gloo, fp32, tiny models): not GPU figures" if preset == "cpu" else "GPU",
                               "rows": [], "skipped": []}
    out.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        failed_largest = False
        for name, least, job in builders[stage](preset, procs):
            left = budget - (time.monotonic() - t0)
            if left < least or failed_largest:
                why = "a smaller decoder already failed" if failed_largest else f"{left:.0f} s left, needs >= {least:.0f} s"
                summary["skipped"].append({"job": name, "why": why})
                say(f"[gpu_all] skip {name}: {why}")
                continue
            say(f"[gpu_all] {name} ({left:.0f} s of budget left)")
            start = time.monotonic()
            folder = out / name.replace(" ", "_")
            try:
                row = job(folder, left)
            except subprocess.TimeoutExpired:
                row = {"error": f"stopped at the budget ({left:.0f} s); see {folder}"}
            row = {"stage": stage, "job": name, "seconds": round(time.monotonic() - start, 1), **row}
            summary["rows"].append(row)
            failed_largest = stage == "largest" and "error" in row
            say(f"[gpu_all]   -> {json.dumps(row)}")
            summary["elapsed_s"] = round(time.monotonic() - t0, 1)
            (out / "summary.json").write_text(json.dumps(summary, indent=1))
    summary["elapsed_s"] = round(time.monotonic() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def table(summary: dict[str, Any]) -> str:
    lines = [f"### GPU figures ({summary['label']}; {summary['device']}, {summary['procs']} ranks, "
             f"{summary['elapsed_s']:.0f} of {summary['budget_s']:.0f} s)", "",
             "| job | tokens/s or examples/s | MFU | peak memory | s |", "|---|---|---|---|---|"]
    for r in summary["rows"]:
        if "error" in r:
            lines.append(f"| {r['job']} | failed: {r['error']} | | | {r['seconds']} |")
            continue
        rate = f"{r['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in r else f"{r.get('examples_per_s', 0):,.0f} examples/s"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"
        mem = f"{r['peak_gib']:.2f} GiB" if "peak_gib" in r else f"{r.get('peak_mib', 0):,.0f} MiB"
        lines.append(f"| {r['job']} | {rate} | {mfu} | {mem} | {r['seconds']} |")
    lines += [f"| {s['job']} | skipped: {s['why']} | | | |" for s in summary["skipped"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["gpu", "cpu"], default="gpu" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget", type=float, default=480.0, help="wall-clock seconds for everything [480]")
    ap.add_argument("--stages", nargs="+", default=["text", "fit", "largest"], choices=["text", "fit", "largest"])
    ap.add_argument("--procs", type=int, default=None, help="ranks [all GPUs; 2 on CPU]")
    ap.add_argument("--out", default=str(REPO / "runs" / "gpu_all"), help="per-job logs and summary.json")
    ap.add_argument("--json", help="also copy the summary here")
    a = ap.parse_args(argv)
    if a.preset == "gpu" and not torch.cuda.is_available():
        print("gpu_all: --preset gpu but no CUDA device is visible; `--preset cpu` is the CPU smoke run", file=sys.stderr)
        return 2
    procs = a.procs or (2 if a.preset == "cpu" else torch.cuda.device_count())
    summary = run_all(a.preset, a.budget, Path(a.out), a.stages, procs, say=lambda s: print(s, flush=True))
    print("\n" + table(summary), flush=True)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(a.out) / "summary.json", a.json)
    print(f"\nsummary: {Path(a.out) / 'summary.json'}", flush=True)
    return 0 if summary["rows"] and all("error" not in r for r in summary["rows"] if r["stage"] != "largest") else 1


if __name__ == "__main__":
    sys.exit(main())
