"""Ranking metrics against hand-computed values and RecBole's NDCG; accumulator sums reduce like ranks do."""

from __future__ import annotations

from math import log2

import numpy as np
import pytest
import torch

from trainer.engine.metrics import RankingAccumulator, RatingAccumulator, ranking_metrics

pytestmark = pytest.mark.unit

# 3 users x 6 items. Seen (training) items are masked before ranking.
SCORES = torch.tensor(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # seen {0}: ranking 1, 2, 3, 4, 5
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # seen {4, 5}: ranking 3, 2, 1, 0
        [0.5, 0.1, 0.9, 0.3, 0.7, 0.2],  # nothing seen: ranking 2, 4, 0, 3, 5, 1
    ]
)
SEEN = [[0], [5, 4], []]
RELEVANT = [[2, 5], [3], [1, 3, 5]]

# Worked by hand. u0 top-3 = [1, 2, 3]: one hit at rank 2; top-5 adds item 5 at rank 5.
# u1 top-3 = [3, 2, 1]: hit at rank 1. u2 top-3 = [2, 4, 0]: no hit; top-5 = [2, 4, 0, 3, 5]: hits at ranks 4, 5.
EXPECTED = {
    "hit@3": [1, 1, 0],
    "recall@3": [1 / 2, 1, 0],
    "precision@3": [1 / 3, 1 / 3, 0],
    "mrr@3": [1 / 2, 1, 0],
    "ndcg@3": [(1 / log2(3)) / (1 + 1 / log2(3)), 1, 0],
    "hit@5": [1, 1, 1],
    "recall@5": [1, 1, 2 / 3],
    "precision@5": [2 / 5, 1 / 5, 2 / 5],
    "mrr@5": [1 / 2, 1, 1 / 4],
    "ndcg@5": [
        (1 / log2(3) + 1 / log2(6)) / (1 + 1 / log2(3)),
        1,
        (1 / log2(5) + 1 / log2(6)) / (1 + 1 / log2(3) + 1 / log2(4)),
    ],
}


def test_per_user_values_match_hand_computation():
    values, valid = ranking_metrics(SCORES, RELEVANT, ks=[3, 5], seen=SEEN)
    assert valid.tolist() == [True, True, True]
    for name, expected in EXPECTED.items():
        assert values[name].tolist() == pytest.approx(expected, abs=1e-6), name


def test_csr_inputs_equal_list_inputs():
    rel_csr = (torch.tensor([0, 2, 3, 6]), torch.tensor([2, 5, 3, 1, 3, 5]))
    seen_csr = (torch.tensor([0, 1, 3, 3]), torch.tensor([0, 5, 4]))
    a, _ = ranking_metrics(SCORES, rel_csr, ks=[3, 5], seen=seen_csr)
    b, _ = ranking_metrics(SCORES, RELEVANT, ks=[3, 5], seen=SEEN)
    for name in EXPECTED:
        assert torch.equal(a[name], b[name]), name


def test_user_without_relevant_items_is_not_counted():
    acc = RankingAccumulator(ks=[3])
    acc.update(SCORES, [[2, 5], [], [1, 3, 5]], seen=SEEN)
    sums, count = acc.state()
    assert float(count) == 2
    assert acc.compute()["hit@3"] == pytest.approx(0.5)


def test_accumulator_sums_reduce_across_batches_like_ranks():
    whole = RankingAccumulator(ks=[3, 5])
    whole.update(SCORES, RELEVANT, SEEN)
    # two "ranks" each seeing part of the users; summing their states = one pass over everyone
    r0, r1 = RankingAccumulator(ks=[3, 5]), RankingAccumulator(ks=[3, 5])
    r0.update(SCORES[:1], RELEVANT[:1], SEEN[:1])
    r1.update(SCORES[1:], RELEVANT[1:], SEEN[1:])
    sums = r0.state()[0] + r1.state()[0]
    count = r0.state()[1] + r1.state()[1]
    merged = r0.compute(sums, count)
    for name, expected in EXPECTED.items():
        assert merged[name] == pytest.approx(sum(expected) / 3, abs=1e-6), name
        assert whole.compute()[name] == pytest.approx(sum(expected) / 3, abs=1e-6), name


def _recbole_ndcg(pos_index: np.ndarray, pos_len: np.ndarray) -> np.ndarray:
    """RecBole's NDCG (recbole/evaluator/metrics.py, NDCG.metric_info), transcribed: (B, K) -> (B, K) at each k."""
    len_rank = np.full_like(pos_len, pos_index.shape[1])
    idcg_len = np.where(pos_len > len_rank, len_rank, pos_len)
    iranks = np.zeros_like(pos_index, dtype=float)
    iranks[:, :] = np.arange(1, pos_index.shape[1] + 1)
    idcg = np.cumsum(1.0 / np.log2(iranks + 1), axis=1)
    for row, idx in enumerate(idcg_len):
        idcg[row, idx:] = idcg[row, idx - 1]
    ranks = np.zeros_like(pos_index, dtype=float)
    ranks[:, :] = np.arange(1, pos_index.shape[1] + 1)
    dcg = 1.0 / np.log2(ranks + 1)
    dcg = np.cumsum(np.where(pos_index, dcg, 0), axis=1)
    return dcg / idcg


def test_ndcg_equals_recbole_on_random_rankings():
    g = torch.Generator().manual_seed(0)
    b, n, k_max = 32, 40, 10
    scores = torch.rand(b, n, generator=g)
    relevant = [
        torch.randperm(n, generator=g)[: int(torch.randint(1, 15, (1,), generator=g))].tolist()
        for _ in range(b)
    ]
    values, _ = ranking_metrics(scores, relevant, ks=list(range(1, k_max + 1)))
    top = scores.topk(k_max, dim=1).indices.numpy()
    pos_index = np.array([[t in set(rel) for t in row] for row, rel in zip(top, relevant)])
    pos_len = np.array([len(r) for r in relevant])
    ref = _recbole_ndcg(pos_index, pos_len)
    for k in range(1, k_max + 1):
        np.testing.assert_allclose(values[f"ndcg@{k}"].numpy(), ref[:, k - 1], rtol=1e-5)


def test_rating_errors_skip_missing_ratings():
    acc = RatingAccumulator()
    acc.update(torch.tensor([3.0, 4.0, 1.0]), torch.tensor([4.0, float("nan"), 3.0]))
    # errors -1 and -2: rmse = sqrt((1 + 4) / 2), mae = 3 / 2
    out = acc.compute()
    assert out["rmse"] == pytest.approx((5 / 2) ** 0.5)
    assert out["mae"] == pytest.approx(1.5)


def test_ties_are_broken_by_a_fixed_random_order_not_by_item_index():
    """A model that scores every item alike must land at chance, even when the relevant items have low ids."""
    import torch as _torch

    from trainer.engine.metrics import ranking_metrics as _rm

    n, users = 1000, 200
    scores = _torch.zeros(users, n)
    relevant = [[0, 1, 2, 3, 4] for _ in range(users)]  # the first ids (popular ones, in real data)
    out, _ = _rm(scores, relevant, [10])
    assert float(out["recall@10"].mean()) < 0.05  # chance: 10 / 1000 = 0.01; index order would give 1.0
    again, _ = _rm(scores, relevant, [10])
    assert _torch.equal(out["recall@10"], again["recall@10"])  # deterministic
