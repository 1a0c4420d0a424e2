"""fusionrec's full-ranking evaluator (trainer/engine/metrics.py) against torchmetrics.retrieval on the same scores:
exactness (largest difference of each metric's mean over users) and speed (seconds per evaluation of all users:
fusionrec gives the 5 metrics x every k in one pass, torchmetrics needs one metric object each; the ratio
torchmetrics / fusionrec, and torchmetrics' time for one metric alone). Flattening for torchmetrics (dropping
the seen items) is not timed.

    python benchmarks/metrics_vs_torchmetrics.py                  # ml-100k-sized and 10k-item catalogs
    python benchmarks/metrics_vs_torchmetrics.py --users 943 --items 1682 --repeats 3 --json out.json

Both see the same thing: random continuous scores (no ties), each user's seen (training) items removed from
the candidates, 1-10 relevant items per user, some users with none (both skip them). torchmetrics gets the
candidates flattened to (preds, target, indexes), its documented input; fusionrec the (B, n_items) matrix plus
the seen and relevant item lists, as fusionrec test passes them, in eval batches of --batch users.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from trainer.engine.metrics import RankingAccumulator

METRICS = {"recall": "RetrievalRecall", "ndcg": "RetrievalNormalizedDCG", "mrr": "RetrievalMRR",
           "hit": "RetrievalHitRate", "precision": "RetrievalPrecision"}  # fmt: skip


def problem(users: int, items: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """scores (U, N), seen and relevant item lists per user (disjoint; every 10th user has no relevant item)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(users, items, generator=g)
    seen, relevant = [], []
    for u in range(users):
        perm = torch.randperm(items, generator=g)
        n_seen = int(torch.randint(0, min(50, items // 4), (), generator=g))
        n_rel = 0 if u % 10 == 9 else int(torch.randint(1, 11, (), generator=g))
        seen.append(perm[:n_seen].tolist())
        relevant.append(perm[n_seen:n_seen + n_rel].tolist())
    return scores, seen, relevant


def fusionrec_eval(scores, seen, relevant, ks, batch):  # type: ignore[no-untyped-def]
    acc = RankingAccumulator(ks=ks)
    for a in range(0, len(scores), batch):
        acc.update(scores[a:a + batch], relevant[a:a + batch], seen[a:a + batch])
    return acc.compute()


def flat(scores, seen, relevant):  # type: ignore[no-untyped-def]
    """torchmetrics' input: the candidates (all items but the seen ones) of every user, flattened."""
    users, items = scores.shape
    keep = torch.ones(users, items, dtype=torch.bool)
    target = torch.zeros(users, items, dtype=torch.bool)
    for u in range(users):
        keep[u, seen[u]] = False
        target[u, relevant[u]] = True
    index = torch.arange(users).unsqueeze(1).expand(users, items)
    return scores[keep], target[keep], index[keep]


def torchmetrics_eval(preds, target, indexes, ks):  # type: ignore[no-untyped-def]
    import torchmetrics.retrieval as R

    out = {}
    for name, cls in METRICS.items():
        for k in ks:
            m = getattr(R, cls)(top_k=k, empty_target_action="skip")
            out[f"{name}@{k}"] = float(m(preds, target, indexes=indexes))
    return out


def run(users: int, items: int, ks: list[int], batch: int, repeats: int) -> dict:
    import torchmetrics

    scores, seen, relevant = problem(users, items)
    ours = fusionrec_eval(scores, seen, relevant, ks, batch)
    preds, target, indexes = flat(scores, seen, relevant)
    theirs = torchmetrics_eval(preds, target, indexes, ks)
    diff = {m: abs(ours[m] - theirs[m]) for m in ours}
    import torchmetrics.retrieval as R

    t_ours, t_theirs, t_one = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        R.RetrievalNormalizedDCG(top_k=ks[0], empty_target_action="skip")(preds, target, indexes=indexes)
        t_one.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fusionrec_eval(scores, seen, relevant, ks, batch)
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        torchmetrics_eval(preds, target, indexes, ks)  # all 5 metrics x len(ks), as one fusionrec pass gives
        t_theirs.append(time.perf_counter() - t0)
    return {"users": users, "items": items, "ks": ks, "torchmetrics": torchmetrics.__version__,
            "threads": torch.get_num_threads(), "max_abs_diff": max(diff.values()), "diff": diff,
            "fusionrec_s": min(t_ours), "torchmetrics_s": min(t_theirs), "ratio": min(t_theirs) / min(t_ours),
            "torchmetrics_one_metric_s": min(t_one),
            "values": ours}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, nargs="+", default=[943, 2000])
    p.add_argument("--items", type=int, nargs="+", default=[1682, 10000])
    p.add_argument("--ks", type=int, nargs="+", default=[10, 20])
    p.add_argument("--batch", type=int, default=256, help="users per evaluation batch (fusionrec)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    results = []
    for users, items in zip(a.users, a.items):
        r = run(users, items, a.ks, a.batch, a.repeats)
        results.append(r)
        print(f"{users} users x {items} items, k={a.ks}: max |fusionrec - torchmetrics| = {r['max_abs_diff']:.2e} "
              f"over {len(r['diff'])} metrics; fusionrec {r['fusionrec_s']:.3f} s, torchmetrics {r['torchmetrics_s']:.3f} s "
              f"(torchmetrics {r['torchmetrics']}, {r['threads']} threads): {r['ratio']:.1f}x; torchmetrics ndcg@{a.ks[0]} "
              f"alone {r['torchmetrics_one_metric_s']:.3f} s", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
