"""Losses against values worked by hand on tiny tensors."""

from __future__ import annotations

from math import exp, log

import pytest
import torch

from trainer.model.losses import BCELoss, BPRLoss, MultiObjective, RatingMSELoss, SampledSoftmaxLoss, Scores

pytestmark = pytest.mark.unit


def _scores() -> Scores:
    # row 0's first sampled negative is its own positive (item 5): an accidental hit, masked
    return Scores(
        pos=torch.tensor([2.0, 1.0]),
        pos_items=torch.tensor([5, 7]),
        in_batch=torch.tensor([[2.0, 0.5], [0.3, 1.0]]),
        pos_logq=torch.tensor([log(0.5), log(0.25)]),
        neg=torch.tensor([[1.0, 0.0], [2.0, 0.0]]),
        neg_items=torch.tensor([[5, 9], [3, 4]]),
        neg_logq=torch.tensor([[log(0.1), log(0.2)], [log(0.1), log(0.2)]]),
    )


def test_sampled_softmax_with_logq_and_masking():
    # every in-batch column is corrected, the target's too (it is one of them):
    # row 0: target item 5: 2 - log .5; in-batch item 7: 0.5 - log .25; negative 9: 0 - log .2 (item 5 masked)
    row0 = -(2 - log(0.5)) + log(exp(2) * 2 + exp(0.5) * 4 + 5)
    # row 1: target item 7: 1 - log .25; in-batch item 5: 0.3 - log .5; negatives: 2 - log .1, 0 - log .2
    row1 = -(1 - log(0.25)) + log(exp(1) * 4 + exp(0.3) * 2 + exp(2) * 10 + 5)
    got = SampledSoftmaxLoss()(_scores())
    assert got.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_sampled_softmax_temperature_and_no_logq():
    # temperature 0.5 doubles every score; no correction
    row0 = -4 + log(exp(4) + exp(1) + exp(0))
    row1 = -2 + log(exp(2) + exp(0.6) + exp(4) + exp(0))
    got = SampledSoftmaxLoss(temperature=0.5, logq_correction=False)(_scores())
    assert got.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_in_batch_duplicates_of_the_positive_are_masked():
    s = Scores(
        pos=torch.tensor([1.0, 3.0]),
        pos_items=torch.tensor([4, 4]),
        in_batch=torch.tensor([[1.0, 9.0], [9.0, 3.0]]),
    )
    # the only other column is the same item: each row's softmax has the target alone -> loss 0
    assert SampledSoftmaxLoss()(s).item() == pytest.approx(0.0, abs=1e-7)


def test_bpr_skips_accidental_hits():
    s = _scores()
    # pairs kept: (2 - 0), (1 - 2), (1 - 0)
    expected = (log(1 + exp(-2)) + log(1 + exp(1)) + log(1 + exp(-1))) / 3
    assert BPRLoss()(s).item() == pytest.approx(expected, rel=1e-6)


def test_bce_positives_one_negatives_zero():
    s = _scores()
    # positives: log(1 + e^-x); negatives (hit excluded): log(1 + e^x); mean over 2 + 3 terms
    pos = log(1 + exp(-2)) + log(1 + exp(-1))
    neg = log(1 + exp(0)) + log(1 + exp(2)) + log(1 + exp(0))
    assert BCELoss()(s).item() == pytest.approx((pos + neg) / 5, rel=1e-6)


def test_mse_ignores_missing_ratings():
    s = Scores(
        pos=torch.zeros(3),
        pos_items=torch.arange(3),
        rating=torch.tensor([2.0, float("nan"), 5.0]),
        rating_pred=torch.tensor([1.0, 2.0, 3.0], requires_grad=True),
    )
    loss = RatingMSELoss()(s)
    assert loss.item() == pytest.approx((1 + 4) / 2)
    loss.backward()
    assert s.rating_pred.grad.tolist() == pytest.approx([-1.0, 0.0, -2.0])  # d/dp mean((p - r)^2) = (p - r)


def test_mse_without_any_rating_is_zero_not_nan():
    s = Scores(
        pos=torch.ones(2, requires_grad=True),
        pos_items=torch.arange(2),
        rating=torch.tensor([float("nan"), float("nan")]),
    )
    loss = RatingMSELoss()(s)
    assert loss.item() == 0.0
    loss.backward()


def test_multi_objective_weights_and_terms():
    s = _scores()
    s.rating, s.rating_pred = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 3.0])
    obj = MultiObjective({"softmax": SampledSoftmaxLoss(), "mse": RatingMSELoss()}, {"mse": 0.5})
    total, terms = obj(s)
    assert set(terms) == {"softmax", "mse"}
    assert terms["mse"].item() == pytest.approx(0.5)
    assert total.item() == pytest.approx(terms["softmax"].item() + 0.25, rel=1e-6)
    with pytest.raises(ValueError, match="unknown losses"):
        MultiObjective({"bpr": BPRLoss()}, {"bce": 1.0})


def test_scores_from_vectors():
    user = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    pos = torch.tensor([[3.0, 1.0], [1.0, 1.0]])
    neg = torch.tensor([[[1.0, 1.0]], [[2.0, -1.0]]])
    batch = {"item": torch.tensor([0, 1]), "neg_items": torch.tensor([[2], [3]])}
    s = Scores.from_vectors(user, pos, neg, batch)
    assert s.pos.tolist() == [3.0, 2.0]
    assert s.neg.tolist() == [[1.0], [-2.0]]
    assert s.in_batch.tolist() == [[3.0, 1.0], [2.0, 2.0]]


def test_mixed_log_q_is_exactly_unbiased_by_brute_force():
    """Enumerate every candidate multiset of a 5-item catalog: C = 2 in-batch candidates drawn from popularity
    q_b, N = 1 sampled negative from q_s. Weighting each candidate by 1 / Q(c), Q = mixed_log_q, the expected
    corrected sum equals the full-catalog normaliser Z = sum_j exp(s_j) (the derivation in its docstring)."""
    import itertools

    from trainer.model.losses import mixed_log_q

    s = torch.tensor([0.3, -1.2, 2.0, 0.7, -0.1], dtype=torch.float64)
    q_b = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05], dtype=torch.float64)
    q_s = torch.tensor([0.1, 0.1, 0.2, 0.3, 0.3], dtype=torch.float64)
    log_q = mixed_log_q(q_b.log(), q_s.log(), n_batch=2, n_sampled=1)
    assert torch.allclose(log_q.exp(), 2 * q_b + q_s)
    expected = torch.zeros((), dtype=torch.float64)
    for a, b, c in itertools.product(range(5), repeat=3):  # (batch, batch, sampled)
        p = q_b[a] * q_b[b] * q_s[c]
        expected += p * sum((s[j] - log_q[j]).exp() for j in (a, b, c))
    assert expected.item() == pytest.approx(s.exp().sum().item(), rel=1e-12)
    # one source alone reduces to that source's q (times its count)
    assert torch.allclose(mixed_log_q(q_b.log(), q_s.log(), 3, 0), q_b.log() + log(3))
    assert torch.allclose(mixed_log_q(q_b.log(), q_s.log(), 0, 4), q_s.log() + log(4))


def test_sampled_softmax_over_gathered_candidates_masks_the_rows_own_item():
    # 2 rows, 3 candidates (a gathered global batch: this rank's rows are candidates 1 and 2)
    s = Scores(
        pos=torch.tensor([1.0, 2.0]),
        pos_items=torch.tensor([4, 6]),
        in_batch=torch.tensor([[0.5, 1.0, 0.2], [0.1, 0.3, 2.0]]),
        cand_items=torch.tensor([4, 4, 6]),  # candidate 0 (another rank's row) duplicates row 0's item
        cand_logq=torch.tensor([log(0.5), log(0.5), log(0.25)]),
        pos_logq=torch.tensor([log(0.5), log(0.25)]),
    )
    row0 = -(1 - log(0.5)) + log(exp(1) * 2 + exp(0.2) * 4)
    row1 = -(2 - log(0.25)) + log(exp(2) * 4 + exp(0.1) * 2 + exp(0.3) * 2)
    assert SampledSoftmaxLoss()(s).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_rating_head_adds_offsets_and_a_learned_scale_to_the_score():
    from trainer.model.rating import RatingHead

    head = RatingHead(n_users=3, n_items=2, global_mean=3.5, init_scale=2.0)  # explicit: not the default
    with torch.no_grad():
        head.user_bias.weight[1] = 0.25
        head.item_bias.weight[0] = -0.5
    got = head(torch.tensor([1, 2]), torch.tensor([0, 1]), torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(got, torch.tensor([3.5 + 0.25 - 0.5 + 1.0, 3.5 - 2.0]))
    # a cosine can only move a prediction by +-scale: the head learns its range from the ratings
    loss = RatingMSELoss()(Scores(pos=torch.zeros(2), pos_items=torch.tensor([0, 1]), rating=torch.tensor([5.0, 1.0]),
                                  rating_pred=got))
    loss.backward()
    assert head.scale.grad is not None and head.global_bias.grad is not None


def test_full_catalog_softmax_is_the_exact_cross_entropy():
    catalog = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.3, 1.0, 0.2, 0.1]])
    s = Scores(pos=catalog[[0, 1], [0, 3]], pos_items=torch.tensor([0, 3]), catalog=catalog,
               in_batch=torch.zeros(2, 2), pos_logq=torch.tensor([log(0.5), log(0.25)]))  # ignored: nothing sampled
    t = 0.5
    want = [-(row[i] / t) + log(sum(exp(v / t) for v in row)) for row, i in zip(catalog.tolist(), [0, 3])]
    got = SampledSoftmaxLoss(temperature=t)(s)
    assert got.item() == pytest.approx(sum(want) / 2, rel=1e-6)


def test_full_catalog_takes_only_objectives_without_sampled_negatives():
    from trainer.model.config import LossConfig

    LossConfig(weights={"softmax": 1.0, "mse": 0.1}, full_catalog=True)
    with pytest.raises(ValueError, match="full_catalog.*bpr"):
        LossConfig(weights={"bpr": 1.0}, full_catalog=True)
