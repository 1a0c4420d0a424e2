"""Side-by-side table: RecBole 1.2.1 peers vs fusionrec runs on the identical ml-100k split.

    bash ../shared/peers/run_recbole.sh                      # BPR, LightGCN, NeuMF (writes SUMMARY_JSON logs)
    fusionrec fit --config configs/ml100k_id_only.yaml --test_after_fit true
    fusionrec fit --config configs/ml100k.yaml --test_after_fit true
    python benchmarks/compare_recbole.py --recbole-logs ~/.cache/recbole-work/logs \
        --run "fusionrec id-only=runs/ml100k_id_only/version_0" --run "fusionrec fused=runs/ml100k/version_0"

fusionrec's `recbole` split protocol reproduces RecBole's split exactly (tests/unit/data/test_recbole_split_parity.py),
and evaluation masks the same seen items (train for valid; train + valid for test), so the columns compare.
A run folder's test metrics are read from its TensorBoard event files (tags test/<metric>@10).
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

METRICS = ("ndcg@10", "recall@10", "mrr@10", "hit@10", "precision@10")


def recbole_results(logs: Path) -> dict[str, dict[str, float]]:
    out = {}
    for log in sorted(logs.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("SUMMARY_JSON "):
                d = json.loads(line[len("SUMMARY_JSON "):])
                out[f"RecBole {d['model']}"] = {**d["test_result"], "valid ndcg@10": d["best_valid_result"]["ndcg@10"]}
    return out


def fusionrec_results(run_dir: str) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, float] = {}
    for f in sorted(glob.glob(f"{run_dir}/events*")):
        ea = EventAccumulator(f)
        ea.Reload()
        tags = ea.Tags()["scalars"]
        for m in METRICS:
            if f"test/{m}" in tags:
                values[m] = ea.Scalars(f"test/{m}")[-1].value
        if "val/ndcg@10" in tags:
            values["valid ndcg@10"] = max(e.value for e in ea.Scalars("val/ndcg@10"))
    if not values:
        raise SystemExit(f"{run_dir}: no test/* metrics in its event files (run fit with --test_after_fit true)")
    return values


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recbole-logs", type=Path, default=Path("~/.cache/recbole-work/logs").expanduser())
    ap.add_argument("--run", action="append", default=[], help="NAME=RUN_DIR (a TensorBoard version folder)")
    a = ap.parse_args()
    rows = recbole_results(a.recbole_logs)
    for spec in a.run:
        name, _, path = spec.partition("=")
        rows[name] = fusionrec_results(path)
    cols = ["valid ndcg@10", *METRICS]
    print("| model | " + " | ".join(f"{'test ' if c in METRICS else ''}{c}" for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.4f}" if c in r else "–" for c in cols) + " |")


if __name__ == "__main__":
    main()
