"""Block-wise top-K equals dense ranking exactly: same items, same order, same metrics, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.engine.metrics import RankingAccumulator, metrics_at, ranking_metrics
from trainer.engine.topk import key_positions, key_scores, order_keys, tie_order, top_k

pytestmark = pytest.mark.unit

KS = [1, 5, 10, 20]


def _case(seed: int, b: int = 64, n: int = 300, levels: int = 4):
    """Scores with many ties (a few distinct values), random seen and relevant items per user."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (b, n), generator=g).float() / levels
    seen = [torch.randperm(n, generator=g)[: int(torch.randint(0, 40, (1,), generator=g))].tolist() for _ in range(b)]
    relevant = [torch.randperm(n, generator=g)[: int(torch.randint(0, 12, (1,), generator=g))].tolist() for _ in range(b)]
    return scores, seen, relevant


def _reference_top(scores: torch.Tensor, seen: list[list[int]], k: int, tie_seed: int = 0) -> np.ndarray:
    """The defined order by brute force: sort by (-score, tie position), seen items -inf."""
    s = scores.clone().numpy().astype(np.float64)
    for r, items in enumerate(seen):
        s[r, items] = -np.inf
    _, pos = tie_order(s.shape[1], tie_seed, torch.device("cpu"))
    pos = pos.numpy()
    return np.stack([np.lexsort((pos, -row))[:k] for row in s])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_order_is_score_then_tie_position(seed):
    scores, seen, _ = _case(seed)
    n = scores.shape[1]
    masked = scores.clone()
    for r, items in enumerate(seen):
        masked[r, items] = float("-inf")
    top, vals = top_k(lambda a, b: masked[:, a:b].clone(), n, 20, block=n)
    np.testing.assert_array_equal(top.numpy(), _reference_top(scores, seen, 20))
    assert torch.equal(vals, masked.gather(1, top))


@pytest.mark.parametrize("block", [1, 7, 20, 21, 64, 299, 300, 1000])
def test_blocks_give_identical_metrics_with_ties(block):
    for seed in range(3):
        scores, seen, relevant = _case(seed)
        dense, valid = ranking_metrics(scores, relevant, KS, seen)
        blocked, valid_b = ranking_metrics(scores, relevant, KS, seen, block=block)
        assert torch.equal(valid, valid_b)
        for name in dense:
            assert torch.equal(dense[name], blocked[name]), (block, seed, name)


def test_blocked_top_items_are_identical_to_dense():
    scores, seen, _ = _case(7, b=32, n=1000, levels=3)
    n = scores.shape[1]
    for r, items in enumerate(seen):
        scores[r, items] = float("-inf")
    dense = top_k(lambda a, b: scores[:, a:b].clone(), n, 20, block=n)
    for block in (13, 128, 999):
        blocked = top_k(lambda a, b: scores[:, a:b].clone(), n, 20, block=block)
        assert torch.equal(dense[0], blocked[0]) and torch.equal(dense[1], blocked[1]), block


def test_equal_to_plain_topk_without_ties():
    """Where torch.topk's answer is unambiguous (continuous scores) the exact order is exactly the old dense path."""
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(128, 5000, generator=g)
    relevant = [torch.randperm(5000, generator=g)[:10].tolist() for _ in range(128)]
    seen = [torch.randperm(5000, generator=g)[:50].tolist() for _ in range(128)]
    masked = scores.clone()
    for r, items in enumerate(seen):
        masked[r, items] = float("-inf")
    perm, _ = tie_order(5000, 0, torch.device("cpu"))
    old_top = perm[masked[:, perm].topk(20, dim=1).indices]  # the previous implementation's ranking
    old, _ = metrics_at(old_top, relevant, KS, 5000)
    new, _ = ranking_metrics(scores, relevant, KS, seen, block=512)
    for name in old:
        assert torch.equal(old[name], new[name]), name


def test_keys_round_trip_and_order_signed_zero_and_infinities():
    vals = torch.tensor([float("-inf"), -3.5, -0.0, 0.0, 1e-30, 2.0, float("inf")])
    pos = torch.tensor([6, 5, 4, 3, 2, 1, 0])
    keys = order_keys(vals, pos, 7)
    assert torch.equal(key_scores(keys), vals + 0.0) and torch.equal(key_positions(keys, 7), pos)
    # -0.0 == 0.0: the tie is broken by position (3 before 4), so the 0.0 at position 3 ranks higher
    assert keys[3] > keys[2] and bool((keys[1:] > keys[:-1]).all())


def test_nan_scores_are_a_clear_error():
    scores = torch.rand(4, 50)
    scores[2, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics(scores, [[1]] * 4, [5], block=16)


def test_accumulator_from_blocks_equals_dense_accumulator():
    scores, seen, relevant = _case(11)
    n = scores.shape[1]
    dense = RankingAccumulator(KS)
    dense.update(scores, relevant, seen)
    masked = scores.clone()
    for r, items in enumerate(seen):
        masked[r, items] = float("-inf")
    blocked = RankingAccumulator(KS)
    blocked.update_top(top_k(lambda a, b: masked[:, a:b].clone(), n, max(KS), block=50)[0], relevant, n)
    assert torch.equal(dense.state()[0], blocked.state()[0]) and torch.equal(dense.state()[1], blocked.state()[1])
