"""Sampled-negative evaluation (uni100 / pop100) side by side with RecBole 1.2.1 on ml-100k: same scores, same
negatives, metrics from both evaluators.

    .venv/bin/python benchmarks/sampled_vs_recbole.py [--recbole-python ~/.cache/recbole-venv/bin/python]
        [--work /tmp/sampled_vs_recbole] [--out benchmarks/results/sampled_vs_recbole.json]

RecBole's venv: bash ../shared/peers/run_recbole.sh builds it (its first half). Steps:
1. `fusionrec data prepare` of configs/data/ml100k.yaml (RecBole's default split, reproduced exactly) without text,
   with negatives.protocols [uni100, pop100];
2. one fixed score for every (user, item): log(1 + training popularity) + 0.1 * u . v with seeded 16-d Gaussian
   u, v (float32, no ties) - a stand-in for a model; both evaluators read the same table;
3. fusionrec's evaluator (RankingEvalSet candidates -> candidate_top -> RankingAccumulator) on its stored
   negatives; the same candidates and scores through RecBole's Collector / Evaluator (benchmarks/
   recbole_sampled_side.py, in RecBole's venv);
4. RecBole's own pipeline with eval_args.mode uni100 / pop100 draws its negatives; RecBole evaluates them as its
   Trainer does, and fusionrec's evaluator ranks the very same candidate sets;
5. the negatives themselves: how often each sampler draws an item the user has (must be 0) and the mean training
   popularity of what it draws (RecBole's and fusionrec's, from different random streams, agree within noise).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_modules.evaluation import RankingEvalSet, read_split  # noqa: E402
from data_modules.manifest import load_manifest  # noqa: E402
from data_modules.prepare.config import PrepareConfig  # noqa: E402
from data_modules.prepare.pipeline import prepare  # noqa: E402
from trainer.engine.evaluator import candidate_top  # noqa: E402
from trainer.engine.metrics import RankingAccumulator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KS = [5, 10, 20]
MODES = ("uni100", "pop100")
PHASES = ("valid", "test")


def _csr(rows: torch.Tensor, cols: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(rows, stable=True)
    off = torch.zeros(b + 1, dtype=torch.long)
    off[1:] = torch.cumsum(torch.bincount(rows, minlength=b), 0)
    return off, cols[order]


def _rank(acc: RankingAccumulator, scores: torch.Tensor, users: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
          relevant: tuple[torch.Tensor, torch.Tensor], n_items: int) -> None:
    """fusionrec's sampled ranking of one batch: candidates (rows, cols) of users (B,), scored from the table."""
    top = candidate_top(scores[users[rows], cols], rows, cols, len(users), n_items, max(KS))
    acc.update_top(top, relevant, n_items)


def ours_on_our_negatives(root: Path, m: dict, scores: torch.Tensor, work: Path) -> dict[str, dict[str, float]]:
    out = {}
    n_items = scores.shape[1]
    for phase in PHASES:
        ds = RankingEvalSet(root, m, phase, history_len=1)
        for mode in MODES:
            acc, dump = RankingAccumulator(KS), {"rows": [], "cols": [], "scores": [], "positive": []}
            for a in range(0, len(ds), 256):
                batch = ds.collate([ds[i] for i in range(a, min(a + 256, len(ds)))])
                users, b = batch["user"], len(batch["user"])
                rows, cols = batch[f"sampled_{mode}_rows"], batch[f"sampled_{mode}_cols"]
                relevant = _csr(batch["target_rows"], batch["target_cols"], b)
                _rank(acc, scores, users, rows, cols, relevant, n_items)
                targets = set(zip(batch["target_rows"].tolist(), batch["target_cols"].tolist()))
                dump["rows"].append((rows + a).numpy()), dump["cols"].append(cols.numpy())
                dump["scores"].append(scores[users[rows], cols].numpy())
                dump["positive"].append(np.array([(r, c) in targets for r, c in zip(rows.tolist(), cols.tolist())]))
            np.savez(work / f"ours_{mode}_{phase}.npz", n_rows=len(ds), **{k: np.concatenate(v) for k, v in dump.items()})
            out[f"fusionrec_negatives/{mode}/{phase}"] = acc.compute()
    return out


def ours_on_recbole_negatives(scores: torch.Tensor, work: Path) -> dict[str, dict[str, float]]:
    out = {}
    n_items = scores.shape[1]
    for mode in MODES:
        for phase in PHASES:
            d = np.load(work / f"recbole_{mode}_{phase}.npz")
            user, item, pos = d["user"].astype(np.int64), d["item"].astype(np.int64), d["positive"].astype(bool)
            pairs = np.unique(user * n_items + item)  # RecBole scores a repeated negative once (one matrix cell)
            users = np.unique(user)
            acc = RankingAccumulator(KS)
            for a in range(0, len(users), 256):
                mine = users[a:a + 256]
                sel = pairs[np.isin(pairs // n_items, mine)]
                rows = torch.from_numpy(np.searchsorted(mine, sel // n_items))
                cols = torch.from_numpy(sel % n_items)
                keep = pos & np.isin(user, mine)
                relevant = _csr(torch.from_numpy(np.searchsorted(mine, user[keep])), torch.from_numpy(item[keep]), len(mine))
                _rank(acc, scores, torch.from_numpy(mine), rows, cols, relevant, n_items)
            out[f"recbole_negatives/{mode}/{phase}"] = acc.compute()
    return out


def negative_stats(root: Path, m: dict, work: Path) -> dict[str, dict[str, float]]:
    """Draws that hit a used item (must be 0) and the mean training popularity of the negatives, per sampler."""
    n_items = m["counts"]["items"]
    pop = np.load(root / "side" / "item_popularity.npy")
    splits = {s: read_split(root, m, s) for s in ("train", "valid", "test")}
    used = {"valid": ("train", "valid"), "test": ("train", "valid", "test")}
    stats = {}
    for mode in MODES:
        for phase in PHASES:
            codes = np.unique(np.concatenate([splits[s]["user"].to_numpy().astype(np.int64) * n_items
                                              + splits[s]["item"].to_numpy() for s in used[phase]]))
            t = pq.read_table(root / m["negatives"][mode][phase]["path"])
            negs = np.array(t.column("negatives").to_pylist(), dtype=np.int64)
            ours_u = np.repeat(t.column("user").to_numpy().astype(np.int64), negs.shape[1])
            d = np.load(work / f"recbole_{mode}_{phase}.npz")
            rb_u, rb_i = d["user"][~d["positive"]].astype(np.int64), d["item"][~d["positive"]].astype(np.int64)
            for who, u, i in (("fusionrec", ours_u, negs.ravel()), ("recbole", rb_u, rb_i)):
                stats[f"{who}/{mode}/{phase}"] = {
                    "draws": int(len(i)),
                    "used_items_drawn": int(np.isin(u * n_items + i, codes).sum()),
                    "mean_train_popularity": round(float(pop[i].mean()), 3),
                }
    return stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recbole-python", default=os.path.expanduser("~/.cache/recbole-venv/bin/python"))
    p.add_argument("--work", default="/tmp/sampled_vs_recbole")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sampled_vs_recbole.json"))
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = PrepareConfig.from_yaml(ROOT / "configs" / "data" / "ml100k.yaml")
    cfg.text.tokenizer, cfg.text.user_template = None, None
    cfg.negatives.protocols = list(MODES)
    cfg.output.dir = str(work / "prepared")
    root = prepare(cfg).path
    m = load_manifest(root)
    g = torch.Generator().manual_seed(0)
    n_users, n_items = m["counts"]["users"], m["counts"]["items"]
    pop = torch.from_numpy(np.load(root / "side" / "item_popularity.npy")).float()
    scores = (torch.log1p(pop)[None, :] + 0.1 * torch.randn(n_users, 16, generator=g) @ torch.randn(n_items, 16, generator=g).T).float()
    ids = {k: pq.read_table(root / "id_maps" / f"{k}.parquet").column("id").to_pylist() for k in ("users", "items")}
    np.savez(work / "scores.npz", scores=scores.numpy(), users=np.array(ids["users"]), items=np.array(ids["items"]))
    ours = ours_on_our_negatives(root, m, scores, work)
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONWARNINGS": "ignore"}
    subprocess.run([args.recbole_python, str(ROOT / "benchmarks" / "recbole_sampled_side.py"), str(work)], cwd=work,
                   env=env, check=True)
    recbole = json.loads((work / "recbole_metrics.json").read_text())
    ours.update(ours_on_recbole_negatives(scores, work))
    rows, worst = {}, 0.0
    for key in sorted(ours):
        diffs = {k: abs(ours[key][k] - recbole[key][k]) for k in recbole[key]}
        worst = max(worst, max(diffs.values()))
        rows[key] = {"fusionrec": {k: round(ours[key][k], 6) for k in recbole[key]},
                     "recbole": {k: round(recbole[key][k], 6) for k in recbole[key]},
                     "max_abs_diff": max(diffs.values())}
    result = {
        "command": "python benchmarks/sampled_vs_recbole.py",
        "dataset": f"ml-100k, RecBole default split (RS 0.8/0.1/0.1, seed 2020): {n_users} users, {n_items} items",
        "scores": "log1p(train popularity) + 0.1 * u.v, u, v ~ N(0, 1)^16 seeded 0 (float32, one table for both)",
        "ks": KS,
        "comparisons": rows,
        "max_abs_diff_all": worst,
        "negatives": negative_stats(root, m, work),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for key, r in rows.items():
        print(f"{key:36s} ndcg@10 fusionrec {r['fusionrec']['ndcg@10']:.6f} recbole {r['recbole']['ndcg@10']:.6f} "
              f"max|diff| {r['max_abs_diff']:.1e}")
    print(f"max |diff| over all metrics: {worst:.2e}; written {args.out}")


if __name__ == "__main__":
    main()
