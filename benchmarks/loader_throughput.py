"""Streaming loader throughput (examples/s) and memory, per prepared dataset and worker count.

    python benchmarks/loader_throughput.py DATASET_DIR [DATASET_DIR ...] --workers 0 2 --history 50 --batches 200
Each measurement runs in a fresh process (alone: do not run other CPU-heavy jobs meanwhile). RSS is the loader
process plus its workers (from /proc), sampled after the run; it should stay flat as the dataset grows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, os, sys, time
from torch.utils.data import DataLoader
from data_modules.resumable import ResumableLoader
from data_modules.streaming import TrainStream
a = json.loads(sys.argv[1])

def rss_mb():
    total = 0
    pids = [os.getpid()] + [int(p) for p in os.popen(f"pgrep -P {os.getpid()}").read().split()]
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
        except (FileNotFoundError, StopIteration):
            pass
    return total / 1024

stream = TrainStream(a["dir"], global_batch_size=a["batch"], history_len=a["history"], num_negatives=a["negatives"],
                     negative_sampler="popularity", seed=0)
loader = ResumableLoader(DataLoader(stream, batch_size=None, num_workers=a["workers"]))
n, t0, peak = 0, None, 0.0
it = iter(loader)
for i, b in enumerate(it):
    if i == 5:
        t0, n = time.perf_counter(), 0  # skip start-up (worker spawn, first reads)
    n += b["user"].shape[0]
    if i % 20 == 0:
        peak = max(peak, rss_mb())
    if i >= a["batches"] + 5:
        break
dt = time.perf_counter() - t0
print(json.dumps({"examples_per_s": n / dt, "rss_mb": peak, "rows": stream.n_rows}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--workers", type=int, nargs="*", default=[0, 2])
    ap.add_argument("--history", type=int, default=50)
    ap.add_argument("--negatives", type=int, default=0)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--batches", type=int, default=200)
    a = ap.parse_args()
    print(f"{'dataset':<40}{'train rows':>12}{'workers':>9}{'examples/s':>13}{'RSS MB':>9}")
    for d in a.dirs:
        for w in a.workers:
            args = {"dir": d, "workers": w, "history": a.history, "negatives": a.negatives, "batch": a.batch, "batches": a.batches}
            out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{d[-40:]:<40}{r['rows']:>12,}{w:>9}{r['examples_per_s']:>13,.0f}{r['rss_mb']:>9.0f}")


if __name__ == "__main__":
    main()
