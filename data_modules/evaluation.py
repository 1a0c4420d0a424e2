"""Full-ranking evaluation data: one example per user with held-out items, the history to condition on, and the
items already seen (to mask). Validation conditions on train; test conditions on train + valid (RecBole's protocol).
Where the prepared dataset stores sampled-evaluation negatives (data_modules/prepare/negatives.py), each user also
carries the candidates of every protocol: their held-out items plus the distinct negatives drawn for them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from data_modules.errors import DataError
from data_modules.integrity import check_shard, check_side, load_npy, read_parquet
from data_modules.prepare import negatives


def read_split(root: Path, manifest: dict, split: str, verify: bool = True) -> pd.DataFrame:
    """Every row of `split`, its shards checked against the manifest first (size; sha256 unless `verify=False`)."""
    frames = [read_parquet(check_shard(root, split, s, hash=verify)).to_pandas() for s in manifest["shards"][split]]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["user", "item", "rating", "timestamp"])


def _csr(users: np.ndarray, values: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Group `values` by `users`, keeping their given order inside a user (stable)."""
    order = np.argsort(users, kind="stable")
    counts = np.bincount(users, minlength=n_users)
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, values[order]


class RankingEvalSet(Dataset):
    """Users of one evaluation split (optionally only this rank's share).

    Each item is one user; `collate` builds the batch:
        user (B,) long; padding (B,) bool (rows that only even out batch counts across ranks); history (B, L) long + history_mask (B, L) bool (right-aligned, most recent last);
        seen_rows / seen_cols (nnz,) long: (batch row, item) pairs to mask before ranking;
        target_rows / target_cols (nnz,) long and target_ratings (nnz,) float: the held-out items;
        sampled_<protocol>_rows / _cols (nnz,) long: (batch row, item) candidates of each stored protocol (uni100 ...).
    """

    def __init__(self, root: str | Path, manifest: dict, split: str, history_len: int, rank: int = 0, world_size: int = 1,
                 verify: bool = True):
        if split not in ("valid", "test"):
            raise ValueError(f"split={split!r}: expected valid|test")
        root = Path(root)
        n_users = manifest["counts"]["users"]
        h_off, h_items = (load_npy(check_side(root, name, manifest["side"][name], hash=verify), mmap=False)
                          for name in ("history_offsets", "history_items"))
        target = read_split(root, manifest, split, verify)
        extra = read_split(root, manifest, "valid", verify) if split == "test" else None
        # sequence to condition on: train items (time order), then valid items (time order) for the test split
        seq_users = np.repeat(np.arange(len(h_off) - 1), np.diff(h_off))
        seq_items = h_items
        if extra is not None and len(extra):
            ex = extra.sort_values(["user", "timestamp"] if "timestamp" in extra else ["user"], kind="stable")
            seq_users = np.concatenate([seq_users, ex["user"].to_numpy()])
            seq_items = np.concatenate([seq_items, ex["item"].to_numpy().astype(np.int32)])
        self.seq_offsets, self.seq_items = _csr(seq_users, seq_items, n_users)
        tu = target["user"].to_numpy().astype(np.int64)
        self.tgt_offsets, self.tgt_items = _csr(tu, target["item"].to_numpy().astype(np.int64), n_users)
        rating = target["rating"].to_numpy(dtype=np.float32) if "rating" in target else np.full(len(target), np.nan, np.float32)
        _, self.tgt_ratings = _csr(tu, rating, n_users)
        self.sampled = {name: _negatives(root, entry, split, n_users, verify)
                        for name, entry in sorted(negatives.stored(manifest).items())}
        users = np.unique(tu)
        # Every rank gets the same number of users (hence of batches: ZeRO-3 runs collectives in each step, so a
        # rank with one batch fewer would hang the others). Padding rows are user -1: no targets, not counted.
        per_rank = -(-len(users) // world_size)
        mine = users[rank::world_size]
        self.users = np.concatenate([mine, np.full(per_rank - len(mine), -1, dtype=mine.dtype)])
        self.history_len = history_len

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, i: int) -> int:
        return int(self.users[i])

    def collate(self, users: list[int]) -> dict[str, torch.Tensor]:
        L = self.history_len
        hist = np.zeros((len(users), L), dtype=np.int64)
        mask = np.zeros((len(users), L), dtype=bool)
        seen_r, seen_c, tr, tc, trat = [], [], [], [], []
        sampled: dict[str, tuple[list, list]] = {name: ([], []) for name in self.sampled}
        padding = [u < 0 for u in users]
        users = [max(u, 0) for u in users]
        for row, u in enumerate(users):
            if padding[row]:
                continue
            seq = self.seq_items[self.seq_offsets[u]:self.seq_offsets[u + 1]]
            recent = seq[-L:]
            if len(recent):
                hist[row, L - len(recent):] = recent
                mask[row, L - len(recent):] = True
            seen = np.unique(seq)
            seen_r.append(np.full(len(seen), row)); seen_c.append(seen)  # noqa: E702
            t = slice(self.tgt_offsets[u], self.tgt_offsets[u + 1])
            tr.append(np.full(t.stop - t.start, row)); tc.append(self.tgt_items[t]); trat.append(self.tgt_ratings[t])  # noqa: E702
            for name, (n_off, neg_items) in self.sampled.items():
                cand = np.unique(np.concatenate([self.tgt_items[t], neg_items[n_off[u]:n_off[u + 1]]]))
                sampled[name][0].append(np.full(len(cand), row)); sampled[name][1].append(cand)  # noqa: E702
        cat = lambda xs, dt: torch.from_numpy(np.concatenate(xs).astype(dt)) if xs else torch.zeros(0, dtype=torch.long)  # noqa: E731
        return {
            "user": torch.tensor(users, dtype=torch.long),
            "padding": torch.tensor(padding, dtype=torch.bool),
            "history": torch.from_numpy(hist),
            "history_mask": torch.from_numpy(mask),
            "seen_rows": cat(seen_r, np.int64), "seen_cols": cat(seen_c, np.int64),
            "target_rows": cat(tr, np.int64), "target_cols": cat(tc, np.int64),
            "target_ratings": cat(trat, np.float32),
            **{f"sampled_{name}_{part}": cat(xs, np.int64) for name, (r, c) in sampled.items()
               for part, xs in (("rows", r), ("cols", c))},
        }


def _negatives(root: Path, entry: dict, split: str, n_users: int, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    """One protocol's negatives of `split` grouped by user: (offsets (n_users + 1,), items) (duplicates kept)."""
    if split not in entry:
        raise DataError(f"the manifest's negatives list no {split!r} file: re-run `fusionrec data prepare`", path=root)
    table = read_parquet(check_shard(root, f"negatives ({split})", entry[split], hash=verify))
    negs = table.column("negatives").combine_chunks()
    num = negs.type.list_size
    users = np.repeat(table.column("user").to_numpy().astype(np.int64), num)
    return _csr(users, negs.flatten().to_numpy().astype(np.int64), n_users)
