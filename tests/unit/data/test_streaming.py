"""TrainStream: coverage, exact order per (seed, epoch), history contents, negatives, rank/worker split."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data_modules import streaming
from data_modules.errors import DataError
from data_modules.sampling import PopularitySampler, UniformSampler
from data_modules.streaming import TrainStream
from tests.helpers.tiny_dataset import TinyDataset, row_keys, write_tiny_dataset

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> TinyDataset:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


def make(data: TinyDataset, **kw) -> TrainStream:
    args = dict(
        global_batch_size=100, history_len=7, num_negatives=4, seed=3, buffer_blocks=4, block_rows=None
    )
    return TrainStream(data.root, **(args | kw))


def cat(batches: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    return {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}


def expected_stream(
    data: TinyDataset, seed: int, epoch: int, buffer_blocks: int, block_rows: int
) -> np.ndarray:
    """The spec, written out: row indices (into data's file order) of the global stream of an epoch."""
    blocks = []
    start = 0
    for rows in data.shard_rows:
        blocks += [
            np.arange(start + a, start + min(a + block_rows, rows)) for a in range(0, rows, block_rows)
        ]
        start += rows
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0, 0]))
    order = [blocks[i] for i in rng.permutation(len(blocks))]
    stream = []
    for w in range(0, len(order), buffer_blocks):
        window = np.concatenate(order[w : w + buffer_blocks])
        perm = np.random.default_rng(
            np.random.SeedSequence([seed, epoch, 1, w // buffer_blocks])
        ).permutation(len(window))
        stream.append(window[perm])
    return np.concatenate(stream)


def test_one_epoch_covers_every_row_once_with_the_written_values(data):
    # 1000 rows, global batches of 128: 7 full batches and a last one of 104 kept by drop_last=False.
    stream = make(data, global_batch_size=128, drop_last=False)
    batches = list(stream)
    assert len(stream) == len(batches) == 8 and [len(b["user"]) for b in batches][-2:] == [128, 104]
    got = cat(batches)
    index = {k: i for i, k in enumerate(data.keys())}
    rows = np.array([index[k] for k in row_keys(got["user"], got["seq_pos"])])
    assert np.array_equal(np.sort(rows), np.arange(data.n_rows))
    assert np.array_equal(got["item"], data.item[rows])
    np.testing.assert_array_equal(got["rating"], data.rating[rows])  # NaN where the rating is absent


def test_drop_last_drops_only_the_partial_batch(data):
    stream = make(data, global_batch_size=128)
    got = cat(list(stream))
    assert len(stream) == 7 and len(np.unique(row_keys(got["user"], got["seq_pos"]))) == 7 * 128


@pytest.mark.parametrize("block_rows", [None, 64])
def test_order_is_exactly_the_spec_for_seed_and_epoch(data, block_rows):
    stream = make(data, block_rows=block_rows, buffer_blocks=3)
    index = {k: i for i, k in enumerate(data.keys())}
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        got = cat(list(stream))
        rows = np.array([index[k] for k in row_keys(got["user"], got["seq_pos"])])
        # block_rows=None uses the row groups of 50 rows the helper wrote
        assert np.array_equal(rows, expected_stream(data, 3, epoch, 3, block_rows or 50))


def test_same_seed_same_order_other_epoch_or_seed_other_order(data):
    def keys(seed, epoch):
        stream = make(data, seed=seed)
        stream.set_epoch(epoch)
        got = cat(list(stream))
        return row_keys(got["user"], got["seq_pos"]), got["neg_items"]

    k0, n0 = keys(3, 0)
    k0b, n0b = keys(3, 0)
    assert np.array_equal(k0, k0b) and np.array_equal(n0, n0b)
    assert not np.array_equal(k0, keys(3, 1)[0])
    assert not np.array_equal(k0, keys(4, 0)[0])


def test_history_is_the_users_earlier_items_right_aligned(data):
    L = 7
    got = cat(list(make(data, history_len=L)))
    by_time = {}  # brute force from the raw rows, not from the side arrays
    for u in np.unique(data.user):
        rows = np.flatnonzero(data.user == u)
        rows = rows[np.argsort(data.seq_pos[rows])]
        assert np.all(np.diff(data.timestamp[rows]) >= 0)
        by_time[u] = data.item[rows]
    n_padded = n_full = 0
    for u, p, hist, mask in zip(got["user"], got["seq_pos"], got["history"], got["history_mask"]):
        earlier = by_time[u][max(0, p - L) : p]
        n = len(earlier)
        assert np.array_equal(mask, np.arange(L) >= L - n)
        assert np.array_equal(hist[L - n :], earlier) and np.all(hist[: L - n] == 0)
        n_padded += n < L
        n_full += n == L
    assert n_padded > 0 and n_full > 0  # both cases were exercised


def test_negatives_follow_the_sampler_and_logq_matches(data):
    got = cat(list(make(data, negative_sampler="popularity", num_negatives=16)))
    sampler = PopularitySampler(data.item_popularity, 0.75)
    assert got["neg_items"].shape == (1000, 16)
    assert np.all(data.item_popularity[got["neg_items"]] > 0)
    np.testing.assert_allclose(got["neg_logq"], sampler.log_prob(got["neg_items"]), rtol=1e-6)
    np.testing.assert_allclose(got["pos_logq"], sampler.log_prob(got["item"]), rtol=1e-6)
    uniform = cat(list(make(data, negative_sampler="uniform")))
    np.testing.assert_allclose(uniform["neg_logq"], -np.log(60), rtol=1e-6)
    assert isinstance(make(data).sampler, UniformSampler)


def test_ranks_and_workers_split_each_global_batch(data, monkeypatch):
    """world_size=2 x 2 workers: the 4 parts are disjoint, their union is the data set, and rank 0 then
    rank 1 of each global batch (rows and negatives) equals the world_size=1 batch."""
    whole = list(make(data))
    parts: dict[tuple[int, int], list[dict[str, torch.Tensor]]] = {}
    for rank in (0, 1):
        for worker in (0, 1):
            info = SimpleNamespace(id=worker, num_workers=2)
            monkeypatch.setattr(streaming, "get_worker_info", lambda info=info: info)
            parts[rank, worker] = list(make(data, rank=rank, world_size=2))
    keys = {p: set(row_keys(*(cat(b)[c] for c in ("user", "seq_pos"))).tolist()) for p, b in parts.items()}
    assert sum(len(k) for k in keys.values()) == data.n_rows == len(set().union(*keys.values()))
    for k, batch in enumerate(whole):
        w, j = k % 2, k // 2
        for name, value in batch.items():
            halves = torch.cat([parts[0, w][j][name], parts[1, w][j][name]])
            assert torch.equal(halves, value) or torch.allclose(halves, value, equal_nan=True), name


def test_a_kept_last_batch_is_split_evenly_across_ranks(data):
    sizes = [
        [len(b["user"]) for b in make(data, global_batch_size=128, drop_last=False, rank=r, world_size=4)]
        for r in range(4)
    ]
    assert [s[-1] for s in sizes] == [26, 26, 26, 26] and all(s[0] == 32 for s in sizes)


def test_bad_settings_raise_naming_the_value(data):
    with pytest.raises(ValueError, match="global_batch_size"):
        make(data, global_batch_size=100, world_size=3)
    with pytest.raises(ValueError, match="rank"):
        make(data, rank=2, world_size=2)
    with pytest.raises(ValueError, match="negative_sampler"):
        make(data, negative_sampler="zipf")
    with pytest.raises(ValueError, match="last global batch has 1 rows"):  # 1000 = 3 * 333 + 1
        make(data, global_batch_size=333, drop_last=False, world_size=3)


def test_a_start_near_the_end_reads_only_the_windows_it_needs(data, monkeypatch):
    stream = make(data, global_batch_size=50, buffer_blocks=2)
    reads = []
    original = TrainStream._read_group
    monkeypatch.setattr(
        TrainStream, "_read_group", lambda self, s, g: reads.append((s, g)) or original(self, s, g)
    )
    stream.set_position(0, len(stream) - 1)
    assert len(list(stream)) == 1
    assert len(reads) <= 2 * 2  # one or two windows of 2 row groups, not the 21 row groups of the epoch


def test_side_arrays_that_disagree_with_the_shards_raise(tmp_path):
    data = write_tiny_dataset(tmp_path, shard_rows=(100, 100))
    items = np.load(tmp_path / "side" / "history_items.npy")
    np.save(tmp_path / "side" / "history_items.npy", np.roll(items, 1))  # every sequence shifted by one
    with pytest.raises(DataError, match="not at that position"):
        next(iter(make(data, global_batch_size=50)))
