"""Does the social source pay? fusionrec with and without the friend graph beside Cornac's social and plain peers.

    # 1. prepare HetRec Last.fm 2K once (per-user random 80/10/10, k-core 5; friend graph + KGCN kg)
    HF_HUB_OFFLINE=1 .venv/bin/python -m trainer.cli data prepare configs/data/lastfm.yaml --out /tmp/lastfm_social
    # 2. fusionrec variants x 3 seeds (fused_social, fused_no_social, fused_no_graph; one run ~2-4 min)
    .venv/bin/python benchmarks/seeded.py social --dataset /tmp/lastfm_social --out /tmp/social_runs/seeded
    # 3. Cornac in its own venv (never the fusionrec one)
    # (numpy < 2.3: Cornac 3.0.1 SBPR calls np.in1d, which numpy 2.4 removed)
    python3 -m venv /tmp/cornac-venv && /tmp/cornac-venv/bin/pip install cornac==3.0.1 "numpy<2.3"
    # 4. export the split, run the peers (grid x seeds, through the Cornac venv), evaluate, print the table
    .venv/bin/python benchmarks/social_peers.py --dataset /tmp/lastfm_social --work /tmp/social_peers \
        --runs /tmp/social_runs/seeded --json benchmarks/results/social_lastfm.json
    # the table again from a --json file
    .venv/bin/python benchmarks/social_peers.py --tables-only --json benchmarks/results/social_lastfm.json

Step `export` (fusionrec venv): the prepared dataset's train shard and its friend graph (`side/graph_social`, dense
user indices, both directions) as TSV files of dense indices under <work>/split/, so Cornac trains on exactly the
training interactions and links fusionrec trains on. Cornac's id maps are set to the identity over
[0, n_users) x [0, n_items), so its score matrix is indexed like ours.
Step `run-one` (Cornac venv, one process per model x seed): fits every grid point of the model on train.tsv (binary
feedback, rating 1) and writes its full score matrix (n_users, n_items) float32 to <work>/scores/. Items without a
training interaction get -inf: Cornac's models have no trained vector for them (fusionrec scores them from text and
tags). SoRec regresses observed ratings only, so on binary feedback it sees no negatives; it is reported as run.
Step `evaluate` (fusionrec venv): every score matrix goes through fusionrec's own evaluator
(`trainer.engine.metrics.RankingAccumulator` on `data_modules.evaluation.RankingEvalSet`: training items masked for
valid, training + valid items for test, the same tie order), so peers and fusionrec share the metric code. For each
model the grid point with the best mean valid NDCG@10 over the seeds is chosen; test is computed for that point only.
The fusionrec rows are read from the seeded.py runs (valid at the epoch val/ndcg chose, test once on that checkpoint).
A difference "exceeds the spread" when |mean_a - mean_b| > std_a + std_b (population std over the 3 seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SEEDS = (2020, 2021, 2022)
METRICS = ("ndcg@10", "recall@10", "mrr@10", "ndcg@20", "recall@20")
# small grids, chosen on valid; k = 64 for all latent-factor peers (fusionrec uses dim 128)
GRIDS: dict[str, list[dict]] = {
    "MostPop": [{}],
    "BPR": [{"k": 64, "max_iter": it, "learning_rate": lr, "lambda_reg": 0.01} for it in (200, 500) for lr in (0.05, 0.1)],
    "SBPR": [{"k": 64, "max_iter": it, "learning_rate": lr, "lambda_u": 0.01, "lambda_v": 0.01, "lambda_b": 0.01}
             for it in (200, 500) for lr in (0.05, 0.1)],
    "SoRec": [{"k": k, "max_iter": 100, "learning_rate": 0.01, "lambda_c": c, "lambda_reg": 0.01}
              for k in (10, 64) for c in (1, 10)],
}
SOCIAL_PEERS = ("SBPR", "SoRec")
VARIANTS = ("fused_social", "fused_no_social", "fused_no_graph")


# ------------------------------------------------------------------------------------------ step 1: export
def export(dataset: Path, work: Path) -> dict:
    """train.tsv (user item) and social.tsv (src dst) in dense indices; meta.json with the counts."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    from data_modules import layout
    from data_modules.evaluation import read_split
    from data_modules.integrity import check_side, load_npy

    manifest = json.loads((dataset / layout.MANIFEST).read_text(encoding="utf-8"))
    if "graph_social" not in manifest["side"]:
        raise SystemExit(f"{dataset}: the prepared dataset has no social graph (side/graph_social)")
    out = work / "split"
    out.mkdir(parents=True, exist_ok=True)
    train = read_split(dataset, manifest, "train")[["user", "item"]]
    train.to_csv(out / "train.tsv", sep="\t", index=False)
    read_split(dataset, manifest, "valid")[["user", "item"]].to_csv(out / "valid.tsv", sep="\t", index=False)
    social = load_npy(check_side(dataset, "graph_social", manifest["side"]["graph_social"]), mmap=False)
    np.savetxt(out / "social.tsv", social, fmt="%d", delimiter="\t", header="src\tdst", comments="")
    trained = np.zeros(manifest["counts"]["items"], bool)
    trained[train["item"].to_numpy()] = True
    targets = {s: read_split(dataset, manifest, s)["item"].to_numpy() for s in ("valid", "test")}
    info = {
        "dataset": str(dataset), "name": manifest.get("name"), "fingerprint": manifest.get("fingerprint"),
        "split": manifest["split"], "counts": manifest["counts"], "social_edges": int(len(social)),
        "users_with_friends": int(len(np.unique(social[:, 0]))),
        "items_without_train_interactions": int((~trained).sum()),
        "targets_on_such_items": {s: int((~trained[t]).sum()) for s, t in targets.items()},
    }
    (out / "meta.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


# ------------------------------------------------------------------------- step 2: one model x seed (Cornac venv)
def run_one(work: Path, model: str, seed: int) -> None:
    from collections import OrderedDict

    import cornac
    import numpy as np
    import pandas as pd
    from cornac.data import Dataset, GraphModality

    meta = json.loads((work / "split" / "meta.json").read_text(encoding="utf-8"))
    n_users, n_items = meta["counts"]["users"], meta["counts"]["items"]
    train = pd.read_csv(work / "split" / "train.tsv", sep="\t")
    valid = pd.read_csv(work / "split" / "valid.tsv", sep="\t")
    social = pd.read_csv(work / "split" / "social.tsv", sep="\t")
    # identity id maps: Cornac's internal index == fusionrec's dense index, every user and item present
    ds = Dataset.build([(int(u), int(i), 1.0) for u, i in train.itertuples(index=False)],
                       global_uid_map=OrderedDict((u, u) for u in range(n_users)),
                       global_iid_map=OrderedDict((i, i) for i in range(n_items)), seed=seed)
    assert (ds.num_users, ds.num_items) == (n_users, n_items), (ds.num_users, ds.num_items)
    graph = GraphModality(data=[(int(a), int(b), 1.0) for a, b in social.itertuples(index=False)])
    graph.build(id_map=ds.uid_map)
    ds.add_modalities(user_graph=graph)
    untrained = np.ones(n_items, bool)
    untrained[train["item"].unique()] = False
    make = {"MostPop": cornac.models.MostPop, "BPR": cornac.models.BPR, "SBPR": _sbpr_class(),
            "SoRec": cornac.models.SoRec}[model]
    (work / "scores").mkdir(parents=True, exist_ok=True)
    for g, params in enumerate(GRIDS[model]):
        t0 = time.perf_counter()
        kw = {} if model == "MostPop" else {"seed": seed, "verbose": False, "name": model}
        m = make(**params, **kw)
        m.fit(ds)
        scores = np.stack([np.asarray(m.score(u), dtype=np.float32) for u in range(n_users)])
        assert scores.shape == (n_users, n_items), scores.shape
        scores[:, untrained] = -np.inf
        np.save(work / "scores" / f"{model}-g{g}-s{seed}.npy", scores)
        run = {"model": model, "grid": g, "seed": seed, "params": params, "cornac": cornac.__version__,
               "fit_s": round(time.perf_counter() - t0, 1), "cornac_metrics_valid": _cornac_metrics(scores, train, valid)}
        print("RUN " + json.dumps(run), flush=True)


def _cornac_metrics(scores, train, valid) -> dict[str, float]:
    """Valid NDCG@10 / Recall@10 by Cornac's own metric classes (training items excluded from the ranking, as Cornac's
    ranking_eval does), to check fusionrec's evaluator against: equal up to score ties (MostPop has many)."""
    import numpy as np
    from cornac.metrics import NDCG, Recall

    seen = train.groupby("user")["item"].apply(np.asarray).to_dict()
    out = {"ndcg@10": [], "recall@10": []}
    for u, gt in valid.groupby("user")["item"]:
        s = scores[u].copy()
        s[seen.get(u, [])] = -np.inf
        top = np.argsort(-s, kind="stable")[:10]
        out["ndcg@10"].append(NDCG(k=10).compute(gt.to_numpy(), top))
        out["recall@10"].append(Recall(k=10).compute(gt.to_numpy(), top))
    return {k: float(np.mean(v)) for k, v in out.items()}


def _sbpr_class():
    """Cornac 3.0.1's SBPR.fit calls `self._prepare_data()` and `self._prepare_social_data()` without the train set
    both take, so it raises TypeError before training; this subclass hands them the train set Recommender.fit stored.
    Nothing else changes: the SGD loop is Cornac's."""
    from cornac.models import SBPR

    class FixedSBPR(SBPR):
        def _prepare_data(self, train_set=None):
            return super()._prepare_data(self.train_set if train_set is None else train_set)

        def _prepare_social_data(self, train_set=None):
            return super()._prepare_social_data(self.train_set if train_set is None else train_set)

    return FixedSBPR


# ------------------------------------------------------------------------------------ step 3: evaluate (ours)
class Evaluator:
    """fusionrec's full-ranking evaluator over a precomputed score matrix (n_users, n_items)."""

    def __init__(self, dataset: Path):
        sys.path.insert(0, str(REPO))
        from data_modules import layout
        from data_modules.evaluation import RankingEvalSet

        manifest = json.loads((dataset / layout.MANIFEST).read_text(encoding="utf-8"))
        self.sets = {s: RankingEvalSet(dataset, manifest, s, history_len=1) for s in ("valid", "test")}

    def __call__(self, scores, split: str) -> dict[str, float]:
        import torch

        from trainer.engine.metrics import RankingAccumulator

        es, acc = self.sets[split], RankingAccumulator(ks=(10, 20))
        sc = torch.from_numpy(scores)
        for a in range(0, len(es), 512):
            users = [int(u) for u in es.users[a:a + 512]]
            b = es.collate(users)
            keep = ~b["padding"]
            rows = torch.nonzero(keep).squeeze(1)
            remap = torch.full((len(users),), -1, dtype=torch.long)
            remap[rows] = torch.arange(len(rows))
            s_keep = sc[b["user"][rows]]
            seen = torch.stack([remap[b["seen_rows"]], b["seen_cols"]])
            tgt = torch.stack([remap[b["target_rows"]], b["target_cols"]])
            acc.update(s_keep, _csr(tgt, len(rows)), _csr(seen, len(rows)))
        return acc.compute()


def _csr(pairs, n: int):
    import torch

    rows, cols = pairs
    order = torch.argsort(rows, stable=True)
    counts = torch.bincount(rows, minlength=n)
    return torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]), cols[order]


def run_peers(work: Path, dataset: Path, venv: Path, models: list[str], seeds: list[int]) -> dict:
    """Fit every (model, grid point, seed) in the Cornac venv, pick the grid point on valid, test it once."""
    import numpy as np

    py = venv / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"no Cornac venv at {venv}: python3 -m venv {venv} && {py.parent}/pip install cornac==3.0.1")
    ev = Evaluator(dataset)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    res: dict = {}
    for model in models:
        runs: dict = {}
        for seed in seeds:
            log = work / "logs" / f"{model}-{seed}.log"
            with open(log, "w") as f:
                rc = subprocess.run([str(py), str(Path(__file__).resolve()), "run-one", "--work", str(work),
                                     "--model", model, "--seed", str(seed)], stdout=f, stderr=subprocess.STDOUT,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
            if rc:
                raise SystemExit(f"Cornac {model} seed {seed} failed (exit {rc}); see {log}")
            for line in log.read_text().splitlines():
                if line.startswith("RUN "):
                    r = json.loads(line[4:])
                    f_scores = work / "scores" / f"{model}-g{r['grid']}-s{seed}.npy"
                    r["valid"] = ev(np.load(f_scores), "valid")
                    runs[(r["grid"], seed)] = r
            print(f"[{time.strftime('%H:%M:%S')}] Cornac {model} seed {seed}: "
                  + ", ".join(f"g{g} valid ndcg@10 {r['valid']['ndcg@10']:.4f}"
                              for (g, s), r in runs.items() if s == seed), flush=True)
        grid_valid = {g: float(np.mean([runs[(g, s)]["valid"]["ndcg@10"] for s in seeds])) for g in range(len(GRIDS[model]))}
        best = max(grid_valid, key=grid_valid.get)
        per_seed = {}
        for s in seeds:
            r = runs[(best, s)]
            r["test"] = ev(np.load(work / "scores" / f"{model}-g{best}-s{s}.npy"), "test")
            per_seed[s] = {**{f"valid {m}": r["valid"][m] for m in METRICS}, **{f"test {m}": r["test"][m] for m in METRICS},
                           "fit_s": r["fit_s"]}
        for f_scores in (work / "scores").glob(f"{model}-g*-s*.npy"):
            f_scores.unlink()
        agree = max(abs(r["valid"][m] - r["cornac_metrics_valid"][m]) for r in runs.values() for m in ("ndcg@10", "recall@10"))
        res[f"Cornac {model}"] = {**_aggregate(per_seed), "params": GRIDS[model][best],
                                  "max_abs_diff_ours_vs_cornac_metrics_valid": agree,
                                  "grid_valid_ndcg@10": {json.dumps(GRIDS[model][g]): v for g, v in grid_valid.items()}}
    return res


def _aggregate(per_seed: dict) -> dict:
    sys.path.insert(0, str(HERE))
    from seeded import aggregate

    return aggregate(per_seed)


# ------------------------------------------------------------------------------------------------- tables
def spread_checks(rows: dict) -> list[dict]:
    """Pairs the question turns on; exceeds = |difference of means| > sum of the two stds (NDCG@10 and Recall@10)."""
    pairs = [("fused_social", "fused_no_social"), ("fused_social", "fused_no_graph"), ("fused_no_social", "fused_no_graph"),
             ("Cornac SBPR", "Cornac BPR"), ("Cornac SoRec", "Cornac BPR"), ("fused_social", "Cornac SBPR"),
             ("fused_social", "Cornac BPR"), ("fused_no_graph", "Cornac BPR"),
             ("fused_no_social", "Cornac BPR"), ("Cornac BPR", "Cornac MostPop")]
    out = []
    for a, b in pairs:
        if a not in rows or b not in rows:
            continue
        for split in ("valid", "test"):
            for m in ("ndcg@10", "recall@10"):
                ra, rb = rows[a][f"{split} {m}"], rows[b][f"{split} {m}"]
                d = ra["mean"] - rb["mean"]
                out.append({"a": a, "b": b, "metric": f"{split} {m}", "diff": d, "rel": d / rb["mean"],
                            "spread": ra["std"] + rb["std"], "exceeds": abs(d) > ra["std"] + rb["std"]})
    return out


def print_tables(res: dict) -> None:
    sys.path.insert(0, str(HERE))
    from seeded import SUITES, table

    print(f"\n### Does the social source pay? {res['split']['name']}: {res['split']['counts']['users']} users, "
          f"{res['split']['counts']['items']} items, {res['split']['social_edges']} friend links (both directions); "
          "mean ± std over seeds (population std)\n")
    print(table(res["rows"], SUITES["social"]))
    print("\nfusionrec's evaluator vs Cornac's NDCG / Recall classes on valid, largest |difference| over all runs: "
          + "; ".join(f"{k}: {v['max_abs_diff_ours_vs_cornac_metrics_valid']:.1e}" for k, v in res["rows"].items()
                      if "max_abs_diff_ours_vs_cornac_metrics_valid" in v))
    print("\nchosen on valid (mean NDCG@10 over seeds): "
          + "; ".join(f"{k}: {v['params']}" for k, v in res["rows"].items() if "params" in v))
    print("\n| a | b | metric | a - b | relative | std a + std b | exceeds the spread |\n|---|---|---|---|---|---|---|")
    for c in res["checks"]:
        print(f"| {c['a']} | {c['b']} | {c['metric']} | {c['diff']:+.4f} | {c['rel']:+.1%} | {c['spread']:.4f} | "
              f"{'yes' if c['exceeds'] else 'no'} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", nargs="?", default="all", choices=["all", "run-one"])
    p.add_argument("--dataset", type=Path, help="prepared fusionrec dataset with a social graph")
    p.add_argument("--work", type=Path, default=Path("/tmp/social_peers"))
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "seeded", help="seeded.py --out of the social suite")
    p.add_argument("--venv", type=Path, default=Path("/tmp/cornac-venv"), help="Cornac 3.0.1 venv")
    p.add_argument("--models", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--json", type=Path)
    p.add_argument("--tables-only", action="store_true", help="print the tables of an existing --json")
    p.add_argument("--reuse-peers", action="store_true",
                   help="take the Cornac rows from the existing --json (re-read only the fusionrec runs)")
    p.add_argument("--model")
    p.add_argument("--seed", type=int)
    a = p.parse_args()
    if a.cmd == "run-one":
        run_one(a.work, a.model, a.seed)
        return
    if a.tables_only:
        print_tables(json.loads(a.json.read_text(encoding="utf-8")))
        return
    if a.dataset is None or not (a.dataset / "manifest.json").is_file():
        p.error(f"--dataset {a.dataset}: expected a prepared dataset folder with manifest.json")
    info = export(a.dataset.resolve(), a.work.resolve())
    print(json.dumps(info, indent=1), flush=True)
    if a.reuse_peers:
        old = json.loads(a.json.read_text(encoding="utf-8"))["rows"]
        rows = {k: v for k, v in old.items() if k.startswith("Cornac ")}
    else:
        rows = run_peers(a.work.resolve(), a.dataset.resolve(), a.venv, a.models, a.seeds)
    sys.path.insert(0, str(HERE))
    from seeded import summarize

    ours = summarize(a.runs, "social", tuple(a.seeds))
    missing = [v for v in VARIANTS if v not in ours]
    if missing:
        print(f"warning: no finished seeded.py runs for {missing} under {a.runs / 'social'}", file=sys.stderr)
    rows.update(ours)
    res = {"split": info, "seeds": a.seeds, "grids": GRIDS, "rows": rows, "checks": spread_checks(rows),
           "command": " ".join(["benchmarks/social_peers.py", *sys.argv[1:]])}
    print_tables(res)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
