"""The precomputed-vector source: projection, rows without a vector declared missing through the tower to the
fusion head (gate 0, fused vector independent of the zero row), and only the projection in checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.model.encoders.id import IdEmbedding
from trainer.model.encoders.vector import VectorEncoder
from trainer.model.fusion import AttentionFusion, ConcatMLPFusion, GatedFusion
from trainer.model.towers import Tower

pytestmark = pytest.mark.unit


def _vectors(n: int = 6, d: int = 5, absent: tuple[int, ...] = (1, 4)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, d)).astype(np.float32) * 3.0
    present = np.ones(n, dtype=bool)
    present[list(absent)] = False
    vectors[~present] = 0.0
    return vectors, present


def test_projection_of_centered_unit_vectors_and_zero_for_missing_rows():
    torch.manual_seed(0)
    vectors, present = _vectors()
    enc = VectorEncoder(vectors, present, dim=4)
    ids = torch.tensor([0, 1, 2, 4, 5, 0])
    out = enc(ids, {})
    assert out.shape == (6, 4) and enc.out_dim == 4 and enc.in_dim == 5
    # centered on the mean of the rows that have a vector (the shared direction of pooled LM embeddings), then unit length
    mean = torch.from_numpy(vectors[present]).double().mean(0).float()
    expect = enc.proj(F.normalize(torch.from_numpy(vectors)[ids] - mean, dim=-1))
    keep = torch.from_numpy(present)[ids]
    torch.testing.assert_close(out[keep], expect[keep])
    assert torch.equal(out[~keep], torch.zeros(int((~keep).sum()), 4))
    assert enc.missing_rows(ids).tolist() == [False, True, False, True, False, False]


def test_hidden_layer_raw_scale_and_only_the_projection_learns():
    vectors, present = _vectors()
    enc = VectorEncoder(vectors, present, dim=3, hidden=7, center=False, normalize_input=False)
    ids = torch.tensor([0, 2, 3])
    torch.testing.assert_close(enc(ids, {}), enc.proj(torch.from_numpy(vectors)[ids]))
    enc(ids, {}).sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    assert not enc.vectors.requires_grad
    # the vectors are data rebuilt from the prepared dataset: a checkpoint holds the projection only
    assert set(enc.state_dict()) == {"proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias"}


def test_bad_shapes_are_value_errors():
    vectors, present = _vectors()
    with pytest.raises(ValueError, match=r"present \(5,\)"):
        VectorEncoder(vectors, present[:5], dim=4)
    with pytest.raises(ValueError, match="sizes must be > 0"):
        VectorEncoder(vectors, present, dim=0)


@pytest.mark.parametrize("head", [GatedFusion, AttentionFusion, ConcatMLPFusion])
def test_tower_declares_rows_without_a_vector_missing(head):
    torch.manual_seed(0)
    vectors, present = _vectors()
    encoders = {"id": IdEmbedding(6, 4), "vector": VectorEncoder(vectors, present, dim=4)}
    tower = Tower(encoders, head({"id": 4, "vector": 4}, 4)).eval()
    ids = torch.arange(6)
    missing = tower.declared_missing(ids)
    assert missing.tolist() == [[False, not p] for p in present]
    fused, weights = tower(ids, {})
    if weights is not None:  # gated / attention: a row without a vector puts all weight on the id
        assert torch.equal(weights[~torch.from_numpy(present), 1], torch.zeros(2))
        torch.testing.assert_close(weights[~torch.from_numpy(present), 0], torch.ones(2))
    # what the fusion head gets for a row without a vector is exactly "vector missing"
    sources = {n: e(ids, {}) for n, e in encoders.items()}
    declared = torch.zeros(6, 2, dtype=torch.bool)
    declared[:, 1] = ~torch.from_numpy(present)
    torch.testing.assert_close(fused, tower.fusion(sources, declared)[0])
    # a mask given by the caller (a cold item's id) is combined with the encoder's own, not replaced
    given = torch.zeros(6, 2, dtype=torch.bool)
    given[0, 0] = True
    both = tower.declared_missing(ids, given)
    assert both[0].tolist() == [True, False] and both[1].tolist() == [False, True]
    assert not given[1, 1]  # the caller's tensor is left as it was


def test_tower_without_such_encoders_passes_missing_through():
    tower = Tower({"id": IdEmbedding(3, 4)}, GatedFusion({"id": 4}, 4))
    assert tower.declared_missing(torch.arange(3)) is None
    given = torch.tensor([[True], [False], [False]])
    assert tower.declared_missing(torch.arange(3), given) is given
