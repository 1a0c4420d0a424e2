"""Full-ranking evaluation at catalog scale: block-wise top-K vs dense (B x n_items) scoring, time and peak RSS.

    .venv/bin/python benchmarks/eval_at_scale.py side-by-side      # dense vs blocked on --dense-users users
    .venv/bin/python benchmarks/eval_at_scale.py full --part 0 --parts 4   # ... --part 3: all --users, blocked
    .venv/bin/python benchmarks/eval_at_scale.py combine           # -> benchmarks/results/eval_at_scale.json

(options: --users 100000 --items 1000000 --dense-users 4096 --batch 1024 --block 65536). The full run is cut into
user ranges so that each command stays within the shared machine's 10-minute slot; `combine` adds their times
and metric sums and takes the largest peak RSS.

Generated vectors (dim 64, seeded Gaussian), 20 seen items masked and 1 held-out item per user, Recall / NDCG / MRR
/ Hit / Precision @ 10 and 20. Each configuration runs in a fresh process (peak RSS = that process's VmHWM, the item
and user tables included); the clock covers ranking and metrics, not generating the vectors:

* `blocked`: trainer.engine.evaluator.full_ranking_top (what FusionModule's evaluation runs), batch x block scores;
* `dense`: one (batch x n_items) score matrix ranked at once by the same exact top-K (block = n_items);
* `dense_before`: the implementation this replaced (clone, -inf mask, permuted copy, float topk, dense relevance
  matrix), on the same users.

Dense runs use `--dense-users` users (they hold several batch x n_items copies); the blocked run ranks all of
`--users` and, on the dense users, must give the same metric sums.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.engine.evaluator import full_ranking_top  # noqa: E402
from trainer.engine.metrics import RankingAccumulator, metrics_at  # noqa: E402
from trainer.engine.topk import tie_order  # noqa: E402

KS = [10, 20]
DIM, SEEN = 64, 20


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _dense_before(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, relevant: torch.Tensor) -> dict:
    """The previous trainer.engine.metrics.ranking_metrics ranking, as it was: returns per-user metrics."""
    b, n = scores.shape
    scores = scores.float().clone()
    scores[rows, cols] = float("-inf")
    rel = torch.zeros(b, n, dtype=torch.bool)
    rel[torch.arange(b), relevant] = True
    perm, _ = tie_order(n, 0, scores.device)
    top = perm[scores[:, perm].topk(max(KS), dim=1).indices]
    del rel  # its only use was rel.gather(1, top): the metric code below is the shared one
    return metrics_at(top, (torch.arange(b + 1), relevant), KS, n)


def worker(path: str, n_users: int, n_items: int, batch: int, block: int, first: int = 0, last: int | None = None) -> dict:
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    items = torch.randn(n_items, DIM, generator=g)
    users = torch.randn(n_users, DIM, generator=g)
    seen = torch.randint(0, n_items, (n_users, SEEN), generator=g)
    held = torch.randint(0, n_items, (n_users,), generator=g)
    made = time.perf_counter() - t0
    acc = RankingAccumulator(KS)
    t0 = time.perf_counter()
    last = n_users if last is None else last
    for a in range(first, last, batch):
        u = users[a:min(a + batch, last)]
        b = u.shape[0]
        rows = torch.arange(b).repeat_interleave(SEEN)
        cols = seen[a:a + b].reshape(-1)
        relevant = (torch.arange(b + 1), held[a:a + b])
        if path == "blocked":
            top, _ = full_ranking_top(u, items, max(KS), rows, cols, block)
            acc.update_top(top, relevant, n_items)
        elif path == "dense":
            acc.update(u @ items.T, relevant, (torch.arange(0, (b + 1) * SEEN, SEEN), cols))
        else:
            acc.update_values(*_dense_before(u @ items.T, rows, cols, held[a:a + b]))
    seconds = time.perf_counter() - t0
    sums, count = acc.state()
    return {"path": path, "users": last - first, "user_range": [first, last], "items": n_items, "dim": DIM, "batch": batch,
            "block": block if path == "blocked" else n_items, "seconds": round(seconds, 2),
            "users_per_s": round((last - first) / seconds, 1), "generate_seconds": round(made, 2),
            "peak_rss_mb": round(_peak_rss_mb(), 1), "score_block_mb": round(batch * (block if path == "blocked" else n_items) * 4 / 2**20, 1),
            "metrics": acc.compute(), "sums": sums.tolist(), "count": float(count)}


def _run(path: str, users: int, items: int, batch: int, block: int, first: int = 0, last: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "worker", "--path", path, "--users", str(users), "--items", str(items),
           "--batch", str(batch), "--block", str(block), "--first", str(first), "--last", str(users if last is None else last)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    print(f"{path:13s} users {row['users']:>7,} items {items:>9,} batch {batch} block {row['block']:>9,}: "
          f"{row['seconds']:8.1f} s  {row['users_per_s']:8.1f} users/s  peak RSS {row['peak_rss_mb']:7.1f} MB", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=["side-by-side", "full", "combine", "worker", "check"])
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dense-users", type=int, default=4096)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--dense-batch", type=int, default=256)
    p.add_argument("--block", type=int, default=65536)
    p.add_argument("--part", type=int, default=0)
    p.add_argument("--parts", type=int, default=4)
    p.add_argument("--path", default="blocked")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--last", type=int, default=None)
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "eval_at_scale"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_at_scale.json"))
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.step == "worker":
        print(json.dumps(worker(args.path, args.users, args.items, args.batch, args.block, args.first, args.last)))
    elif args.step == "side-by-side":
        rows = [_run(path, args.dense_users, args.items, args.dense_batch, args.block)
                for path in ("dense_before", "dense", "blocked")]
        (work / "side_by_side.json").write_text(json.dumps(rows))
    elif args.step == "full":
        per = -(-args.users // args.parts)
        row = _run("blocked", args.users, args.items, args.batch, args.block, args.part * per,
                   min(args.users, (args.part + 1) * per))
        (work / f"full_part{args.part}.json").write_text(json.dumps(row))
    elif args.step == "check":
        check(Path(args.out), args.items, args.block)
    else:
        combine(work, Path(args.out), args)


def check(out: Path, n_items: int, block: int, n_users: int = 256) -> None:
    """The metrics of random held-out items are ~0, so equal sums say little: compare the top-20 item lists of the
    first users themselves (blocked vs dense exact vs the previous dense path) and add the answer to the result."""
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    items = torch.randn(n_items, DIM, generator=g)
    users = torch.randn(100_000, DIM, generator=g)[:n_users]
    seen = torch.randint(0, n_items, (100_000, SEEN), generator=g)[:n_users]
    rows, cols = torch.arange(n_users).repeat_interleave(SEEN), seen.reshape(-1)
    blocked, _ = full_ranking_top(users, items, max(KS), rows, cols, block)
    dense, _ = full_ranking_top(users, items, max(KS), rows, cols, n_items)
    scores = users @ items.T
    scores[rows, cols] = float("-inf")
    perm, _ = tie_order(n_items, 0, scores.device)
    before = perm[scores[:, perm].topk(max(KS), dim=1).indices]
    result = json.loads(out.read_text())
    result["top20_lists_first_256_users"] = {"command": "python benchmarks/eval_at_scale.py check",
                                             "blocked_equals_dense": bool(torch.equal(blocked, dense)),
                                             "blocked_equals_dense_before": bool(torch.equal(blocked, before))}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(result["top20_lists_first_256_users"])


def combine(work: Path, out: Path, args: argparse.Namespace) -> None:
    rows = json.loads((work / "side_by_side.json").read_text())
    parts = [json.loads(f.read_text()) for f in sorted(work.glob("full_part*.json"))]
    covered = sorted(tuple(p["user_range"]) for p in parts)
    sums = [sum(vals) for vals in zip(*(p["sums"] for p in parts))]
    count = sum(p["count"] for p in parts)
    seconds = sum(p["seconds"] for p in parts)
    acc = RankingAccumulator(KS)
    full = {"path": "blocked", "users": sum(p["users"] for p in parts), "user_ranges": covered, "items": parts[0]["items"],
            "dim": DIM, "batch": parts[0]["batch"], "block": parts[0]["block"], "seconds": round(seconds, 1),
            "users_per_s": round(sum(p["users"] for p in parts) / seconds, 1),
            "peak_rss_mb": max(p["peak_rss_mb"] for p in parts), "score_block_mb": parts[0]["score_block_mb"],
            "metrics": acc.compute(torch.tensor(sums, dtype=torch.float64), torch.tensor(count, dtype=torch.float64))}
    dense, blocked = rows[1], rows[2]
    result = {
        "commands": [f"python benchmarks/eval_at_scale.py side-by-side --dense-users {rows[0]['users']}",
                     *[f"python benchmarks/eval_at_scale.py full --part {i} --parts {len(parts)}" for i in range(len(parts))],
                     "python benchmarks/eval_at_scale.py combine"],
        "machine": "2 CPU cores (torch threads 2), shared with other jobs",
        "side_by_side": {r["path"]: {k: v for k, v in r.items() if k != "sums"} for r in rows},
        "blocked_equals_dense_exactly": dense["sums"] == blocked["sums"] and dense["count"] == blocked["count"],
        "dense_over_blocked_seconds": round(dense["seconds"] / blocked["seconds"], 2),
        "dense_before_over_blocked_seconds": round(rows[0]["seconds"] / blocked["seconds"], 2),
        "dense_over_blocked_peak_rss": round(dense["peak_rss_mb"] / blocked["peak_rss_mb"], 2),
        "dense_before_over_blocked_peak_rss": round(rows[0]["peak_rss_mb"] / blocked["peak_rss_mb"], 2),
        "full": full,
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "side_by_side"}, indent=1))


if __name__ == "__main__":
    main()
