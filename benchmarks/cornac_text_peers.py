"""Cornac's text-aware peers (CTR: collaborative topic regression over the item text) and BPR / EASE on a fusionrec
prepared split, evaluated by fusionrec's own evaluator.

    # 1. export the split and the item texts (fusionrec venv)
    .venv/bin/python benchmarks/cornac_text_peers.py export --dataset /tmp/amazon_mi --work /tmp/cornac_mi
    # 2. fit the peers, write their score matrices (Cornac venv, outside the repo: python3 -m venv /tmp/cornac-venv &&
    #    /tmp/cornac-venv/bin/pip install cornac==3.0.1; no torch, no fusionrec imports)
    /tmp/cornac-venv/bin/python benchmarks/cornac_text_peers.py fit --work /tmp/cornac_mi
    # 3. evaluate every score matrix with fusionrec's full-ranking evaluator (fusionrec venv)
    .venv/bin/python benchmarks/cornac_text_peers.py evaluate --dataset /tmp/amazon_mi --work /tmp/cornac_mi \
        --json benchmarks/results/amazon_mi_cornac_peers.json

Models train on the train split only (Cornac's models are not sequential: a user is their train interactions,
implicit feedback, every train pair = 1). CTR reads each item's text as fusionrec rendered it for the text encoder
(`ItemFacts.texts`: title + category for Amazon MI), a bag of words over Cornac's tokenizer (lower case, stop words
removed, vocabulary <= 8,000). A small grid per model (CTR lambda_v, BPR / EASE regularisation) is fit for seed 2020
and the setting with the best validation NDCG@10 is run for seeds 2020-2022; test is read once, for that setting.
Scores of every user against every item (dense fusionrec indices) go to <work>/scores/<model>-<setting>-<seed>.npy;
step 3 masks seen items exactly as fusionrec does (train for valid, train + valid for test:
`data_modules.evaluation.RankingEvalSet`) and computes NDCG / Recall / MRR / Hit at 10 and 20 with
`trainer.engine.metrics.RankingAccumulator` (mean ± population std over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEEDS = (2020, 2021, 2022)
GRID = {  # model -> settings tried on validation (seed 2020)
    "CTR": [{"k": 50, "lambda_u": 0.01, "lambda_v": lv, "max_iter": 50} for lv in (0.01, 0.1, 1.0, 10.0)],
    "BPR": [{"k": 50, "lambda_reg": lr, "learning_rate": 0.01, "max_iter": 200} for lr in (0.001, 0.01, 0.1)],
    "EASE": [{"lamb": lamb} for lamb in (10.0, 50.0, 200.0, 1000.0)],
}


def export(dataset: Path, work: Path) -> None:
    sys.path.insert(0, str(REPO))
    from data_modules.evaluation import read_split
    from data_modules.side import SideData
    from trainer.inference.explain.facts import ItemFacts

    side = SideData(dataset)
    train = read_split(dataset, side.manifest, "train")
    facts = ItemFacts(dataset, side)
    work.mkdir(parents=True, exist_ok=True)
    train[["user", "item"]].to_csv(work / "train.csv", index=False)
    texts = facts.texts or facts.titles
    (work / "items.json").write_text(json.dumps({"n_users": side.n_users, "n_items": side.n_items, "texts": texts,
                                                 "text_source": facts.title_source, "dataset": str(dataset),
                                                 "fingerprint": side.manifest.get("fingerprint")}))
    print(f"exported {len(train)} train pairs, {side.n_users} users, {side.n_items} item texts "
          f"({facts.title_source}) -> {work}")


def fit(work: Path, runs: list[tuple[str, dict, int]]) -> None:
    """Fits each (model, setting, seed) on train.csv and saves its (n_users, n_items) score matrix."""
    import cornac
    import numpy as np
    import pandas as pd
    from cornac.data import Dataset, TextModality
    from cornac.data.text import BaseTokenizer

    meta = json.loads((work / "items.json").read_text())
    n_users, n_items = meta["n_users"], meta["n_items"]
    train = pd.read_csv(work / "train.csv")
    triples = [(str(u), str(i), 1.0) for u, i in train.itertuples(index=False)]
    (work / "scores").mkdir(exist_ok=True)

    def run(name: str, setting: dict, seed: int) -> Path:
        out = work / "scores" / f"{name}-{_key(setting)}-{seed}.npy"
        if out.exists():
            return out
        ds = Dataset.from_uir(triples, seed=seed)
        if name == "CTR":
            tm = TextModality(corpus=meta["texts"], ids=[str(j) for j in range(n_items)], max_vocab=8000,
                              tokenizer=BaseTokenizer(sep=" ", stop_words="english"))
            tm.build(uid_map=ds.uid_map, iid_map=ds.iid_map, dok_matrix=ds.dok_matrix)
            ds.add_modalities(item_text=tm)
        model = getattr(cornac.models, name)(seed=seed, verbose=False, **setting)
        t0 = time.time()
        model.fit(ds)
        scores = np.full((n_users, n_items), -np.inf, dtype=np.float32)
        inner_items = np.array([int(raw) for raw in ds.iid_map], dtype=np.int64)  # Cornac index -> dense item
        order = np.array([ds.iid_map[raw] for raw in ds.iid_map], dtype=np.int64)
        for raw_u, inner_u in ds.uid_map.items():
            s = np.asarray(model.score(inner_u), dtype=np.float32).reshape(-1)
            scores[int(raw_u), inner_items] = s[order]
        np.save(out, scores)
        print(f"{name} {setting} seed {seed}: fit {time.time() - t0:.1f} s -> {out.name}", flush=True)
        return out

    for name, setting, seed in runs:
        run(name, setting, seed)


def _key(setting: dict) -> str:
    return "_".join(f"{k}{v}" for k, v in sorted(setting.items()))


def _evaluate_matrix(path: Path, sets: dict, ks=(10, 20)) -> dict:
    import numpy as np
    import torch

    from trainer.engine.metrics import RankingAccumulator

    scores = torch.from_numpy(np.load(path))
    out = {}
    for split, ds in sets.items():
        acc = RankingAccumulator(ks)
        users = [int(u) for u in ds.users if u >= 0]
        for a in range(0, len(users), 256):
            batch = ds.collate(users[a:a + 256])
            s = scores[batch["user"]].clone()
            rel = _csr(batch["target_rows"], batch["target_cols"], len(s))
            seen = _csr(batch["seen_rows"], batch["seen_cols"], len(s))
            acc.update(s, rel, seen)
        out[split] = acc.compute()
    return out


def _csr(rows, cols, n: int):
    import torch

    order = torch.argsort(rows, stable=True)
    counts = torch.bincount(rows, minlength=n)
    return torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]), cols[order]


def evaluate(dataset: Path, work: Path, models: list[str], json_out: Path | None) -> None:
    import subprocess

    import numpy as np

    sys.path.insert(0, str(REPO))
    from data_modules.evaluation import RankingEvalSet
    from data_modules.side import SideData

    manifest = SideData(dataset).manifest
    sets = {s: RankingEvalSet(dataset, manifest, s, 50) for s in ("valid", "test")}
    result: dict = {"dataset": str(dataset), "fingerprint": manifest.get("fingerprint"), "models": {}}
    for name in models:
        valid = {}
        for setting in GRID[name]:
            path = work / "scores" / f"{name}-{_key(setting)}-{SEEDS[0]}.npy"
            valid[_key(setting)] = _evaluate_matrix(path, {"valid": sets["valid"]})["valid"]["ndcg@10"]
        best_key = max(valid, key=valid.get)
        best = next(s for s in GRID[name] if _key(s) == best_key)
        missing = [sd for sd in SEEDS if not (work / "scores" / f"{name}-{best_key}-{sd}.npy").exists()]
        if missing:  # the chosen setting's other seeds, fit now in the Cornac venv
            venv = work / "venv_python"
            py = venv.read_text().strip() if venv.exists() else os.environ.get("CORNAC_PYTHON", "python3")
            subprocess.run([py, __file__, "fit-one", "--work", str(work), "--model", name, "--setting", json.dumps(best),
                            "--seeds", *map(str, missing)], check=True)
        per_seed = [_evaluate_matrix(work / "scores" / f"{name}-{best_key}-{sd}.npy", sets) for sd in SEEDS]
        keys = [f"{m}@{k}" for m in ("ndcg", "recall", "mrr", "hit") for k in (10, 20)]
        summary = {f"{split}/{k}": {"mean": float(np.mean([p[split][k] for p in per_seed])),
                                    "std": float(np.std([p[split][k] for p in per_seed]))}
                   for split in ("valid", "test") for k in keys}
        result["models"][name] = {"grid_valid_ndcg@10": valid, "chosen": best, "summary": summary, "per_seed": per_seed}
        print(f"{name}: grid (valid NDCG@10, seed {SEEDS[0]}) {json.dumps(valid)}; chosen {best}", flush=True)
    print("\n| peer (Cornac) | seeds | valid ndcg@10 | test ndcg@10 | test recall@10 | test mrr@10 | test ndcg@20 | "
          "test recall@20 |\n|---|---|---|---|---|---|---|---|")
    for name, r in result["models"].items():
        s = r["summary"]
        cols = ["valid/ndcg@10", "test/ndcg@10", "test/recall@10", "test/mrr@10", "test/ndcg@20", "test/recall@20"]
        print(f"| {name} | {len(SEEDS)} | " + " | ".join(f"{s[c]['mean']:.4f} ± {s[c]['std']:.4f}" for c in cols) + " |")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {json_out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=["export", "fit", "fit-one", "evaluate"])
    p.add_argument("--dataset", type=Path)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--models", nargs="+", default=list(GRID))
    p.add_argument("--model")
    p.add_argument("--setting")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    if a.step == "export":
        export(a.dataset, a.work)
    elif a.step == "fit":  # the grid, seed 2020
        (a.work / "venv_python").write_text(sys.executable)
        fit(a.work, [(m, s, SEEDS[0]) for m in a.models for s in GRID[m]])
    elif a.step == "fit-one":  # one chosen setting, more seeds
        fit(a.work, [(a.model, json.loads(a.setting), seed) for seed in a.seeds])
    else:
        evaluate(a.dataset, a.work, a.models, a.json)


if __name__ == "__main__":
    main()
