"""Out-of-core preparation: the DuckDB engine beside the in-memory one on generated interactions, peak RSS measured.

    python benchmarks/prepare_out_of_core.py --rows 10000000 [100000000] [--memory-gb 1.5] [--memory-engine-max 10000000]
        [--tmp DIR] [--json benchmarks/results/prepare_out_of_core.json]

Each size is generated in chunks into a temporary folder (`--tmp`, never the repository) in RecBole atomic format
(the power-law users and items of benchmarks/generate.py: 1 user per 50 rows, 1 item per 200), then prepared by each
engine in a fresh process, one after the other, with the options of benchmarks/prepare_scaling.py (per-user random
80/10/10 ratio split, duplicates merged to the last rating). Peak RSS is the child's ru_maxrss (DuckDB's buffers are
inside it). Where both engines ran, their prepared folders are compared file by file (sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

CHILD = r"""
import json, logging, resource, sys, time
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
from data_modules.prepare.config import PrepareConfig
from data_modules.prepare.pipeline import prepare
cfg = PrepareConfig.from_dict(json.loads(sys.argv[1]))
t = time.perf_counter(); res = prepare(cfg, force=True); dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "kept_rows": res.manifest["stats"]["after_filter"], "raw_rows": res.manifest["stats"]["raw"]["interactions"]}))
"""


def generate(folder: Path, rows: int, seed: int = 0, chunk: int = 5_000_000) -> Path:
    """benchmarks/generate.py's distribution, written chunk by chunk (100M rows would not fit as one table)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_users, n_items = max(100, rows // 50), max(100, rows // 200)
    path = folder / f"{folder.name}.inter"
    with open(path, "wb") as f:
        f.write(b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for a in range(0, rows, chunk):
            k = min(chunk, rows - a)
            table = pa.table({
                "u": pa.array((rng.pareto(1.2, k) * n_users / 20).astype(np.int64) % n_users),
                "i": pa.array((rng.pareto(1.0, k) * n_items / 50).astype(np.int64) % n_items),
                "r": pa.array(rng.integers(1, 6, k)),
                "t": pa.array(rng.integers(8e8, 9e8, k)),
            })
            pacsv.write_csv(table, f, pacsv.WriteOptions(delimiter="\t", quoting_style="none", include_header=False))
    return folder


def run(cfg: dict, timeout: float) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, timeout=timeout,
                         cwd=Path(__file__).resolve().parents[1])
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    stages = [ln.strip() for ln in out.stderr.splitlines() if ln.startswith("stage ")]
    result = next(ln for ln in reversed(out.stdout.splitlines()) if ln.startswith('{"seconds"'))
    return {**json.loads(result), "stages": stages}


def digest(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file() and f.name != "manifest.json"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000_000])
    ap.add_argument("--memory-gb", type=float, default=1.5, help="the DuckDB engine's memory budget")
    ap.add_argument("--memory-engine-max", type=int, default=10_000_000, help="largest size the in-memory engine runs")
    ap.add_argument("--tmp", default=None, help="scratch folder (default: the system's temporary folder)")
    ap.add_argument("--timeout", type=float, default=580.0, help="seconds per child")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        for n in a.rows:
            t = time.perf_counter()
            src = generate(Path(tmp) / f"gen{n}", n)
            gen_s = time.perf_counter() - t
            outs = {}
            for kind in ("memory", "duckdb"):
                if kind == "memory" and n > a.memory_engine_max:
                    continue
                outs[kind] = Path(tmp) / f"out-{kind}-{n}"
                cfg = {"source": {"format": "recbole", "path": str(src), "name": src.name}, "split": {"protocol": "ratio"},
                       "output": {"dir": str(outs[kind])},
                       "engine": {"kind": kind, "memory_limit_gb": a.memory_gb, "temp_dir": tmp}}
                r = {"rows": n, "engine": kind, **run(cfg, a.timeout), "generate_seconds": round(gen_s, 1)}
                if kind == "duckdb":
                    r["memory_limit_gb"] = a.memory_gb
                r["kept_rows_per_s"] = r["kept_rows"] / r["seconds"]
                results.append(r)
                print(f"{n:>12,} {kind:<7} {r['seconds']:8.1f} s  peak RSS {r['rss_mb']:8.0f} MB  "
                      f"{r['kept_rows']:,} kept  {r['kept_rows_per_s']:,.0f} kept rows/s", flush=True)
            if len(outs) == 2:
                same = digest(outs["memory"]) == digest(outs["duckdb"])
                results.append({"rows": n, "identical_outputs": same})
                print(f"{n:>12,} outputs identical (every shard, side array, id map, quarantine file): {same}")
            for o in outs.values():
                shutil.rmtree(o, ignore_errors=True)
            shutil.rmtree(src, ignore_errors=True)
    if a.json:
        import duckdb

        Path(a.json).write_text(json.dumps({"command": " ".join(sys.argv), "cpus": 2, "duckdb": duckdb.__version__,
                                            "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
