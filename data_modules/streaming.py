"""`TrainStream`: the training interactions of a prepared folder as a stream of per-rank batches.

The order of an epoch is a function of (seed, epoch) only, never of the world size or worker count:

1. The shards are cut into blocks (shard, row range): one per parquet row group, or `block_rows` rows.
   The blocks are permuted with rng(seed, epoch).
2. Consecutive runs of `buffer_blocks` blocks form windows; window w is read whole and its rows are
   permuted with rng(seed, epoch, w). The concatenated windows are the global stream of the epoch.
   Memory is bounded by one window; windows a process has no rows in are never read.
3. The stream is cut into global batches of `global_batch_size` rows. Rank r takes rows
   [r * b, (r + 1) * b) of each global batch, b = global_batch_size / world_size. DataLoader worker w of
   n yields the global batches start + w, start + w + n, ...: the order in which torch's DataLoader
   collects the outputs of iterable-dataset workers (round robin from worker 0), so the loader yields
   exactly global-batch order. `start` is the batch an iteration resumes at (`set_position`).
4. The negatives of global batch k come from rng(seed, epoch, k) drawn for the whole global batch;
   a rank advances that generator to its first row rather than drawing the rows before it.

Every rank (and worker) decodes the windows it has rows in, so with global batches smaller than a
window each process decodes the whole epoch: cheap for these narrow int columns, and the price of an
order that survives a change of world size on resume.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data_modules.errors import DataError
from data_modules.integrity import check_shard, check_side, load_npy, open_parquet
from data_modules.layout import MANIFEST, SIDE
from data_modules.manifest import load_manifest
from data_modules.sampling import NegativeSampler, build_sampler

COLUMNS = ("user", "item", "rating", "seq_pos")
# Third word of every rng seed: keeps the block order, window shuffles and negatives apart. Seeds are
# always 4 words long because numpy's SeedSequence pads shorter entropy with zeros ([1, 2] == [1, 2, 0]).
_ORDER, _WINDOW, _NEGATIVES = 0, 1, 2


def _rng_seed(seed: int, epoch: int, tag: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, epoch, tag, index])


class TrainStream(IterableDataset):
    """Per-rank training batches of a prepared dataset, in a world-size independent global order.

    Args:
        source: a prepared folder (its `train/*.parquet` shards, sorted by name) or a list of shard paths.
        global_batch_size: rows per global batch, summed over ranks; must divide by `world_size`.
        history_len: L, how many of the user's training items each row carries.
        history_mode: "before" — the items strictly before this one in time (matches time-ordered splits, where
            evaluation targets come after all history); "all" — the user's L latest training items except this
            one (matches random splits, where a held-out item is conditioned on the whole training history).
        num_negatives: N, sampled negative items per row.
        negative_sampler: "uniform", "popularity" (∝ item_popularity ** popularity_alpha) or a sampler.
        popularity_alpha: exponent of the popularity sampler.
        seed: fixes the order and the negatives of every epoch, 0 <= seed < 2**32.
        buffer_blocks: blocks per shuffle window (memory: one window of rows per process).
        block_rows: rows per block; None: one block per parquet row group.
        drop_last: drop the last partial global batch; if kept it is split as evenly as possible across
            ranks (ValueError when it has fewer rows than there are ranks).
        rank, world_size: this process's place; passed in, never read from torch.distributed.
        side_dir: folder of the side arrays; default `<source>/side` (required when `source` is a list).
        verify: when `source` is a prepared folder, its shards and side arrays are checked against the manifest
            as they are opened: size always, sha256 once per process unless False (data_modules/integrity.py).

    Yields dicts of tensors for b rows (b = global_batch_size / world_size, fewer in a kept last batch):
        user (b,) int64, item (b,) int64 (the positive), rating (b,) float32 (NaN = none),
        seq_pos (b,) int64 (index of the row in the user's training sequence),
        history (b, L) int64: the user's training items before this one, most recent at L-1, 0-padded left,
        history_mask (b, L) bool: True where history holds an item,
        neg_items (b, N) int64, neg_logq (b, N) float32: log sampling probability of each negative,
        pos_logq (b,) float32: log probability of the positive under the same sampler (logQ correction).
    Use it with `DataLoader(stream, batch_size=None, num_workers=...)`.
    """

    def __init__(
        self,
        source: str | Path | Sequence[str | Path],
        *,
        global_batch_size: int,
        history_len: int = 50,
        history_mode: Literal["before", "all"] = "before",
        num_negatives: int = 0,
        negative_sampler: Literal["uniform", "popularity"] | NegativeSampler = "uniform",
        popularity_alpha: float = 0.75,
        seed: int = 0,
        buffer_blocks: int = 16,
        block_rows: int | None = None,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        side_dir: str | Path | None = None,
        verify: bool = True,
    ):
        super().__init__()
        self._files: dict[int, pq.ParquetFile] = {}  # opened lazily, once per process
        self._side_arrays: dict[str, np.ndarray] = {}
        _check(global_batch_size > 0, "global_batch_size", global_batch_size, "> 0")
        _check(world_size > 0, "world_size", world_size, "> 0")
        _check(0 <= rank < world_size, "rank", rank, f"in [0, world_size={world_size})")
        _check(
            global_batch_size % world_size == 0,
            "global_batch_size",
            global_batch_size,
            f"divisible by world_size={world_size}",
        )
        _check(history_len >= 0, "history_len", history_len, ">= 0")
        _check(history_mode in ("before", "all"), "history_mode", history_mode, "'before' or 'all'")
        _check(num_negatives >= 0, "num_negatives", num_negatives, ">= 0")
        _check(0 <= seed < 2**32, "seed", seed, "in [0, 2**32)")
        _check(buffer_blocks > 0, "buffer_blocks", buffer_blocks, "> 0")
        _check(block_rows is None or block_rows > 0, "block_rows", block_rows, "> 0 or None")
        self._side_info: dict[str, dict] = {}  # side array -> its manifest entry (checked when first opened)
        self.verify = verify
        if isinstance(source, (str, Path)) and (Path(source) / MANIFEST).is_file():
            # the manifest is the list of shards (a stray file in train/ is not streamed), each checked before use
            manifest = load_manifest(source)
            self.shards = [str(check_shard(source, "train", s, hash=verify)) for s in manifest["shards"]["train"]]
            side_dir = Path(source) / SIDE if side_dir is None else side_dir
            if Path(side_dir) == Path(source) / SIDE:
                self._side_info = dict(manifest.get("side") or {})
        elif isinstance(source, (str, Path)):
            self.shards = sorted(str(p) for p in (Path(source) / "train").glob("*.parquet"))
            side_dir = Path(source) / SIDE if side_dir is None else side_dir
        else:
            self.shards = [str(p) for p in source]
        if not self.shards:
            raise ValueError(f"no training shards found in {source!r}")
        if side_dir is None:
            raise ValueError("side_dir is required when source is a list of shards")
        self.side_dir = Path(side_dir)
        self.global_batch_size, self.world_size, self.rank = global_batch_size, world_size, rank
        self.history_len, self.num_negatives, self.seed = history_len, num_negatives, seed
        self.history_mode = history_mode
        self.buffer_blocks, self.block_rows, self.drop_last = buffer_blocks, block_rows, drop_last

        self._rg_offsets = [_row_group_offsets(p) for p in self.shards]  # per shard (n_row_groups + 1,)
        self._blocks = _cut_blocks(self._rg_offsets, block_rows)  # (n_blocks, 3): shard, start, stop
        self.n_rows = int(sum(int(o[-1]) for o in self._rg_offsets))
        full, last = divmod(self.n_rows, global_batch_size)
        self.n_global_batches = full + (1 if last and not drop_last else 0)
        if last and not drop_last and last < world_size:
            raise ValueError(
                f"drop_last=False: the last global batch has {last} rows, fewer than "
                f"world_size={world_size}, so some rank would get an empty batch"
            )
        if isinstance(negative_sampler, str):
            negative_sampler = build_sampler(
                negative_sampler, self._side("item_popularity"), popularity_alpha
            )
        self.sampler = negative_sampler
        self.epoch, self.start_batch = 0, 0

    # -- position -----------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Iterate epoch `epoch` from its first global batch."""
        self.set_position(epoch, 0)

    def set_position(self, epoch: int, start_batch: int) -> None:
        """Iterate epoch `epoch` from global batch `start_batch` (0 <= start_batch <= n_global_batches)."""
        _check(0 <= epoch < 2**32, "epoch", epoch, "in [0, 2**32)")
        _check(
            0 <= start_batch <= self.n_global_batches,
            "start_batch",
            start_batch,
            f"in [0, {self.n_global_batches}]",
        )
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        """Batches this rank yields in a whole epoch, all workers together (the same on every rank)."""
        return self.n_global_batches

    def rank_rows(self, k: int) -> tuple[int, int]:
        """The [lo, hi) positions in the epoch's global stream that this rank takes from global batch k."""
        start = k * self.global_batch_size
        size = min(self.global_batch_size, self.n_rows - start)
        lo, hi = (self.rank * size) // self.world_size, ((self.rank + 1) * size) // self.world_size
        return start + lo, start + hi

    # -- iteration ----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch = self.epoch
        if self.start_batch + worker >= self.n_global_batches:
            return
        order, win_starts = self._plan(epoch)
        window: tuple[int, dict[str, np.ndarray]] = (-1, {})
        for k in range(self.start_batch + worker, self.n_global_batches, n_workers):
            lo, hi = self.rank_rows(k)
            pieces = []
            while lo < hi:  # a batch may straddle windows; windows only move forward
                w = int(np.searchsorted(win_starts, lo, side="right")) - 1
                if window[0] != w:
                    window = (w, self._read_window(epoch, w, order))
                end = min(hi, int(win_starts[w + 1]))
                pieces.append({c: a[lo - win_starts[w] : end - win_starts[w]] for c, a in window[1].items()})
                lo = end
            rows = {c: np.concatenate([p[c] for p in pieces]) for c in COLUMNS}
            yield self._make_batch(epoch, k, self.rank_rows(k)[0] - k * self.global_batch_size, rows)

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Block order (n_blocks,) of the epoch and the stream position where each window starts (n_windows + 1,)."""
        order = np.random.default_rng(_rng_seed(self.seed, epoch, _ORDER, 0)).permutation(len(self._blocks))
        sizes = self._blocks[order, 2] - self._blocks[order, 1]
        per_window = np.add.reduceat(sizes, np.arange(0, len(order), self.buffer_blocks))
        return order, np.concatenate([[0], np.cumsum(per_window)])

    def _read_window(self, epoch: int, w: int, order: np.ndarray) -> dict[str, np.ndarray]:
        """Rows of window w, shuffled: column -> (n_w,) array."""
        cache: dict[tuple[int, int], dict[str, np.ndarray]] = {}  # a row group read once per window
        parts: list[dict[str, np.ndarray]] = []
        for shard, start, stop in self._blocks[order[w * self.buffer_blocks : (w + 1) * self.buffer_blocks]]:
            offsets = self._rg_offsets[shard]
            first = int(np.searchsorted(offsets, start, side="right")) - 1
            last = int(np.searchsorted(offsets, stop, side="left"))
            for g in range(first, last):
                if (shard, g) not in cache:
                    cache[shard, g] = self._read_group(shard, g)
            groups = [cache[shard, g] for g in range(first, last)]
            cat = {c: np.concatenate([g[c] for g in groups]) for c in COLUMNS}
            parts.append({c: a[start - offsets[first] : stop - offsets[first]] for c, a in cat.items()})
        rows = {c: np.concatenate([p[c] for p in parts]) for c in COLUMNS}
        perm = np.random.default_rng(_rng_seed(self.seed, epoch, _WINDOW, w)).permutation(len(rows["user"]))
        return {c: a[perm] for c, a in rows.items()}

    def _read_group(self, shard: int, group: int) -> dict[str, np.ndarray]:
        if shard not in self._files:
            self._files[shard] = open_parquet(self.shards[shard])
        pf = self._files[shard]
        names = [c for c in COLUMNS if c in pf.schema_arrow.names]
        try:
            table = pf.read_row_group(group, columns=names, use_threads=False)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"row group {group} cannot be read ({e}): the shard is damaged; re-run "
                            "`fusionrec data prepare`", path=self.shards[shard]) from None
        out = {c: table.column(c).to_numpy() for c in names}
        if "rating" not in out:
            out["rating"] = np.full(table.num_rows, np.nan, dtype=np.float32)
        return out

    def _make_batch(
        self, epoch: int, k: int, offset: int, rows: dict[str, np.ndarray]
    ) -> dict[str, torch.Tensor]:
        """Tensors for rows `offset..offset+b` of global batch k (see the class docstring for shapes)."""
        user = rows["user"].astype(np.int64)
        item = rows["item"].astype(np.int64)
        seq_pos = rows["seq_pos"].astype(np.int64)
        b, L, N = len(user), self.history_len, self.num_negatives
        # History slot j (0..L-1) holds the item at sequence position seq_pos - L + j, if that is >= 0.
        offsets, items = self._side("history_offsets"), self._side("history_items")
        first = offsets[user]
        # The row itself sits at its seq_pos in the user's sequence; checking it costs one gather and
        # catches shards and side arrays that disagree before they turn into silently wrong histories.
        bad = (seq_pos >= offsets[user + 1] - first) | (
            items[np.minimum(first + seq_pos, len(items) - 1)] != item
        )
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"training row (user {user[i]}, item {item[i]}, seq_pos {seq_pos[i]}) is not at that position of "
                f"the user's sequence in {SIDE}/history_items (epoch {epoch}, global batch {k})",
                path=self.side_dir,
            )
        if self.history_mode == "before":
            pos = seq_pos[:, None] + np.arange(-L, 0)[None, :]  # (b, L)
        else:
            pos = _latest_without(offsets[user + 1] - first, seq_pos, L)
        mask = pos >= 0
        history = np.where(mask, items[np.where(mask, first[:, None] + pos, 0)], 0).astype(np.int64)
        bitgen = np.random.PCG64(_rng_seed(self.seed, epoch, _NEGATIVES, k))
        bitgen.advance(offset * N)  # skip the rows of ranks before this one: one draw per negative
        neg = self.sampler.sample(np.random.Generator(bitgen), (b, N))
        return {
            "user": torch.from_numpy(user),
            "item": torch.from_numpy(item),
            "rating": torch.from_numpy(rows["rating"].astype(np.float32)),
            "seq_pos": torch.from_numpy(seq_pos),
            "history": torch.from_numpy(history),
            "history_mask": torch.from_numpy(mask),
            "neg_items": torch.from_numpy(neg),
            "neg_logq": torch.from_numpy(self.sampler.log_prob(neg).astype(np.float32)),
            "pos_logq": torch.from_numpy(self.sampler.log_prob(item).astype(np.float32)),
        }

    # -- side arrays and pickling -------------------------------------------------------------------
    def _side(self, name: str) -> np.ndarray:
        """A side array, memory-mapped once per process."""
        if name not in self._side_arrays:
            if name in self._side_info:
                check_side(self.side_dir.parent, name, self._side_info[name], hash=self.verify)
            self._side_arrays[name] = load_npy(self.side_dir / f"{name}.npy")
        return self._side_arrays[name]

    def __getstate__(self) -> dict:
        # Workers started with spawn/forkserver reopen files and memory maps instead of copying them.
        state = dict(self.__dict__)
        state["_files"], state["_side_arrays"] = {}, {}
        return state


def _latest_without(length: np.ndarray, seq_pos: np.ndarray, L: int) -> np.ndarray:
    """(b, L) sequence positions of each user's L latest items, skipping the row's own position; -1 = padding.

    Takes the last L + 1 positions and drops the row's own one, or the oldest when the row is not among them.
    """
    window = length[:, None] - (L + 1) + np.arange(L + 1)[None, :]  # (b, L + 1), increasing
    own = window == seq_pos[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), 0)  # (b,)
    j = np.arange(L)[None, :]
    pos = np.take_along_axis(window, j + (j >= drop[:, None]), axis=1)
    return np.where(pos >= 0, pos, -1)


def _check(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _row_group_offsets(path: str) -> np.ndarray:
    """First row of each row group and the row count at the end: (n_row_groups + 1,) int64."""
    meta = open_parquet(path).metadata
    rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    return np.concatenate([[0], np.cumsum(rows, dtype=np.int64)]).astype(np.int64)


def _cut_blocks(rg_offsets: list[np.ndarray], block_rows: int | None) -> np.ndarray:
    """(n_blocks, 3) int64 rows of (shard, start, stop), in shard order; empty blocks are left out."""
    blocks = []
    for shard, offsets in enumerate(rg_offsets):
        if block_rows is None:
            starts, stops = offsets[:-1], offsets[1:]
        else:
            starts = np.arange(0, offsets[-1], block_rows, dtype=np.int64)
            stops = np.minimum(starts + block_rows, offsets[-1])
        keep = stops > starts
        blocks.append(np.stack([np.full(keep.sum(), shard), starts[keep], stops[keep]], axis=1))
    return np.concatenate(blocks).astype(np.int64)
