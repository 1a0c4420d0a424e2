"""Fusion heads (gates, source dropout, missing sources, gradients) and the towers built from them."""

from __future__ import annotations

import pytest
import torch

from trainer.model.encoders.id import IdEmbedding
from trainer.model.fusion import AttentionFusion, ConcatMLPFusion, GatedFusion
from trainer.model.towers import Tower, TwoTower

pytestmark = pytest.mark.unit

DIMS = {"id": 8, "text": 6, "graph": 4}
HEADS = [ConcatMLPFusion, GatedFusion, AttentionFusion]


def _sources(b: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(b, d, generator=g, requires_grad=True) for n, d in DIMS.items()}


@pytest.mark.parametrize("head", [GatedFusion, AttentionFusion])
def test_weights_sum_to_one(head):
    torch.manual_seed(0)
    fused, w = head(DIMS, 16).eval()(_sources())
    assert fused.shape == (5, 16) and w.shape == (5, 3)
    torch.testing.assert_close(w.sum(1), torch.ones(5))


@pytest.mark.parametrize("head", HEADS)
def test_gradient_reaches_every_source_and_parameter(head):
    torch.manual_seed(0)
    fusion = head(DIMS, 16)
    src = _sources()
    fused, _ = fusion(src)
    fused.pow(2).sum().backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in src.values())
    assert all(p.grad is not None for p in fusion.parameters())


@pytest.mark.parametrize("head", HEADS)
def test_missing_source_is_ignored(head):
    """Declared missing: changing that source's values must not change the output; its weight is 0."""
    torch.manual_seed(0)
    fusion = head(DIMS, 16).eval()
    src = _sources()
    missing = torch.zeros(5, 3, dtype=torch.bool)
    missing[:2, 1] = True  # rows 0, 1 have no text
    out_a, w = fusion(src, missing)
    src_b = dict(src, text=src["text"] + 100.0)
    out_b, _ = fusion(src_b, missing)
    torch.testing.assert_close(out_a[:2], out_b[:2])
    assert not torch.allclose(out_a[2:], out_b[2:])
    if w is not None:
        assert (w[:2, 1] == 0).all()
        torch.testing.assert_close(w.sum(1), torch.ones(5))


@pytest.mark.parametrize("head", [GatedFusion, AttentionFusion])
def test_source_dropout_masks_gates_and_never_drops_a_whole_row(head):
    torch.manual_seed(0)
    fusion = head(DIMS, 16, source_dropout={"id": 0.9, "text": 0.9, "graph": 0.9}).train()
    _, w = fusion(_sources(b=400))
    dropped = w == 0
    assert dropped.any(), "with rate 0.9 some sources must be dropped"
    assert not dropped.all(dim=1).any(), "a row lost every source"
    torch.testing.assert_close(w.sum(1), torch.ones(400))
    # rows dropout would empty (0.9^3) keep exactly one source, so 2 of 3 are dropped there:
    # expected share = (1 * 0.027 + 2 * 0.243 + 2 * 0.729) / 3 ~= 0.657
    assert dropped.float().mean().item() == pytest.approx(0.657, abs=0.04)


def test_source_dropout_zeroes_the_dropped_source_in_concat():
    torch.manual_seed(0)
    fusion = ConcatMLPFusion({"a": 3, "b": 3}, 4, source_dropout={"a": 0.5}).train()
    src = {"a": torch.randn(200, 3), "b": torch.randn(200, 3)}
    out, _ = fusion(src)
    expected_if_dropped, _ = fusion.eval()({"a": torch.zeros(200, 3), "b": src["b"]})
    dropped = torch.isclose(out, expected_if_dropped).all(1)
    assert 50 < int(dropped.sum()) < 150  # about half the rows
    fusion.eval()
    out_eval, _ = fusion(src)  # no dropout at inference
    assert not torch.isclose(out_eval, expected_if_dropped).all(1).any()


def test_dropout_rates_validated():
    with pytest.raises(ValueError, match="unknown source"):
        GatedFusion(DIMS, 8, source_dropout={"audio": 0.1})
    with pytest.raises(ValueError, match="rate"):
        GatedFusion(DIMS, 8, source_dropout={"id": 1.0})


def test_all_sources_missing_gives_finite_output():
    fusion = GatedFusion(DIMS, 8).eval()
    out, w = fusion(_sources(b=2), torch.ones(2, 3, dtype=torch.bool))
    assert torch.isfinite(out).all() and (w == 0).all()


def test_two_tower_scores_all_items():
    torch.manual_seed(0)
    user = Tower({"id": IdEmbedding(4, 8)}, GatedFusion({"id": 8}, 8))
    item = Tower(
        {"id": IdEmbedding(7, 8), "id2": IdEmbedding(7, 4, name="id2")}, GatedFusion({"id": 8, "id2": 4}, 8)
    )
    model = TwoTower(user, item, n_items=7).eval()
    u, gates = model.encode_users(torch.tensor([0, 3]))
    assert u.shape == (2, 8) and gates.shape == (2, 1)
    with torch.no_grad():
        all_items = model.all_item_vectors(batch_size=3)
        some, _ = model.encode_items(torch.tensor([2, 6]))
    assert all_items.shape == (7, 8)
    torch.testing.assert_close(all_items[[2, 6]], some)
    scores = model.score(u, all_items)
    assert scores.shape == (2, 7)
    torch.testing.assert_close(model.score(u, all_items[[2, 6]].expand(2, 2, 8)), scores[:, [2, 6]])


def test_tower_checks_sources_against_fusion():
    with pytest.raises(ValueError, match="fusion sources"):
        Tower({"id": IdEmbedding(4, 8)}, GatedFusion({"text": 8}, 8))
