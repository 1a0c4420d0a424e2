"""Approximate vs exact top-10 retrieval on generated catalogs: recall@10 and single-thread latency per query.

    OPENBLAS_NUM_THREADS=1 python benchmarks/ann_retrieval.py --sizes 10000 100000 --libraries faiss usearch
    OPENBLAS_NUM_THREADS=1 python benchmarks/ann_retrieval.py --sizes 1000000 --libraries faiss

Each run merges its sizes into --json (default benchmarks/results/ann_retrieval.json), so the 1M catalog can run on
its own. The catalog: n unit vectors of dim 64 around sqrt(n) centres of uneven sizes (Dirichlet(0.5) weights),
noise as large as the centres, so clusters overlap and a query's top 10 spans several of them; 1,000 queries drawn
from the same centres with more noise (users sit between clusters). Ground truth: exact inner-product top 10.

Timed one query at a time on one thread (faiss / usearch threads = 1, BLAS pinned by the variable above):
`exact` is fusionrec's brute force (trainer/inference/ann_index.py ExactIndex: every item scored, then the top
10), `faiss-hnsw` / `usearch-hnsw` are the libraries' own search calls at the same graph degree (M = connectivity
= 32, ef_construction = expansion_add = 100) for several ef_search, and `fusionrec-serving` is HNSWIndex.search
(the faiss graph plus exact re-scoring and seen-item filtering, SEEN = 20 random items per query) at the export default.
Index builds use --build-threads threads and are timed too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from trainer.inference.ann_index import ExactIndex, HNSWConfig, HNSWIndex, recall_at_k

DIM, QUERIES, K = 64, 1000, 10
SEEN = 20  # items excluded per query on the serving path (a user's seen items)
EF = (32, 64, 128, 256)


def catalog(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    nc = int(np.sqrt(n))
    w = rng.dirichlet(np.full(nc, 0.5))
    centres = rng.standard_normal((nc, DIM)).astype(np.float32)
    x = centres[rng.choice(nc, n, p=w)] + rng.standard_normal((n, DIM)).astype(np.float32)
    q = centres[rng.choice(nc, QUERIES, p=w)] + 1.2 * rng.standard_normal((QUERIES, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)


def exact_top_k(x: np.ndarray, q: np.ndarray, k: int, chunk: int = 25) -> list[np.ndarray]:
    """Ground truth, batched (not timed): the k best items of each query by inner product, best first."""
    out = []
    for a in range(0, len(q), chunk):
        s = q[a:a + chunk] @ x.T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        for row, t in zip(s, top):
            out.append(t[np.argsort(-row[t], kind="stable")])
    return out


def timed(fn, queries: np.ndarray) -> tuple[list, dict[str, float]]:
    """Run fn(query (1, D)) per query; (results, {p50_ms, p99_ms, mean_ms})."""
    out, ts = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(fn(q[None]))
        ts.append(time.perf_counter() - t)
    ms = np.asarray(ts) * 1e3
    return out, {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4),
                 "mean_ms": round(float(ms.mean()), 4)}


def run_faiss(x, q, truth, build_threads: int) -> dict:
    import faiss

    faiss.omp_set_num_threads(build_threads)
    t = time.perf_counter()
    ann = HNSWIndex.build(ExactIndex(x), HNSWConfig(m=32, ef_construction=100))
    res = {"library": f"faiss-cpu {faiss.__version__}", "build_s": round(time.perf_counter() - t, 2), "ef_search": {}}
    faiss.omp_set_num_threads(1)
    g = ann.graph
    for ef in EF:
        params = faiss.SearchParametersHNSW()
        params.efSearch = ef
        found, lat = timed(lambda v, p=params: g.search(v, K, params=p)[1][0], q)
        res["ef_search"][ef] = {"recall@10": round(recall_at_k(found, truth), 4), **lat}
    return res, ann


def run_usearch(x, q, truth, build_threads: int) -> dict:
    import usearch
    from usearch.index import Index

    index = Index(ndim=DIM, metric="ip", dtype="f32", connectivity=32, expansion_add=100)
    t = time.perf_counter()
    index.add(np.arange(len(x)), x, threads=build_threads)
    res = {"library": f"usearch {usearch.__version__}", "build_s": round(time.perf_counter() - t, 2), "ef_search": {}}
    for ef in EF:
        index.expansion_search = ef
        found, lat = timed(lambda v: index.search(v[0], K, threads=1).keys, q)
        res["ef_search"][ef] = {"recall@10": round(recall_at_k(found, truth), 4), **lat}
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--libraries", nargs="+", default=["faiss", "usearch"], choices=["faiss", "usearch"])
    p.add_argument("--build-threads", type=int, default=2)
    p.add_argument("--json", default="benchmarks/results/ann_retrieval.json")
    a = p.parse_args()
    path = Path(a.json)
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.setdefault("setup", {})
    results["setup"] = {"dim": DIM, "queries": QUERIES, "k": K, "query_threads": 1,
                        "build_threads": a.build_threads, "cpu": platform.processor() or platform.machine(),
                        "cores": os.cpu_count(), "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
                        "catalog": "unit vectors, sqrt(n) clusters of Dirichlet(0.5) sizes, noise sd 1 per dim; "
                                   "queries from the same clusters with noise sd 1.2",
                        "serving_default": {"ef_search": HNSWConfig().ef_search, "seen_per_query": SEEN}}
    for n in a.sizes:
        x, q = catalog(n)
        exact = ExactIndex(x)
        top = exact_top_k(x, q, K + SEEN)
        truth = [t[:K] for t in top]
        ex_found, ex_lat = timed(lambda v, e=exact: e.search(v, K)[0][1], q)
        row = {"exact": {"recall@10": round(recall_at_k(ex_found, truth), 4), **ex_lat}}
        if "faiss" in a.libraries:
            row["faiss-hnsw"], ann = run_faiss(x, q, truth, a.build_threads)
            rng = np.random.default_rng(1)
            seen = [rng.choice(n, SEEN, replace=False) for _ in q]
            want = [t[~np.isin(t, s)][:K] for t, s in zip(top, seen)]  # the exact top K unseen: within top K + SEEN
            found, lat = timed(lambda v, g=ann, s=iter(seen): g.search(v, K, [next(s)])[0][1], q)
            row["fusionrec-serving"] = {"ef_search": HNSWConfig().ef_search,
                                        "recall@10": round(recall_at_k(found, want), 4), **lat, "speedup_p50_vs_exact": round(ex_lat["p50_ms"] / lat["p50_ms"], 1)}
        if "usearch" in a.libraries:
            row["usearch-hnsw"] = run_usearch(x, q, truth, a.build_threads)
        results[str(n)] = row
        print(n, json.dumps(row))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
