"""`history_mode="all"`: each example carries the user's latest training items except its own, right-aligned."""

import numpy as np
import pytest

from data_modules.streaming import TrainStream, _latest_without
from tests.helpers.tiny_dataset import write_tiny_dataset

pytestmark = pytest.mark.unit


def test_latest_without_by_hand():
    # a user with 5 items (positions 0..4), L = 3
    pos = _latest_without(np.array([5, 5, 5, 2]), np.array([4, 2, 0, 1]), 3)
    assert pos.tolist() == [[1, 2, 3], [1, 3, 4], [2, 3, 4], [-1, -1, 0]]


def test_all_mode_matches_brute_force(tmp_path):
    ds = write_tiny_dataset(tmp_path)
    L = 4
    stream = TrainStream(ds.root, global_batch_size=50, history_len=L, history_mode="all", seed=3)
    off = np.load(ds.root / "side" / "history_offsets.npy")
    items = np.load(ds.root / "side" / "history_items.npy")
    seen = 0
    for batch in stream:
        for u, i, sp, h, m in zip(batch["user"].numpy(), batch["item"].numpy(), batch["seq_pos"].numpy(),
                                  batch["history"].numpy(), batch["history_mask"].numpy()):
            seq = list(items[off[u]:off[u + 1]])
            expected = (seq[:sp] + seq[sp + 1:])[-L:]
            assert seq[sp] == i
            assert list(h[m]) == expected and m.sum() == len(expected)
            assert not m[: L - len(expected)].any()  # padding on the left
            seen += 1
    assert seen == (stream.n_rows // 50) * 50
