"""SASRec-like sequence encoder: causal, padding-proof, and a learned vector for empty histories."""

from __future__ import annotations

import pytest
import torch

from trainer.model.encoders.id import IdEmbedding
from trainer.model.encoders.sequence import SequenceEncoder

pytestmark = pytest.mark.unit


def _encoder(dim: int = 16, item_dim: int = 16) -> SequenceEncoder:
    torch.manual_seed(0)
    return SequenceEncoder(
        IdEmbedding(20, item_dim), dim=dim, n_layers=2, n_heads=2, max_len=6, dropout=0.0
    ).eval()


def _batch(histories: list[list[int]], length: int = 5) -> dict[str, torch.Tensor]:
    """Right-aligned: most recent item last, padding (id 0, mask False) on the left."""
    hist = torch.zeros(len(histories), length, dtype=torch.long)
    mask = torch.zeros(len(histories), length, dtype=torch.bool)
    for r, h in enumerate(histories):
        if h:
            hist[r, -len(h) :] = torch.tensor(h)
            mask[r, -len(h) :] = True
    return {"history": hist, "history_mask": mask}


def test_empty_history_gives_the_learned_vector_not_nan():
    enc = _encoder()
    out = enc(torch.arange(3), _batch([[3, 4], [], [5]]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], enc.no_history)
    out.sum().backward()
    assert enc.no_history.grad is not None and all(
        torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None
    )


def test_padding_amount_does_not_change_the_output():
    enc = _encoder()
    a = enc(torch.arange(2), _batch([[3, 4, 7], [9]], length=3))
    b = enc(torch.arange(2), _batch([[3, 4, 7], [9]], length=6))
    torch.testing.assert_close(a, b)


def test_padding_values_are_ignored():
    enc = _encoder()
    batch = _batch([[3, 4]], length=4)
    out = enc(torch.arange(1), batch)
    batch["history"][0, :2] = torch.tensor([11, 12])  # garbage under the mask
    torch.testing.assert_close(enc(torch.arange(1), batch), out)


def test_history_order_matters_and_longer_histories_are_cut():
    enc = _encoder()
    a = enc(torch.arange(1), _batch([[3, 4, 5]]))
    b = enc(torch.arange(1), _batch([[5, 4, 3]]))
    assert not torch.allclose(a, b)
    long = enc(torch.arange(1), _batch([[1, 2, 3, 4, 5, 6, 7, 8]], length=8))
    cut = enc(torch.arange(1), _batch([[3, 4, 5, 6, 7, 8]], length=6))  # max_len = 6 most recent
    torch.testing.assert_close(long, cut)


def test_item_embedding_is_shared_and_projected():
    enc = _encoder(dim=8, item_dim=12)
    out = enc(torch.arange(2), _batch([[1, 2], [3]]))
    assert out.shape == (2, 8) and enc.out_dim == 8
    # a random projection: sum() alone is constant under the final LayerNorm, so its gradient is exactly zero
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert enc.item_embedding.embedding.weight.grad[[1, 2, 3]].abs().sum() > 0
