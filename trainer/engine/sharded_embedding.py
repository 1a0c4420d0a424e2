"""Id tables split row-wise across ranks, so a catalog too large for one rank trains on several.

`FusionModule(shard_id_tables=True)` under `ddp` replaces each id source's `nn.Embedding` (user and item ids) by a
`RowShardedEmbedding` once the towers are built: rank r keeps rows [r * ceil(N / W), (r + 1) * ceil(N / W)) of the
table, its gradients and its optimizer state, so each rank holds 1 / W of what a replicated table costs (weights +
gradients + two Adam moments = 4 x N x D x 4 bytes replicated). Lookups go through `collectives.sharded_lookup`
(every rank's ids gathered, rows filled by their owners, one all-reduce), as TorchRec's row-wise sharding does with
all-to-alls; DDP is told to leave these parameters alone (`_ddp_params_and_buffers_to_ignore`), and their gradients
are averaged in the lookup's backward instead, so training equals the replicated model's
(tests/distributed/test_sharded_ids.py). Checkpoints hold the whole table (gathered at save, sliced at load), so
they load at any world size and in `fusionrec export`. The rows are initialised as the replicated table would be,
from the same seed: the full table exists once, at build time, before its slice is kept.
Limits: ddp only (ZeRO partitions every parameter already); the graph source's node table stays replicated.
"""

from __future__ import annotations

from torch import Tensor, nn

from trainer.engine.collectives import sharded_lookup
from trainer.model.encoders.id import IdEmbedding


class RowShardedEmbedding(nn.Module):
    """This rank's rows of an (N, D) table: `forward(ids (...,)) -> (..., D)` for ids of any rank's rows.

    Args:
        full: the table's initial (N, D) weights; only rows [lo, hi) are kept.
        rank, world: this rank and the world size.
    """

    def __init__(self, full: Tensor, rank: int, world: int):
        super().__init__()
        n, d = full.shape
        per = -(-n // world)
        self.lo, self.hi = min(n, rank * per), min(n, (rank + 1) * per)
        self.num_embeddings, self.embedding_dim = n, d
        self.weight = nn.Parameter(full.detach()[self.lo:self.hi].clone())

    def forward(self, ids: Tensor) -> Tensor:
        return sharded_lookup(ids, self.weight, self.lo, self.hi)


def shard_id_tables(module: nn.Module, rank: int, world: int) -> list[str]:
    """Replaces every IdEmbedding's table below `module` by this rank's rows; returns the parameter names."""
    names = []
    for name, m in module.named_modules():
        if isinstance(m, IdEmbedding) and isinstance(m.embedding, nn.Embedding):
            m.embedding = RowShardedEmbedding(m.embedding.weight, rank, world)  # type: ignore[assignment]
            names.append(f"{name}.embedding.weight" if name else "embedding.weight")
    return names


def sharded_tables(module: nn.Module) -> dict[str, RowShardedEmbedding]:
    """{state-dict key of the weight: module} for every sharded table below `module`."""
    return {f"{name}.weight": m for name, m in module.named_modules() if isinstance(m, RowShardedEmbedding)}


KEY = "sharded_id_tables"  # checkpoint entry: {state-dict key: {"rows": N, "optimizer_entries": [[opt, index], ...]}}


def gather_into_checkpoint(module: nn.Module, checkpoint: dict, optimizers: list) -> None:
    """At save (on every rank, as Lightning dumps a checkpoint): whole tables, and the whole Adam moments of their
    rows, replace this rank's slices, so the file rank 0 writes holds every rank's rows."""
    from trainer.engine.collectives import gather_shards

    tables = sharded_tables(module)
    if not tables:
        return
    owner = {id(m.weight): key for key, m in tables.items()}
    entries: dict[str, list[list[int]]] = {key: [] for key in tables}
    for o, (opt, saved) in enumerate(zip(optimizers, checkpoint.get("optimizer_states", []))):
        order = [p for g in opt.param_groups for p in g["params"]]
        for i, p in enumerate(order):
            key = owner.get(id(p))
            if key is None or i not in saved["state"]:
                continue
            m = tables[key]
            saved["state"][i] = {k: gather_shards(v, m.num_embeddings) if isinstance(v, Tensor) and v.shape[:1] == m.weight.shape[:1]
                                 and v.dim() == 2 else v for k, v in saved["state"][i].items()}
            entries[key].append([o, i])
    for key, m in tables.items():
        checkpoint["state_dict"][key] = gather_shards(m.weight, m.num_embeddings)
    checkpoint[KEY] = {key: {"rows": tables[key].num_embeddings, "optimizer_entries": entries[key]} for key in tables}


def slice_from_checkpoint(module: nn.Module, checkpoint: dict) -> None:
    """At load, before the weights and optimizer states are restored: each sharded table (and its Adam moments)
    keeps this rank's rows of the whole table in the checkpoint."""
    tables = sharded_tables(module)
    if not tables:
        return
    saved = checkpoint.get(KEY, {})
    for key, m in tables.items():
        full = checkpoint["state_dict"].get(key)
        if full is None or full.shape[0] != m.num_embeddings:
            raise ValueError(f"checkpoint holds {None if full is None else tuple(full.shape)} for {key}; the sharded "
                             f"table has {m.num_embeddings} rows")
        checkpoint["state_dict"][key] = full[m.lo:m.hi]
        for o, i in saved.get(key, {}).get("optimizer_entries", []):
            st = checkpoint["optimizer_states"][o]["state"][i]
            st.update({k: v[m.lo:m.hi] for k, v in st.items() if isinstance(v, Tensor) and v.dim() == 2
                       and v.shape[0] == m.num_embeddings})
