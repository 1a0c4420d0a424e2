"""Item / user text embedding caches: built sharded across ranks, stored on disk (frozen mode), reloaded on restart.

Encoding a catalog's text is the expensive part of a text source. Each rank encodes only its contiguous shard of
the entities (rank r: rows [r * m, (r + 1) * m), m = ceil(n / world)), the shards are gathered so every rank holds
the pooled vectors (n, H) in host memory, and the backbone never sees the whole catalog's text on one device.

Frozen mode: the vectors depend only on the model and the tokens, so each rank also writes its shard to
`<folder>/<key>/rows-<start>-<stop>.safetensors` (atomically). A restarted run — at any world size — loads the
files whose row ranges cover [0, n) instead of re-encoding. `key` hashes everything the vectors depend on (model
name, its config, pooling, max length, padding side, dtype, the token arrays).

Fine-tuning modes (lora / full): the vectors go stale as the backbone trains, so they are not stored; the module
rebuilds the cache every `cache_refresh_every` steps and at the start of every evaluation, and the cache serves
evaluation (the catalog is encoded once, sharded, not once per rank) and sampled negatives.

Ranks stay out of this module: collectives come in as two callables (gather a tensor from all ranks, stacked on a
new first dimension; a barrier), which the LightningModule takes from its strategy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from trainer.model.encoders.text import TextEncoder

log = logging.getLogger("fusionrec.text_cache")
Gather = Callable[[Tensor], Tensor]  # (m, H) on each rank -> (world, m, H) everywhere
_SHARD = re.compile(r"rows-(\d+)-(\d+)\.safetensors$")


def cache_key(enc: TextEncoder) -> str:
    """Hash of everything a frozen encoder's pooled vectors depend on."""
    h = hashlib.sha256()
    cfg = enc.backbone.config
    meta = {"model": str(getattr(cfg, "_name_or_path", "")), "config": cfg.to_diff_dict() if hasattr(cfg, "to_diff_dict") else {},
            "pooling": enc.pooling, "max_length": enc.max_length, "padding_side": enc.padding_side,
            "pad": enc.pad_token_id, "dtype": str(next(enc.backbone.parameters()).dtype), "version": 1}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    h.update(enc.token_offsets.numpy().tobytes())
    h.update(enc.token_ids.numpy().tobytes())
    return h.hexdigest()[:20]


class TextCacheStore:
    """One folder per cache key; one safetensors file per written row range."""

    def __init__(self, root: str | Path, key: str):
        self.folder = Path(root) / key

    def save(self, start: int, rows: Tensor) -> Path:
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"rows-{start}-{start + len(rows)}.safetensors"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            save_file({"vectors": rows.contiguous().float().cpu()}, str(tmp))
            os.replace(tmp, path)  # a crash mid-write never leaves a file that looks complete
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def load(self, n: int, hidden: int) -> Tensor | None:
        """The (n, hidden) vectors if the stored ranges cover [0, n) (from any world size), else None."""
        from safetensors.torch import load_file

        if not self.folder.is_dir():
            return None
        ranges = sorted((int(m[1]), int(m[2]), p) for p in self.folder.iterdir() if (m := _SHARD.match(p.name)))
        out, covered = torch.empty(n, hidden), 0
        for start, stop, path in ranges:
            if start > covered or stop <= covered:
                continue  # a gap (wait for a range starting at `covered`) or nothing new
            rows = load_file(str(path))["vectors"]
            if rows.shape != (stop - start, hidden):
                log.warning("ignoring %s: shape %s, expected (%d, %d)", path, tuple(rows.shape), stop - start, hidden)
                continue
            out[covered:stop] = rows[covered - start :]
            covered = stop
        return out if covered >= n else None


def shard_range(n: int, rank: int, world: int) -> tuple[int, int, int]:
    """(start, stop, m): rank's contiguous rows and the common shard length m = ceil(n / world)."""
    m = max(1, math.ceil(n / world))
    return min(rank * m, n), min((rank + 1) * m, n), m


def build_sharded(enc: TextEncoder, rank: int, world: int, gather: Gather, store: TextCacheStore | None = None) -> Tensor:
    """Encode this rank's shard, store it (if `store`), gather all shards, install and return the cache (n, H).

    Every rank encodes exactly m rows (the last shard is padded with repeats of its last row, dropped after the
    gather): equal backbone forwards on every rank, as ZeRO-3's collective weight gathers require, and equal
    shapes, as all-gather requires."""
    n = enc.num_entities
    start, stop, m = shard_range(n, rank, world)
    ids = torch.arange(start, start + m).clamp(max=max(n - 1, 0))
    before = enc.tokens_processed
    local = enc.encode_ids(ids, desc=f"{enc.name} cache rows [{start}, {stop}) of {n}")
    if store is not None and stop > start:
        store.save(start, local[: stop - start])
    full = local if world == 1 else gather(local.to(enc.proj.weight.device)).reshape(world * m, -1).cpu()
    enc.set_cache(full[:n])
    log.info("%s cache: rank %d encoded rows [%d, %d) of %d (%d tokens)%s", enc.name, rank, start, stop, n,
             enc.tokens_processed - before, f"; stored in {store.folder}" if store is not None else "")
    assert enc.cache is not None
    return enc.cache


def load_or_build(enc: TextEncoder, root: str | Path | None, rank: int, world: int, gather: Gather) -> Tensor:
    """Frozen mode: load the stored cache if every rank finds it complete, else build it sharded and store it.
    The decision is collective (a rank that misses files makes all ranks rebuild: nobody waits in a gather
    alone)."""
    store = TextCacheStore(root, cache_key(enc)) if root is not None else None
    loaded = store.load(enc.num_entities, enc.hidden_size) if store is not None else None
    have = torch.tensor([1.0 if loaded is not None else 0.0], device=enc.proj.weight.device)
    everyone = bool(gather(have).min() > 0) if world > 1 else loaded is not None
    if everyone and loaded is not None:
        enc.set_cache(loaded)
        log.info("%s cache: loaded %d vectors from %s (no re-encoding)", enc.name, enc.num_entities, store.folder)
        assert enc.cache is not None
        return enc.cache
    return build_sharded(enc, rank, world, gather, store)
