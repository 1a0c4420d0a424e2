"""Score-level ensembles of benchmarks/seeded.py runs, per seed, with mean ± std tables (`fusionrec ensemble`).

    # Amazon MI (after `seeded.py sequential`): text + id models, members of the same seed combined
    python benchmarks/ensemble.py sequential --members text_seq id_seq --members text_seq id_seq fused_no_text \
        --peers benchmarks/results/amazon_mi_sequential_peers.json --json benchmarks/results/amazon_mi_ensemble.json
    # ml-100k (after `seeded.py ml100k --only no_sequence id_only`)
    python benchmarks/ensemble.py ml100k --members no_sequence id_only --json benchmarks/results/ml100k_ensemble.json

For each member set and seed S the members are the best checkpoints (the ones tested) of `<variant>-sS`; weights
are fit on validation only (trainer/inference/ensemble.py), then test is read once. Several `--members` sets: the
set with the highest mean validation metric is marked as the one chosen; test figures of the others are reported
beside it, not used to choose.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from seeded import SEEDS, SUITES, aggregate, peer_rows, run_dir, table  # noqa: E402

from trainer.inference.ensemble import ensemble  # noqa: E402


def best_checkpoint(d: Path) -> Path:
    versions = sorted(d.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    found = sorted(versions[-1].glob("checkpoints/best-*.ckpt")) if versions else []
    if len(found) != 1:
        raise SystemExit(f"{d}: expected one best-*.ckpt in its last version, found {len(found)}; run benchmarks/seeded.py first")
    return found[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", choices=[s for s in SUITES if SUITES[s].mode == "max"])
    ap.add_argument("--members", nargs="+", action="append", required=True, help="variants of one ensemble (repeatable)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "seeded")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--peers", type=Path, help="sequential_peers.py --json output: RecBole rows above the table")
    ap.add_argument("--json", type=Path, help="write every per-seed result here")
    a = ap.parse_args()
    s = SUITES[a.suite]
    metric = s.metrics[0]
    cols = [f"valid {metric}", *[f"test {m}" for m in s.metrics]]
    members_rows: dict[str, dict] = {}
    ens_rows: dict[str, dict] = {}
    raw = []
    for members in a.members:
        label = " + ".join(members)
        weighted, rrf = {}, {}
        for seed in a.seeds:
            t0 = time.perf_counter()
            ckpts = [best_checkpoint(run_dir(a.out, a.suite, v, seed)) for v in members]
            res = ensemble(ckpts, names=members, metric=metric)
            rows = {(r["model"], r["split"]): r for r in res["rows"]}
            def pick(name: str, rows: dict = rows) -> dict[str, float]:
                return {f"valid {metric}": rows[(name, "valid")][metric], **{f"test {m}": rows[(name, "test")][m] for m in s.metrics}}

            for v in members:
                members_rows.setdefault(v, {})[seed] = pick(v)
            weighted[seed], rrf[seed] = pick("ensemble (weighted)"), pick("ensemble (rrf)")
            w = {m["name"]: round(m["weight"], 2) for m in res["members"]}
            print(f"[{time.strftime('%H:%M:%S')}] {label} seed {seed}: weights {w}, valid {metric} "
                  f"{weighted[seed][cols[0]]:.4f}, test {weighted[seed][cols[1]]:.4f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
            raw.append({"members": members, "seed": seed, "checkpoints": [str(c.relative_to(REPO)) if c.is_relative_to(REPO)
                                                                          else str(c) for c in ckpts],
                        "weights": w, "rows": res["rows"]})
        ens_rows[f"ensemble {label} (weighted)"] = aggregate(weighted)
        ens_rows[f"ensemble {label} (rrf)"] = aggregate(rrf)
    chosen = max((k for k in ens_rows if k.endswith("(weighted)")), key=lambda k: ens_rows[k][cols[0]]["mean"])
    res = {**(peer_rows(a.peers, s) if a.peers else {}), **{v: aggregate(r) for v, r in members_rows.items()}}
    res.update({(f"**{k}** (chosen on valid)" if k == chosen else k): v for k, v in ens_rows.items()})
    print(table(res, s))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"suite": a.suite, "metric": metric, "chosen": chosen, "runs": raw,
                                      "table": {k: {c: v[c] for c in cols} | {"seeds": v["seeds"]} for k, v in res.items()}},
                                     indent=2) + "\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
