"""The graph source on generated graphs up to 10M edges: step time and step memory, sampled vs full propagation.

    python benchmarks/graph_scale.py --edges 1000000 10000000 --fanouts 10 5 --json benchmarks/results/graph_scale.json

Each (graph size, variant) runs in a fresh process, one after another (run it alone: 2 shared cores). A graph of E
user-item edges has E / 10 users and E / 100 items; users are uniform, items power-law (item = n_items * U^3, so the
most popular items have tens of thousands of edges: the hubs a fixed fan-out caps). One step is what training does
with the graph source: encode B users and their B positive items (LightGCN, 2 layers, dim 64), in-batch sampled
softmax, backward, AdamW over the node table. Reported per run (medians over the timed steps):
  fwd_bwd_s    propagation + loss + backward
  opt_s        AdamW step: touches every node row whatever the variant (dense gradients, as the id tables)
  model_mb     RSS after build and a warm-up step: adjacency, node table, its gradient and AdamW state
  step_peak_mb peak RSS while stepping (VmHWM reset after the warm-up); step_mb = step_peak_mb - model_mb, the
               memory a step itself needs: with sampling it should not grow with the graph.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, warnings
import numpy as np, torch, torch.nn.functional as F
from trainer.model.encoders.graph import GraphEncoder
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
a = json.loads(sys.argv[1])

def rss(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field)) / 1024

E = a["edges"]; n_users, n_items = E // 10, E // 100
rng = np.random.default_rng(0)
users = rng.integers(0, n_users, E)
items = np.minimum((n_items * rng.random(E) ** 3).astype(np.int64), n_items - 1)
torch.manual_seed(0)
t0 = time.perf_counter()
g = GraphEncoder(n_users, n_items, users, items, dim=64, n_layers=len(a["fanouts"]),
                 fanouts=a["fanouts"] if a["variant"] == "sampled" else None, sample_seed=0)
build_s = time.perf_counter() - t0
del users, items
deg = (g.crow[1:] - g.crow[:-1])
opt = torch.optim.AdamW(g.parameters(), lr=1e-3)
g.train()
B = a["batch"]

def step(i):
    r = np.random.default_rng(100 + i)
    u = torch.from_numpy(r.integers(0, n_users, B))
    it = torch.from_numpy(np.minimum((n_items * r.random(B) ** 3).astype(np.int64), n_items - 1))
    t0 = time.perf_counter()
    if g.sampling():
        uv, iv = g.sampled(u), g.sampled(it + n_users)
    else:
        ut, itab = g.tables()
        uv, iv = ut[u], itab[it]
    scores = F.normalize(uv, dim=-1) @ F.normalize(iv, dim=-1).T / 0.2
    loss = F.cross_entropy(scores, torch.arange(B))
    opt.zero_grad(set_to_none=False)
    loss.backward()
    t1 = time.perf_counter()
    opt.step()
    return t1 - t0, time.perf_counter() - t1

step(0)  # warm-up: gradient and AdamW state exist from here on
model_mb = rss("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM (peak RSS) to the current RSS
times = [step(i) for i in range(1, a["steps"] + 1)]
out = {"edges": E, "variant": a["variant"], "fanouts": a["fanouts"] if a["variant"] == "sampled" else None,
       "nodes": g.n_nodes, "nnz": int(g.col.numel()), "max_degree": int(deg.max()), "build_s": round(build_s, 2),
       "steps": a["steps"], "batch": B,
       "fwd_bwd_s": round(float(np.median([t[0] for t in times])), 4),
       "opt_s": round(float(np.median([t[1] for t in times])), 4),
       "model_mb": round(model_mb, 1), "step_peak_mb": round(rss("VmHWM"), 1)}
out["step_mb"] = round(out["step_peak_mb"] - out["model_mb"], 1)
print("RESULT " + json.dumps(out), flush=True)
"""


def run(edges: int, variant: str, fanouts: list[int], steps: int, batch: int, timeout: int) -> dict:
    args = json.dumps(
        {"edges": edges, "variant": variant, "fanouts": fanouts, "steps": steps, "batch": batch}
    )
    try:
        p = subprocess.run(
            [sys.executable, "-c", CHILD, args], cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"edges": edges, "variant": variant, "error": f"over {timeout} s"}
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:  # e.g. killed for memory: say so rather than drop the row
        return {
            "edges": edges,
            "variant": variant,
            "error": (p.stderr.strip().splitlines() or [f"rc {p.returncode}"])[-1],
        }
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edges", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--fanouts", type=int, nargs="+", default=[10, 5])
    ap.add_argument("--variants", nargs="+", default=["sampled", "full"], choices=["sampled", "full"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--timeout", type=int, default=300, help="seconds per run")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = []
    for e in a.edges:
        for v in a.variants:
            rows.append(run(e, v, a.fanouts, a.steps, a.batch, a.timeout))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| edges | variant | nodes | max degree | fwd+bwd s | AdamW s | model MB | step MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['edges']:,} | {r['variant']} | - | - | {r['error']} | | | |")
            continue
        name = f"sampled {r['fanouts']}" if r["variant"] == "sampled" else "full"
        print(
            f"| {r['edges']:,} | {name} | {r['nodes']:,} | {r['max_degree']:,} | {r['fwd_bwd_s']} | {r['opt_s']} "
            f"| {r['model_mb']:,.0f} | {r['step_mb']:,.0f} |"
        )
    for e in a.edges:
        by = {r["variant"]: r for r in rows if r["edges"] == e and "error" not in r}
        if len(by) == 2:
            print(
                f"{e:,} edges: full / sampled fwd+bwd time {by['full']['fwd_bwd_s'] / by['sampled']['fwd_bwd_s']:.1f}x, "
                f"step memory {by['full']['step_mb'] / max(by['sampled']['step_mb'], 1e-9):.1f}x"
            )
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(
            json.dumps(
                {"command": "python benchmarks/graph_scale.py " + " ".join(sys.argv[1:]), "rows": rows},
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
