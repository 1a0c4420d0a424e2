"""Negative samplers: support, frequencies, log-probabilities, and the one-draw-per-sample contract."""

from __future__ import annotations

import numpy as np
import pytest

from data_modules.sampling import PopularitySampler, UniformSampler, build_sampler

pytestmark = pytest.mark.unit

POPULARITY = np.array([0, 5, 1, 0, 20, 3, 0, 9, 2, 0], dtype=np.int64)  # first and last items unseen


def test_popularity_never_draws_unseen_items_and_matches_its_probabilities():
    sampler = PopularitySampler(POPULARITY, alpha=0.75)
    draws = sampler.sample(np.random.default_rng(0), (200_000,))
    assert draws.dtype == np.int64 and np.all(POPULARITY[draws] > 0)
    p = POPULARITY**0.75 / (POPULARITY**0.75).sum()
    np.testing.assert_allclose(np.bincount(draws, minlength=10) / draws.size, p, atol=3e-3)
    np.testing.assert_allclose(np.exp(sampler.log_prob(np.arange(10))), p, rtol=1e-12)
    assert np.isneginf(sampler.log_prob(np.array([0, 3, 9]))).all()
    assert np.exp(sampler.log_prob(np.arange(10))).sum() == pytest.approx(1.0)


def test_popularity_edges_of_the_table_go_to_items_that_can_be_drawn():
    sampler = PopularitySampler(POPULARITY, alpha=1.0)

    class Fixed:  # stands in for a Generator: u = 0 and u just below 1
        def random(self, shape):
            return np.array([0.0, 1 - 2**-53, 0.999999999]).reshape(shape)

    assert sampler.sample(Fixed(), (3,)).tolist() == [1, 8, 8]


def test_alpha_zero_is_uniform_over_all_items():
    sampler = PopularitySampler(POPULARITY, alpha=0.0)
    np.testing.assert_allclose(sampler.log_prob(np.arange(10)), -np.log(10))
    assert set(sampler.sample(np.random.default_rng(1), (5000,)).tolist()) == set(range(10))


def test_uniform_covers_all_items_with_constant_log_prob():
    sampler = UniformSampler(7)
    draws = sampler.sample(np.random.default_rng(2), (70_000,))
    np.testing.assert_allclose(np.bincount(draws, minlength=7) / draws.size, 1 / 7, atol=5e-3)
    assert sampler.log_prob(draws[:5].reshape(1, 5)).shape == (1, 5)
    np.testing.assert_allclose(sampler.log_prob(draws), -np.log(7))


@pytest.mark.parametrize("sampler", [UniformSampler(10), PopularitySampler(POPULARITY)])
def test_rows_can_be_skipped_by_advancing_the_generator(sampler):
    """One 64-bit draw per sample: rows 3.. of a (8, 5) draw equal a (5, 5) draw after advance(3 * 5)."""
    whole = sampler.sample(np.random.Generator(np.random.PCG64(42)), (8, 5))
    bitgen = np.random.PCG64(42)
    bitgen.advance(3 * 5)
    assert np.array_equal(sampler.sample(np.random.Generator(bitgen), (5, 5)), whole[3:])


def test_bad_inputs_raise_naming_the_value():
    with pytest.raises(ValueError, match="alpha"):
        PopularitySampler(POPULARITY, alpha=-1)
    with pytest.raises(ValueError, match="sums to 0"):
        PopularitySampler(np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="n_items"):
        UniformSampler(0)
    with pytest.raises(ValueError, match="'zipf'"):
        build_sampler("zipf", POPULARITY)  # type: ignore[arg-type]
