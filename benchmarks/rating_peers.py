"""Rating-prediction peers for a fusionrec prepared dataset: scikit-surprise SVD, SVDpp and BaselineOnly.

    # 1. export the prepared split to CSV (fusionrec venv; needs only pyarrow + pandas)
    .venv/bin/python benchmarks/rating_peers.py --dataset /tmp/ml100k_prepared --out-split /tmp/ml100k_rating_split
    # 2. train and evaluate the peers (separate venv outside the repo; no torch, no fusionrec imports)
    python3 -m venv /root/.cache/surprise-venv
    /root/.cache/surprise-venv/bin/pip install scikit-surprise pandas pyarrow
    /root/.cache/surprise-venv/bin/python benchmarks/rating_peers.py --run-peers \
        --out-split /tmp/ml100k_rating_split --json /tmp/ml100k_rating_peers.json

Step 1 reads <dataset>/manifest.json and the train/valid/test parquet shards it lists (dense int user/item
indices, float rating; NaN = no explicit rating), drops rows without a rating, and writes
<out-split>/{train,valid,test}.csv (user,item,rating) plus split_info.json (row counts, dropped NaN rows, the
dataset fingerprint). Step 2 fits each model on train.csv only, with surprise defaults (SVD, SVDpp;
BaselineOnly with the default ALS baselines) and random_state = seed for seeds 0, 1, 2 (BaselineOnly's ALS takes
no seed and is deterministic, so its std is 0), then prints valid and test RMSE / MAE (mean ± std over seeds,
population std) as a markdown table and writes them to --json. Predictions are clipped to the rating scale
(surprise's default). For a user or item absent from train these three models predict the train global mean plus
the bias of whichever side is known (the global mean when both are unknown); the counts of such rows are printed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SPLITS = ("train", "valid", "test")
SEEDS = (0, 1, 2)


def export_split(dataset: Path, out: Path) -> dict:
    """Write the rated rows of each split as CSV; return the counts."""
    import pandas as pd
    import pyarrow.parquet as pq

    manifest = json.loads((dataset / "manifest.json").read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    info = {"dataset": str(dataset), "name": manifest.get("name"), "fingerprint": manifest.get("fingerprint"), "splits": {}}
    for split in SPLITS:
        shards = manifest["shards"][split]
        df = pd.concat([pq.read_table(dataset / s["path"], columns=["user", "item", "rating"]).to_pandas() for s in shards],
                       ignore_index=True)
        assert len(df) == sum(s["rows"] for s in shards), f"{split}: row count differs from the manifest"
        rated = df[df["rating"].notna()]
        rated.to_csv(out / f"{split}.csv", index=False)
        info["splits"][split] = {"rows": len(df), "rated": len(rated), "nan_rating": int(len(df) - len(rated))}
    (out / "split_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def run_peers(split_dir: Path, json_out: Path | None, seeds=SEEDS) -> dict:
    """Fit SVD / SVDpp / BaselineOnly on train.csv for each seed; RMSE and MAE on valid.csv and test.csv."""
    import numpy as np
    import pandas as pd
    from surprise import SVD, BaselineOnly, Dataset, Reader, SVDpp, __version__, accuracy

    frames = {s: pd.read_csv(split_dir / f"{s}.csv") for s in SPLITS}
    lo, hi = float(frames["train"]["rating"].min()), float(frames["train"]["rating"].max())
    train = Dataset.load_from_df(frames["train"][["user", "item", "rating"]], Reader(rating_scale=(lo, hi))).build_full_trainset()
    evalsets = {s: [(int(u), int(i), float(r)) for u, i, r in frames[s][["user", "item", "rating"]].itertuples(index=False)]
                for s in ("valid", "test")}
    users, items = set(frames["train"]["user"]), set(frames["train"]["item"])
    unknown = {s: {"unknown_user": int((~f["user"].isin(users)).sum()), "unknown_item": int((~f["item"].isin(items)).sum())}
               for s, f in frames.items() if s != "train"}
    models = {"SVD": lambda seed: SVD(random_state=seed), "SVDpp": lambda seed: SVDpp(random_state=seed),
              "BaselineOnly": lambda seed: BaselineOnly(verbose=False)}
    per_seed: dict = {}
    for name, make in models.items():
        per_seed[name] = []
        for seed in seeds:
            t0 = time.time()
            algo = make(seed).fit(train)
            row = {"seed": seed, "fit_s": round(time.time() - t0, 2)}
            for s, rows in evalsets.items():
                preds = algo.test(rows)
                row[f"{s}_rmse"] = accuracy.rmse(preds, verbose=False)
                row[f"{s}_mae"] = accuracy.mae(preds, verbose=False)
            per_seed[name].append(row)
            print(f"{name} seed={seed}: " + ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "seed"), flush=True)
    keys = ("valid_rmse", "valid_mae", "test_rmse", "test_mae")
    summary = {name: {k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows]))} for k in keys}
               for name, rows in per_seed.items()}
    result = {"surprise_version": __version__, "split_dir": str(split_dir), "seeds": list(seeds),
              "rows_with_rating": {s: len(f) for s, f in frames.items()}, "unknown_in_eval": unknown,
              "rating_scale": [lo, hi], "summary": summary, "per_seed": per_seed}
    print(f"\nrows with rating: {result['rows_with_rating']}; absent from train: {unknown}")
    print(f"scikit-surprise {__version__}, seeds {list(seeds)}, mean ± std over seeds\n")
    print("| model | valid RMSE | valid MAE | test RMSE | test MAE |\n|---|---|---|---|---|")
    for name, m in summary.items():
        print(f"| {name} | " + " | ".join(f"{m[k]['mean']:.4f} ± {m[k]['std']:.4f}" for k in keys) + " |")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {json_out}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", type=Path, help="prepared dataset folder (with manifest.json): export it to --out-split")
    p.add_argument("--out-split", type=Path, required=True, help="folder of train/valid/test.csv")
    p.add_argument("--run-peers", action="store_true", help="fit and evaluate the surprise models on --out-split")
    p.add_argument("--json", type=Path, help="write the results here (with --run-peers)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    a = p.parse_args()
    if not a.dataset and not a.run_peers:
        p.error("give --dataset (export) and/or --run-peers")
    if a.dataset:
        info = export_split(a.dataset, a.out_split)
        print(json.dumps(info["splits"]), f"-> {a.out_split}")
    if a.run_peers:
        run_peers(a.out_split, a.json, tuple(a.seeds))


if __name__ == "__main__":
    main()
