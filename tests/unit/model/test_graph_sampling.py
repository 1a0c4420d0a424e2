"""Neighbour-sampled LightGCN: exact subgraphs on a tiny graph, seeded, gradients, equality to full propagation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.model.config import GraphSourceConfig
from trainer.model.encoders.graph import GRAPH_TABLES, GraphEncoder
from trainer.model.encoders.graph_sampling import NeighbourSampler

pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")]

# 4 users x 5 items; user 0 has degree 5, item 0 degree 4, so fan-out 2 samples some nodes and keeps others whole
USERS = np.array([0, 0, 0, 0, 0, 1, 1, 2, 3])
ITEMS = np.array([0, 1, 2, 3, 4, 0, 1, 0, 0])
N_USERS, N_ITEMS = 4, 5


def _graph(fanouts=None, seed=0, layers=2) -> GraphEncoder:
    torch.manual_seed(0)
    return GraphEncoder(
        N_USERS, N_ITEMS, USERS, ITEMS, dim=3, n_layers=layers, fanouts=fanouts, sample_seed=seed
    )


def _edges(g: GraphEncoder) -> set[tuple[int, int]]:
    rows = torch.repeat_interleave(torch.arange(g.n_nodes), g.crow[1:] - g.crow[:-1])
    return set(zip(rows.tolist(), g.col.tolist(), strict=True))


def test_sampled_hop_is_real_edges_within_fanout_and_seeded():
    g = _graph([2, 2])
    edges, deg = _edges(g), (g.crow[1:] - g.crow[:-1])
    nodes = torch.arange(g.n_nodes)
    rows, nbrs, w = g.sampler.sample_hop(nodes, 2, g.crow, g.col, g.val)
    counts = torch.bincount(rows, minlength=g.n_nodes)
    assert (counts <= 2).all() and (
        counts == deg.clamp_max(2)
    ).all()  # isolated nodes: none; else min(deg, fanout)
    for r, n in zip(rows.tolist(), nbrs.tolist(), strict=True):
        assert (r, n) in edges
    # kept whole (degree <= 2): each edge once, weight = the normalised A_vu; sampled: A_vu * degree / fanout
    dense = g.adjacency().to_dense()
    scale = torch.where(deg[rows] > 2, deg[rows] / 2, torch.ones_like(w))
    torch.testing.assert_close(w, dense[rows, nbrs] * scale)
    for v in (deg <= 2).nonzero().flatten().tolist():
        assert sorted(nbrs[rows == v].tolist()) == sorted(g.col[g.crow[v] : g.crow[v + 1]].tolist())
    # seeded: the same seed draws the same edges, another seed other ones (over a few draws)
    again = _graph([2, 2]).sampler.sample_hop(nodes, 2, g.crow, g.col, g.val)
    assert all(torch.equal(a, b) for a, b in zip((rows, nbrs, w), again, strict=True))
    other = _graph([2, 2], seed=1).sampler
    draws = [other.sample_hop(nodes, 2, g.crow, g.col, g.val)[1] for _ in range(3)]
    assert any(not torch.equal(d, nbrs) for d in draws)


def test_fanout_at_max_degree_equals_full_propagation():
    full = _graph()
    sampled = _graph([5, 5])  # max degree is 5
    torch.testing.assert_close(sampled.embedding.weight, full.embedding.weight)
    users, items = full.tables()
    nodes = torch.tensor([0, 3, 1, 0, N_USERS + 4, N_USERS + 0])  # repeats and both sides
    got = sampled.sampled(nodes)
    torch.testing.assert_close(got, torch.cat([users, items])[nodes])


def test_sampled_hop_is_unbiased_in_the_mean():
    # every node listed 20,000 times in one call: each occurrence draws its own edges
    g, reps = _graph([1, 1], seed=3), 20000
    x = g.embedding.weight.detach()
    nodes = torch.arange(g.n_nodes).repeat(reps)
    rows, nbrs, w = g.sampler.sample_hop(nodes, 1, g.crow, g.col, g.val)
    est = torch.zeros(len(nodes), 3).index_add_(0, rows, x[nbrs] * w.unsqueeze(1))
    mean = est.view(reps, g.n_nodes, 3).mean(0)
    torch.testing.assert_close(mean, g.adjacency() @ x, atol=0.01, rtol=0.0)


def test_gradients_reach_exactly_the_sampled_neighbourhood():
    g = _graph([2, 1])
    target = torch.tensor([3])  # user 3: its only edge is item 0; item 0's 2 draws among users 0..3
    g.sampled(target).sum().backward()
    grad = g.embedding.weight.grad.abs().sum(1)
    assert grad[3] > 0 and grad[N_USERS + 0] > 0
    # two hops from user 3 never reach items 1..4 (only via users 0, 1, a third hop)
    assert (grad[N_USERS + 1 :] == 0).all()


def test_training_mode_samples_eval_mode_propagates_whole_graph():
    g = _graph([2, 2])
    view = g.user_view()
    g.train()
    assert g.sampling()
    a, b = view(torch.tensor([0, 1])), view(torch.tensor([0, 1]))
    assert not torch.equal(a, b)  # user 0 (degree 5) is resampled per call
    g.eval()
    assert not g.sampling()
    torch.testing.assert_close(view(torch.tensor([0, 1])), g.tables()[0][:2])
    tables = g.tables()
    g.train()  # tables in the ctx win (one step propagating once for both towers)
    torch.testing.assert_close(view(torch.tensor([1]), {GRAPH_TABLES: tables}), tables[0][1:2])


def test_sampling_stream_resumes_from_the_state_dict():
    g = _graph([2, 2])
    nodes = torch.arange(g.n_nodes)
    g.sampled(nodes)
    state = {k: v for k, v in g.state_dict().items()}
    after = g.sampled(nodes)
    resumed = _graph([2, 2], seed=99)
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.sampled(nodes), after)


def test_config_and_constructor_reject_bad_fanouts():
    with pytest.raises(ValueError, match="fanouts"):
        GraphSourceConfig(layers=2, fanouts=[10])
    with pytest.raises(ValueError, match="fanouts"):
        GraphSourceConfig(layers=2, fanouts=[10, 0])
    assert GraphSourceConfig(layers=2, fanouts=[10, 5]).fanouts == [10, 5]
    with pytest.raises(ValueError, match="one per layer"):
        _graph([3], layers=2)
    with pytest.raises(ValueError, match="fanouts"):
        NeighbourSampler([])


def test_two_tower_step_samples_in_training_and_propagates_in_eval(tmp_path):
    from data_modules.side import SideData
    from tests.helpers.tiny_dataset import prepare_tiny
    from trainer.model.builder import build_two_tower
    from trainer.model.config import ModelConfig

    prepare_tiny(tmp_path / "tiny")
    side = SideData(tmp_path / "tiny")
    cfg = ModelConfig(
        dim=8, sources=["id", "graph"], graph={"layers": 2, "fanouts": [2, 2], "sample_seed": 5}
    )
    towers = build_two_tower(cfg, side)
    assert towers.graph.sampler is not None and towers.graph.sampler.seed == 5
    towers.train()
    ctx = towers.context({})
    assert GRAPH_TABLES not in ctx  # no full propagation in a sampled training step
    users, _ = towers.encode_users(torch.tensor([0, 1]), ctx)
    items, _ = towers.encode_items(torch.tensor([0, 2]), ctx)
    (users * items).sum().backward()
    assert towers.graph.embedding.weight.grad.abs().sum() > 0
    towers.eval()
    assert GRAPH_TABLES in towers.context({})  # evaluation: the whole graph, exactly
