"""The hand-written full-ranking evaluator equals torchmetrics.retrieval on the same candidates (seen items removed,
users without a relevant item skipped by both). torchmetrics is a test-only reference (the dev extra):
benchmarks/metrics_vs_torchmetrics.py measures the same parity at catalog scale and the speed (README)."""

from __future__ import annotations

import pytest
import torch

from trainer.engine.metrics import RankingAccumulator

pytestmark = pytest.mark.unit
R = pytest.importorskip("torchmetrics.retrieval")

CLASSES = {"recall": "RetrievalRecall", "ndcg": "RetrievalNormalizedDCG", "mrr": "RetrievalMRR",
           "hit": "RetrievalHitRate", "precision": "RetrievalPrecision"}  # fmt: skip


def test_every_metric_and_k_equals_torchmetrics_retrieval():
    g = torch.Generator().manual_seed(0)
    users, items, ks = 60, 200, [1, 5, 10, 20]
    scores = torch.rand(users, items, generator=g)  # continuous: no ties, so the tie order plays no part
    seen, relevant = [], []
    keep = torch.ones(users, items, dtype=torch.bool)
    target = torch.zeros(users, items, dtype=torch.bool)
    for u in range(users):
        perm = torch.randperm(items, generator=g)
        n_seen, n_rel = int(torch.randint(0, 30, (), generator=g)), (0 if u % 7 == 0 else int(torch.randint(1, 25, (), generator=g)))
        seen.append(perm[:n_seen].tolist())
        relevant.append(perm[n_seen:n_seen + n_rel].tolist())  # up to 24 relevant: more than k for some users
        keep[u, seen[u]] = False
        target[u, relevant[u]] = True
    acc = RankingAccumulator(ks=ks)
    for a in range(0, users, 16):  # in evaluation batches, as fusionrec test runs it
        acc.update(scores[a:a + 16], relevant[a:a + 16], seen[a:a + 16])
    ours = acc.compute()
    index = torch.arange(users).unsqueeze(1).expand(users, items)
    for name, cls in CLASSES.items():
        for k in ks:
            theirs = getattr(R, cls)(top_k=k, empty_target_action="skip")(scores[keep], target[keep], indexes=index[keep])
            assert ours[f"{name}@{k}"] == pytest.approx(float(theirs), abs=1e-6), f"{name}@{k}"
