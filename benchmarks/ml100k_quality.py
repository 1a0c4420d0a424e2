"""ml-100k quality tables: fused vs id-only vs RecBole, the source ablation, and the cold-start item and user splits.

    bash ../shared/peers/run_recbole.sh                         # first, alone: RecBole BPR / NeuMF / LightGCN logs
    python benchmarks/ml100k_quality.py                         # every run below, one after the other, then the tables
    python benchmarks/ml100k_quality.py --only fused id_only    # a subset; --max_epochs N caps every run
    python benchmarks/ml100k_quality.py --tables-only           # re-print the tables from runs/quality

Each run is the real `fusionrec fit --config ... --test_after_fit true` (seed 2020, RecBole's default split for
configs/ml100k*.yaml, the cold-start item split for configs/ml100k_cold.yaml, the cold-start user split for
configs/ml100k_cold_user.yaml). Checkpoint choice and early stopping
use validation NDCG@10 only; the test split is evaluated once, on the best checkpoint, after fit. The ablation
removes one source at a time from configs/ml100k.yaml; everything else is unchanged. Runs go to
runs/quality/<name>/version_*; the tables read their TensorBoard event files (test/* and val/ndcg@10).
Run it alone: two CPU-heavy jobs on 2 cores slow each other many-fold.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_recbole import METRICS, fusionrec_results, recbole_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FUSED = ["id", "tabular", "text", "sequence", "graph"]


def _sources(srcs: list[str]) -> list[str]:
    return ["--model.model.sources", "[" + ", ".join(srcs) + "]"]


RUNS: dict[str, tuple[str, list[str]]] = {
    "fused": ("configs/ml100k.yaml", []),
    "id_only": ("configs/ml100k_id_only.yaml", []),
    **{f"no_{s}": ("configs/ml100k.yaml", _sources([x for x in FUSED if x != s])) for s in FUSED},
    "cold_fused": ("configs/ml100k_cold.yaml", []),
    "cold_id_only": ("configs/ml100k_cold.yaml", _sources(["id"]) + ["--model.model.source_dropout", "{}"]),
    "cold_user_fused": ("configs/ml100k_cold_user.yaml", []),
    "cold_user_id_only": ("configs/ml100k_cold_user.yaml",
                          _sources(["id"]) + ["--model.model.user_sources", "[id]", "--model.model.source_dropout", "{}"]),
}


def run(name: str, out: Path, max_epochs: int | None) -> float:
    config, extra = RUNS[name]
    cmd = [sys.executable, "-m", "trainer.cli", "fit", "--config", config, *extra, "--test_after_fit", "true",
           "--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", name,
           "--trainer.enable_progress_bar", "false"]  # fmt: skip
    if max_epochs:
        cmd += ["--trainer.max_epochs", str(max_epochs)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    log = out / f"{name}.log"
    with open(log, "w") as f:
        p = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{name} failed (exit {p.returncode}); see {log}")
    print(f"[{time.strftime('%H:%M:%S')}] {name}: done in {dt:.0f} s; log {log}", flush=True)
    return dt


def latest(out: Path, name: str) -> Path | None:
    versions = sorted((out / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return versions[-1] if versions else None


def table(rows: dict[str, dict[str, float]], cols: list[str]) -> str:
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.4f}" if c in r else "–" for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "quality")
    ap.add_argument("--only", nargs="*", choices=list(RUNS), help="runs to do (default: all)")
    ap.add_argument("--max_epochs", type=int, default=None, help="cap on epochs for every run (default: the configs')")
    ap.add_argument("--tables-only", action="store_true")
    ap.add_argument("--recbole-logs", type=Path, default=Path("~/.cache/recbole-work/logs").expanduser())
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if not a.tables_only:
        for name in a.only or list(RUNS):
            run(name, a.out, a.max_epochs)

    res = {}
    for n in RUNS:
        v = latest(a.out, n)
        try:
            res[n] = fusionrec_results(str(v)) if v is not None else None
        except SystemExit as e:  # a run still going, or one that failed: say so, print the others
            print(f"skipping {n}: {e}")
        if res.get(n) is None:
            res.pop(n, None)
    main_rows = recbole_results(a.recbole_logs) if a.recbole_logs.exists() else {}
    main_rows.update({f"fusionrec {n}": res[n] for n in ("id_only", "fused") if n in res})
    cols = ["valid ndcg@10", *METRICS]
    print("\n### ml-100k, RecBole's default split (test, full ranking, K = 10)\n")
    print(table(main_rows, cols))
    abl = {("fused (all five)" if n == "fused" else n.replace("no_", "without ")): res[n]
           for n in ["fused", *[f"no_{s}" for s in FUSED], "id_only"] if n in res}
    print("\n### ablation: one source removed at a time\n")
    print(table(abl, cols))
    cold = {n: res[n] for n in ("cold_fused", "cold_id_only") if n in res}
    if cold:
        print("\n### cold-start items (test items have no training interactions; ranked among cold items only)\n")
        print(table(cold, cols))
    cold_users = {n: res[n] for n in ("cold_user_fused", "cold_user_id_only") if n in res}
    if cold_users:
        print("\n### cold-start users (test users have no training interactions; ranked over all items)\n")
        print(table(cold_users, cols))


if __name__ == "__main__":
    main()
