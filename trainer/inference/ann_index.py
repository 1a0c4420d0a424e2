"""Top-K items by inner product for serving: exact (brute force) and approximate (a FAISS HNSW graph).

Both rank by `u . v`, the number evaluation ranks by (trainer/engine/module.py `_eval_step`: `user @ items.T`).
With `model.normalize` both towers' vectors are unit length, so inner product is cosine; without it the score is
the raw dot product, which an L2 index would not order the same way. So the graph is built with FAISS's
inner-product metric on the exported vectors as they are, and never on re-normalised copies.

The graph only proposes candidates: every candidate is re-scored exactly (`items[c] @ u`) before the top K is
taken, so a returned score is always the exact score, and excluded items (a user's seen ones) are removed after
over-fetching `k + len(excluded)` candidates. The true top K unseen items lie among the true top `k + len(excluded)`
items, so filtering costs no recall beyond the graph's own.

Why FAISS HNSW (measured with benchmarks/ann_retrieval.py's catalog): on 100k clustered unit vectors of dim 64 at
the same graph degree (M = connectivity = 32, build list 100, search list 128), one query thread, FAISS reached
recall@10 0.995 at 0.21 ms p50 against usearch's 0.994 at 0.60 ms; it ships manylinux wheels (hnswlib 0.8 is a
source-only package that needs a compiler), and it is the library most serving stacks already run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX_FILE = "item_index.faiss"


@dataclass
class HNSWConfig:
    """How the approximate index is built and searched (FAISS `IndexHNSWFlat`, inner-product metric)."""

    m: int = 32
    """(int) graph neighbours per node and layer (layer 0 keeps 2m); more = higher recall, more memory."""
    ef_construction: int = 100
    """(int) candidate list while inserting; more = a better graph, a slower build."""
    ef_search: int = 128
    """(int) candidate list while searching (raised to the number of results asked for when that is larger);
    more = higher recall, slower queries (benchmarks/ann_retrieval.py measures recall and latency per value)."""

    def __post_init__(self) -> None:
        for name in ("m", "ef_construction", "ef_search"):
            if int(getattr(self, name)) < 2:
                raise ValueError(f"HNSWConfig.{name}={getattr(self, name)}: expected an integer >= 2")


def _faiss():
    try:
        import faiss
    except ImportError as e:  # a core dependency (pyproject); say what to do rather than fail deep inside
        raise ImportError("the approximate item index needs faiss: pip install faiss-cpu") from e
    return faiss


def _as_matrix(x: np.ndarray, dim: int | None, what: str) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"{what}: expected shape (n, {dim or 'D'}), got {x.shape}")
    return x


def _exclusions(exclude: list[np.ndarray] | None, n: int) -> list[np.ndarray]:
    if exclude is None:
        return [np.zeros(0, dtype=np.int64)] * n
    if len(exclude) != n:
        raise ValueError(f"exclude: one array per query expected, got {len(exclude)} for {n} queries")
    return [np.asarray(e, dtype=np.int64) for e in exclude]


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of one query's candidates, best first (ties: lower item id first)."""
    if len(ids) > k:
        keep = np.argpartition(-scores, k - 1)[:k]
        scores, ids = scores[keep], ids[keep]
    order = np.lexsort((ids, -scores))
    return scores[order], ids[order]


class ExactIndex:
    """Brute force over `vectors` (N, D): every item scored, the evaluator's ranking exactly.

    `ids` (N,): the item id of each row (default 0..N-1), so an index can cover part of a catalog."""

    kind = "exact"

    def __init__(self, vectors: np.ndarray, ids: np.ndarray | None = None):
        self.vectors = _as_matrix(vectors, None, "item vectors")
        self.ids = np.arange(len(self.vectors), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        if len(self.ids) != len(self.vectors):
            raise ValueError(f"ids: {len(self.ids)} for {len(self.vectors)} item vectors")
        self._row = {int(i): r for r, i in enumerate(self.ids)} if ids is not None else None

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def rows(self, items: np.ndarray) -> np.ndarray:
        """Rows of `items` (item ids) that the index holds; ids it does not hold are dropped."""
        items = np.asarray(items, dtype=np.int64)
        if self._row is None:
            return items[(items >= 0) & (items < len(self.ids))]
        return np.asarray([self._row[i] for i in items.tolist() if i in self._row], dtype=np.int64)

    def rescore(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact scores (len(rows),) of one query (D,) against the given rows."""
        return self.vectors[rows] @ query

    def search(self, queries: np.ndarray, k: int,
               exclude: list[np.ndarray] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query: (scores (k',), item ids (k',)), best first, k' = min(k, items not excluded)."""
        q = _as_matrix(queries, self.dim, "queries")
        ex = _exclusions(exclude, len(q))
        out = []
        for row, x in zip(q, ex):
            s = self.vectors @ row
            s[self.rows(x)] = -np.inf
            sc, r = _top_k(s, np.arange(len(s)), k)
            keep = np.isfinite(sc)
            out.append((sc[keep], self.ids[r[keep]]))
        return out


class HNSWIndex:
    """A FAISS HNSW graph over the rows of an ExactIndex; candidates re-scored exactly by it."""

    kind = "faiss-hnsw"

    def __init__(self, exact: ExactIndex, graph, config: HNSWConfig):
        self.exact, self.graph, self.config = exact, graph, config

    @classmethod
    def build(cls, exact: ExactIndex, config: HNSWConfig | None = None, threads: int | None = None) -> HNSWIndex:
        faiss = _faiss()
        config = config or HNSWConfig()
        if threads:
            faiss.omp_set_num_threads(int(threads))
        graph = faiss.IndexHNSWFlat(exact.dim, int(config.m), faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = int(config.ef_construction)
        graph.add(exact.vectors)
        return cls(exact, graph, config)

    def save(self, path: str | Path) -> None:
        _faiss().write_index(self.graph, str(path))

    @classmethod
    def load(cls, path: str | Path, exact: ExactIndex, config: HNSWConfig) -> HNSWIndex:
        graph = _faiss().read_index(str(path))
        if graph.ntotal != len(exact.ids) or graph.d != exact.dim:
            raise ValueError(f"{path}: an index of {graph.ntotal} vectors of dim {graph.d}, but the export holds "
                             f"{len(exact.ids)} item vectors of dim {exact.dim}: re-run `fusionrec export`")
        return cls(exact, graph, config)

    def search(self, queries: np.ndarray, k: int,
               exclude: list[np.ndarray] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """As ExactIndex.search, from the graph's candidates: k + (excluded items the index holds) per query."""
        faiss = _faiss()
        q = _as_matrix(queries, self.exact.dim, "queries")
        ex = [self.exact.rows(x) for x in _exclusions(exclude, len(q))]
        fetch = min(len(self.exact.ids), k + max((len(x) for x in ex), default=0))
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(int(self.config.ef_search), fetch)
        _, rows = self.graph.search(q, fetch, params=params)
        out = []
        for query, cand, x in zip(q, rows, ex):
            cand = cand[cand >= 0]  # -1: fewer reachable nodes than asked for
            if len(x):
                cand = cand[~np.isin(cand, x)]
            sc, r = _top_k(self.exact.rescore(query, cand), cand, k)
            out.append((sc, self.exact.ids[r]))
        return out


def recall_at_k(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (recall of an approximate top K against the exact one)."""
    per = [len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth) if len(t)]
    return float(np.mean(per)) if per else 1.0
