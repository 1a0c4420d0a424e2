"""Id and tabular encoders: lookups by id from tables held as buffers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.model.encoders.base import SourceEncoder
from trainer.model.encoders.id import IdEmbedding
from trainer.model.encoders.tabular import TabularEncoder

pytestmark = pytest.mark.unit

CAT = np.array([[1, 2], [0, 1], [2, 0]], dtype=np.int32)  # 3 entities, 2 fields, 0 = missing
NUM = np.array([[0.5], [-1.0], [0.0]], dtype=np.float32)
# genre CSR: entity 0 -> {1, 3}, entity 1 -> {}, entity 2 -> {2}
MULTI = {"genre": (np.array([0, 2, 2, 3]), np.array([1, 3, 2], dtype=np.int32), 4)}


def _encoder() -> TabularEncoder:
    torch.manual_seed(0)
    return TabularEncoder(CAT, [3, 3], NUM, MULTI, dim=8, field_dim=4)


def test_id_embedding_is_a_source_encoder():
    enc = IdEmbedding(5, 4)
    assert isinstance(enc, SourceEncoder)
    assert enc(torch.tensor([0, 4]), {}).shape == (2, 4)


def test_tabular_shapes_and_protocol():
    enc = _encoder()
    assert isinstance(enc, SourceEncoder) and enc.out_dim == 8
    assert enc(torch.tensor([2, 0, 1, 0]), {}).shape == (4, 8)


def test_tabular_pieces_equal_manual_lookup():
    enc = _encoder()
    ids = torch.tensor([0, 1, 2])
    genre = enc.multi[0].weight
    bags = torch.stack([(genre[1] + genre[3]) / 2, torch.zeros(4), genre[2]])  # mean bags; empty -> 0
    cat0, cat1 = enc.cat[0].weight, enc.cat[1].weight
    cats = [cat0[torch.tensor([1, 0, 2])], cat1[torch.tensor([2, 1, 0])]]
    assert (cat0[0] == 0).all()  # code 0 = missing is a zero padding vector
    num = enc.numeric(torch.tensor(NUM))
    expected = enc.mix(torch.cat([*cats, bags, num], dim=-1))
    torch.testing.assert_close(enc(ids, {}), expected)


def test_tabular_tables_are_not_in_the_checkpoint_and_follow_the_module():
    enc = _encoder()
    assert not any(k.startswith(("cat_codes", "num_values", "multi_")) for k in enc.state_dict())
    assert enc.cat_codes.dtype == torch.long


def test_tabular_only_numeric_and_validation():
    enc = TabularEncoder(None, [], NUM, None, dim=3)
    assert enc(torch.tensor([1]), {}).shape == (1, 3)
    with pytest.raises(ValueError, match="cardinality"):
        TabularEncoder(CAT, [3, 2], None, None, dim=3)
    with pytest.raises(ValueError, match="at least one"):
        TabularEncoder(None, [], None, None, dim=3)
