"""Attribution of a dot-product score to sources (trainer/inference/explain/attribution.py) and the rationale
grounding check (rationale.py), on plain fusion heads with seeded inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.inference.explain.attribution import gated_shares, masked_score, shapley_shares, shapley_values
from trainer.inference.explain.rationale import (
    Facts,
    GroundingChecker,
    first_sentence,
    normalise_title,
    served_rationales,
    template_sentence,
)
from trainer.model.fusion import AttentionFusion, ConcatMLPFusion, GatedFusion

pytestmark = pytest.mark.unit
DIMS = {"id": 8, "tabular": 5, "text": 6, "graph": 4}


def _inputs(b: int = 6, seed: int = 0, k: int | None = None):
    g = torch.Generator().manual_seed(seed)
    sources = {n: torch.randn(b, d, generator=g) for n, d in DIMS.items()}
    other = torch.randn(b, 16, generator=g) if k is None else torch.randn(b, k, 16, generator=g)
    missing = torch.zeros(b, len(DIMS), dtype=torch.bool)
    missing[0, 0] = missing[1, 3] = True  # a cold item without id, one without graph
    return sources, other, missing


def _dot(v: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Scores of fused vectors (B, D) against one (B, D) or K (B, K, D) other-tower vectors."""
    return (v * other).sum(-1) if other.dim() == 2 else torch.einsum("bd,bkd->bk", v, other)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("k", [None, 3])
def test_gated_decomposition_sums_exactly_to_the_score(normalize, k):
    torch.manual_seed(0)
    head = GatedFusion(DIMS, 16).eval()
    sources, other, missing = _inputs(k=k)
    with torch.no_grad():
        sh = gated_shares(head, sources, missing, other, normalize)
        fused = head(sources, missing)[0]
        score = _dot(F.normalize(fused, dim=-1) if normalize else fused, other)
    torch.testing.assert_close(sh.shares.sum(-1), score, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sh.score, score, rtol=1e-5, atol=1e-6)
    assert sh.method == "gated-exact" and sh.names == list(DIMS)
    assert sh.shares[0, ..., 0].abs().max() == 0 and sh.shares[1, ..., 3].abs().max() == 0  # missing: no share


@pytest.mark.parametrize("head_cls", [ConcatMLPFusion, AttentionFusion, GatedFusion])
@pytest.mark.parametrize("k", [None, 3])
def test_shapley_values_sum_to_all_minus_none_and_ignore_missing_sources(head_cls, k):
    torch.manual_seed(0)
    head = head_cls(DIMS, 16).eval()
    sources, other, missing = _inputs(k=k)
    with torch.no_grad():
        sh = shapley_shares(head, sources, missing, other, normalize=True)
        full = F.normalize(head(sources, missing)[0], dim=-1)
        none = F.normalize(head(sources, torch.ones_like(missing))[0], dim=-1)
    torch.testing.assert_close(sh.score, _dot(full, other), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sh.baseline, _dot(none, other), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sh.shares.sum(-1), sh.score - sh.baseline, rtol=1e-5, atol=1e-6)
    assert sh.shares[0, ..., 0].abs().max() < 1e-6 and sh.shares[1, ..., 3].abs().max() < 1e-6  # dummy players


def test_shapley_values_of_known_games():
    w = torch.tensor([1.0, -2.0, 0.5])
    phi, full, empty = shapley_values(lambda absent: (w * ~absent).sum(), 3)  # additive: phi = each weight
    torch.testing.assert_close(phi, w)
    assert float(full) == -0.5 and float(empty) == 0.0
    # unanimity game of players {0, 1}: 1 only when both are present -> 1/2 each, player 2 a dummy
    phi, _, _ = shapley_values(lambda absent: (~absent[0] & ~absent[1]).float(), 3)
    torch.testing.assert_close(phi, torch.tensor([0.5, 0.5, 0.0]))


def test_masked_score_equals_the_head_with_that_source_missing():
    torch.manual_seed(0)
    head = GatedFusion(DIMS, 16).eval()
    sources, other, missing = _inputs()
    drop = torch.tensor([2, 1, 0, 3, 2, 1])
    with torch.no_grad():
        got = masked_score(head, sources, missing, drop, other, normalize=True)
        m = missing | F.one_hot(drop, 4).bool()
        want = (F.normalize(head(sources, m)[0], dim=-1) * other).sum(-1)
    torch.testing.assert_close(got, want)


def test_grounding_finds_titles_and_attributes_and_checks_them_against_the_facts():
    catalog = ["Toy Story", "GoldenEye", "Usual Suspects, The", "Heat", "Twelve Monkeys"]
    checker = GroundingChecker(catalog, {"Comedy", "Animation", "Thriller", "1995"})
    facts = Facts("Toy Story", {"release_year": "1995", "class": ["Animation", "Comedy"]}, ["The Usual Suspects"], "id",
                  "movie")
    g = checker.check('You may like "Toy Story", a 1995 animation, because you liked The Usual Suspects and comedies.',
                      facts)
    assert sorted((k, n.lower(), ok) for k, n, ok in g.named) == [
        ("attribute", "1995", True), ("attribute", "animation", True), ("attribute", "comedies", True),
        ("title", "the usual suspects", True), ("title", "toy story", True)]
    g = checker.check('A thriller like "Twelve Monkeys" and "Blade Runner 2"; in the heat of the moment.', facts)
    assert sorted((k, n, ok) for k, n, ok in g.named) == [
        ("attribute", "thriller", False), ("title", "Blade Runner 2", False), ("title", "Twelve Monkeys", False)]
    assert g.n_grounded == 0 and g.n_named == 3  # lowercase "heat" is not the film


def test_title_normalisation_and_first_sentence():
    assert normalise_title("Usual Suspects, The (1995)") == normalise_title("the usual suspects") == "the usual suspects"
    assert first_sentence('You may like "Mr. Holland\'s Opus." It is good. More.') == 'You may like "Mr. Holland\'s Opus."'
    assert first_sentence("  Because you liked Heat!  And more") == "Because you liked Heat!"
    assert first_sentence("no end") == "no end"


def test_a_hyphenated_genre_is_found_written_with_a_space():
    checker = GroundingChecker(["Heat"], {"Film-Noir", "Sci-Fi"})
    facts = Facts("Heat", {"class": ["Film-Noir"]}, [], "id", "movie")
    g = checker.check("A film noir you may like, not sci fi.", facts)
    assert sorted((k, n.lower(), ok) for k, n, ok in g.named) == [("attribute", "film noir", True),
                                                                   ("attribute", "sci fi", False)]


def test_an_ungrounded_sentence_is_served_as_a_sentence_built_from_the_facts():
    checker = GroundingChecker(["Toy Story", "Heat", "Twelve Monkeys"], {"Comedy", "Animation", "Thriller"})
    facts = Facts("Toy Story", {"class": ["Animation", "Comedy"]}, ["Heat"], "sequence", "movie")
    texts = ['You may like "Toy Story", a comedy.', 'You may like "Toy Story", a thriller like "Twelve Monkeys".']
    served = served_rationales(texts, [facts, facts], checker)
    assert [o for *_, o in served] == ["model", "template"]
    assert served[0][0] == texts[0]
    text, g, g_model, _ = served[1]
    assert text == template_sentence(facts) and g.n_named >= 3 and g.n_grounded == g.n_named
    assert g_model.n_grounded == 1 and g_model.n_named == 3  # the model's own sentence, as checked
    assert served_rationales(texts, [facts, facts], checker, "keep")[1][0] == texts[1]
    with pytest.raises(ValueError, match="ungrounded"):
        served_rationales(texts, [facts], checker, "drop")
