"""LightGCN graph encoder: normalised adjacency, propagation, shared tables for both towers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.model.encoders.graph import GRAPH_TABLES, GraphEncoder, normalized_adjacency

pytestmark = pytest.mark.unit

USERS = np.array([0, 0, 1, 1, 1])  # (0, 0) repeated: duplicates merge
ITEMS = np.array([0, 0, 1, 0, 2])


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_normalized_adjacency_by_hand():
    # path 0 - 1 - 2: degrees 1, 2, 1 -> A[0, 1] = A[1, 2] = 1 / sqrt(2)
    crow, col, val = normalized_adjacency(np.array([0, 1, 1, 2]), np.array([1, 0, 2, 1]), 3)
    dense = torch.sparse_csr_tensor(crow, col, val, (3, 3), check_invariants=True).to_dense()
    s = 2**-0.5
    torch.testing.assert_close(dense, torch.tensor([[0, s, 0], [s, 0, s], [0, s, 0]]))


def test_propagation_equals_dense_lightgcn():
    torch.manual_seed(0)
    g = GraphEncoder(2, 3, USERS, ITEMS, dim=4, n_layers=2)
    # dense reference: bipartite A with users 0..1 then items 2..4
    a = torch.zeros(5, 5)
    for u, i in {(0, 0), (1, 1), (1, 0), (1, 2)}:
        a[u, 2 + i] = a[2 + i, u] = 1
    d = a.sum(1).rsqrt()
    norm = d[:, None] * a * d[None, :]
    e0 = g.embedding.weight
    ref = (e0 + norm @ e0 + norm @ norm @ e0) / 3
    users, items = g.tables()
    torch.testing.assert_close(users, ref[:2])
    torch.testing.assert_close(items, ref[2:])


def test_social_and_kg_edges_add_nodes_and_change_users():
    torch.manual_seed(0)
    plain = GraphEncoder(2, 3, USERS, ITEMS, dim=4, n_layers=1)
    torch.manual_seed(0)
    rich = GraphEncoder(
        2,
        3,
        USERS,
        ITEMS,
        dim=4,
        n_layers=1,
        social=np.array([[0, 1]]),
        kg=np.array([[2, 0, 0], [1, 0, 1]]),
        n_entities=2,
    )
    assert rich.n_nodes == 2 + 3 + 2
    assert not torch.allclose(plain.tables()[0][:2], rich.tables()[0][:2])


def test_views_share_one_propagation_and_gradients_flow():
    g = GraphEncoder(2, 3, USERS, ITEMS, dim=4, n_layers=2)
    user_view, item_view = g.user_view(), g.item_view()
    assert user_view.out_dim == item_view.out_dim == 4
    tables = g.tables()
    ctx = {GRAPH_TABLES: tables}
    u = user_view(torch.tensor([1, 0]), ctx)
    i = item_view(torch.tensor([2]), ctx)
    torch.testing.assert_close(u, tables[0][[1, 0]])
    torch.testing.assert_close(i, item_view(torch.tensor([2]), {}))  # without ctx it propagates itself
    (u.sum() + i.sum()).backward()
    assert g.embedding.weight.grad.abs().sum() > 0
    assert "crow" not in g.state_dict()  # adjacency is data, rebuilt with the model
