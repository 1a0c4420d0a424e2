"""Score-level ensembles (trainer/inference/ensemble.py) on hand-made scores: standardisation keeps each member's
ranking, reciprocal ranks follow the masked order, and the fitted weights are the best on the split they see."""

from __future__ import annotations

import pytest
import torch

from trainer.inference.ensemble import (
    SplitScores,
    _csr,
    _grid,
    evaluate,
    fit_weights,
    reciprocal_ranks,
    standardise,
)

pytestmark = pytest.mark.unit


def _split(targets: list[int], seen: list[list[int]], n_items: int, members: list[torch.Tensor]) -> SplitScores:
    u = len(targets)
    rel = _csr(torch.arange(u), torch.tensor(targets), u)
    rows = torch.tensor([r for r, items in enumerate(seen) for _ in items], dtype=torch.long)
    cols = torch.tensor([i for items in seen for i in items], dtype=torch.long)
    return SplitScores(users=torch.arange(u).numpy(), relevant=rel, excluded=_csr(rows, cols, u), scores=members)


def test_standardise_is_per_user_over_ranked_items_and_keeps_the_order():
    s = torch.tensor([[1.0, 2.0, 3.0, 100.0], [0.0, -1.0, 5.0, 2.0]])
    masked = torch.tensor([[False, False, False, True], [False, False, False, False]])
    z = standardise(s, masked)
    keep = ~masked
    assert torch.allclose(z[0, keep[0]].mean(), torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(z[0, keep[0]].std(unbiased=False), torch.tensor(1.0), atol=1e-5)
    assert z[0, 3] == 0  # excluded: not part of the statistics (100 would dominate them)
    for r in range(2):
        assert torch.equal(torch.argsort(z[r, keep[r]]), torch.argsort(s[r, keep[r]]))


def test_reciprocal_ranks_skip_excluded_items():
    s = torch.tensor([[0.9, 0.1, 0.5, 0.7]])
    masked = torch.tensor([[True, False, False, False]])  # the top score is a seen item: not ranked
    rr = reciprocal_ranks(s, masked, k=60)
    assert rr[0].tolist() == pytest.approx([0.0, 1 / 63, 1 / 62, 1 / 61])


def test_grid_covers_the_simplex():
    g = _grid(3)
    assert len(g) == 231 and all(abs(sum(w) - 1) < 1e-9 and min(w) >= 0 for w in g)
    assert (1.0, 0.0, 0.0) in g and (0.0, 0.0, 1.0) in g


def test_fitted_weights_are_the_best_on_the_split_and_never_below_a_member():
    torch.manual_seed(0)
    u, n = 64, 30
    targets = torch.randint(0, n, (u,))
    # member a knows the targets of the first half of the users, member b of the second half: only a mix ranks both
    a, b = torch.randn(u, n) * 0.1, torch.randn(u, n) * 0.1
    a[torch.arange(u // 2), targets[: u // 2]] += 1.0
    b[torch.arange(u // 2, u), targets[u // 2 :]] += 1.0
    split = _split(targets.tolist(), [[] for _ in range(u)], n, [a, b])
    masked = torch.zeros(u, n, dtype=torch.bool)
    std = [standardise(a, masked), standardise(b, masked)]
    weights, value = fit_weights(std, split, "ndcg@10", [10])
    each = [evaluate(s, split, [10])["ndcg@10"] for s in (a, b)]
    assert value >= max(each) and value > max(each) + 0.2  # the mix ranks both halves
    assert 0 < weights[0] < 1 and sum(weights) == pytest.approx(1.0)
    grid_best = max(evaluate(w[0] * std[0] + w[1] * std[1], split, [10])["ndcg@10"] for w in _grid(2))
    assert value == pytest.approx(grid_best)


def test_coordinate_ascent_for_many_members_beats_equal_weights_when_one_member_is_noise():
    torch.manual_seed(1)
    u, n = 64, 30
    targets = torch.randint(0, n, (u,))
    good = torch.randn(u, n) * 0.1
    good[torch.arange(u), targets] += 0.3
    members = [good] + [torch.randn(u, n) for _ in range(3)]  # 4 members: coordinate ascent, not the grid
    split = _split(targets.tolist(), [[] for _ in range(u)], n, members)
    std = [standardise(m, torch.zeros(u, n, dtype=torch.bool)) for m in members]
    weights, value = fit_weights(std, split, "ndcg@10", [10])
    equal = evaluate(sum(s / 4 for s in std), split, [10])["ndcg@10"]
    assert value > equal and weights[0] == max(weights) and sum(weights) == pytest.approx(1.0)
