"""benchmarks/social_peers.py scores Cornac's matrices with fusionrec's evaluator: check its wrapper (batch rows, seen
and target CSR) against a direct computation on the real tiny prepared dataset (train masked for valid, train + valid
for test)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from data_modules.evaluation import read_split
from tests.helpers.tiny_dataset import prepare_tiny

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import social_peers  # noqa: E402


def _direct(scores: np.ndarray, seen: dict, targets: dict, k: int) -> tuple[float, float]:
    """Mean NDCG@k and Recall@k over users with targets, seen items excluded; scores have no ties."""
    ndcg, recall = [], []
    for u, tgt in targets.items():
        s = scores[u].astype(np.float64).copy()
        s[list(seen.get(u, ()))] = -np.inf
        top = np.argsort(-s)[:k]
        hits = np.isin(top, list(tgt))
        dcg = (hits / np.log2(np.arange(2, k + 2))).sum()
        idcg = (1 / np.log2(np.arange(2, min(len(tgt), k) + 2))).sum()
        ndcg.append(dcg / idcg)
        recall.append(hits.sum() / len(tgt))
    return float(np.mean(ndcg)), float(np.mean(recall))


@pytest.mark.unit
def test_evaluator_on_a_score_matrix_equals_direct_metrics(tmp_path):
    root = prepare_tiny(tmp_path / "tiny")
    manifest = json.loads((root / "manifest.json").read_text())
    n_users, n_items = manifest["counts"]["users"], manifest["counts"]["items"]
    scores = np.random.default_rng(0).standard_normal((n_users, n_items)).astype(np.float32)
    ev = social_peers.Evaluator(root)
    frames = {s: read_split(root, manifest, s) for s in ("train", "valid", "test")}
    group = lambda df: df.groupby("user")["item"].apply(set).to_dict()  # noqa: E731
    train, valid, test = (group(frames[s]) for s in ("train", "valid", "test"))
    seen_test = {u: train.get(u, set()) | valid.get(u, set()) for u in set(train) | set(valid)}
    for split, seen, targets in (("valid", train, valid), ("test", seen_test, test)):
        got = ev(scores, split)
        ndcg, recall = _direct(scores, seen, targets, 10)
        assert got["ndcg@10"] == pytest.approx(ndcg, abs=1e-6), split
        assert got["recall@10"] == pytest.approx(recall, abs=1e-6), split
    # masking matters: the same matrix with train items boosted is unchanged for valid
    boosted = scores.copy()
    for u, items in train.items():
        boosted[u, list(items)] += 100.0
    assert ev(boosted, "valid")["ndcg@10"] == pytest.approx(ev(scores, "valid")["ndcg@10"], abs=1e-9)
