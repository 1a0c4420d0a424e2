"""Build the two towers from a `ModelConfig` and a prepared dataset's side data (builders, not registries)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from data_modules.side import SideData
from trainer.model.config import LossConfig, ModelConfig
from trainer.model.encoders.graph import GraphEncoder
from trainer.model.encoders.id import IdEmbedding
from trainer.model.encoders.sequence import SequenceEncoder
from trainer.model.encoders.tabular import TabularEncoder
from trainer.model.encoders.text import USE_TEXT_CACHE, TextEncoder
from trainer.model.encoders.vector import VectorEncoder
from trainer.model.fusion import AttentionFusion, ConcatMLPFusion, GatedFusion
from trainer.model.losses import BCELoss, BPRLoss, MultiObjective, RatingMSELoss, SampledSoftmaxLoss
from trainer.model.towers import Tower, TwoTower

log = logging.getLogger("fusionrec.model")
# Side arrays are read-only memory maps; the model gets private copies (np.array), because tensors sharing
# read-only memory crash when DDP broadcasts buffers into them.


def build_two_tower(cfg: ModelConfig, side: SideData, history_len: int = 50) -> TwoTower:
    """User tower: id, tabular, text, vector, sequence, graph; item tower: id, tabular, text, vector, graph — each
    only when both asked for in `cfg.sources` and present in the data (a skipped source is logged, never silent)."""
    want_item = set(cfg.sources)
    want_user = set(cfg.user_sources if cfg.user_sources is not None else cfg.sources)
    want = want_item | want_user
    d = cfg.dim
    users: dict[str, nn.Module] = {}
    items: dict[str, nn.Module] = {}
    item_ids = IdEmbedding(side.n_items, d, name="id")
    if "id" in want_user:
        users["id"] = IdEmbedding(side.n_users, d, name="id")
    if "id" in want_item:
        items["id"] = item_ids
    if "tabular" in want:
        for ent, out, on in (("user", users, "tabular" in want_user), ("item", items, "tabular" in want_item)):
            if not on:
                continue
            enc = _tabular(side, ent, d, trained=trained_users(side) if ent == "user" else None)
            if enc is not None:
                out["tabular"] = enc
            else:
                log.info("no %s fields in the data: %s tower has no tabular source", ent, ent)
    if "text" in want:
        t = cfg.text
        for ent, out, on in (("item", items, "text" in want_item), ("user", users, t.user_text and "text" in want_user)):
            info = side.text_info(ent)
            if not on:
                continue
            if info is None:
                log.info("no %s text in the data (prepare with text.tokenizer and a template): skipped", ent)
                continue
            out["text"] = TextEncoder(
                t.model, np.array(side.array(f"{ent}_text_offsets")), np.array(side.array(f"{ent}_text_ids")), d,
                pooling=t.pooling, mode=t.mode, lora_r=t.lora_r, lora_alpha=t.lora_alpha,
                lora_target_modules=t.lora_target_modules, gradient_checkpointing=t.gradient_checkpointing,
                max_length=t.max_length, pad_token_id=info.get("pad_token_id"), padding_side=t.padding_side, dtype=t.dtype,
                length_buckets=t.length_buckets, name=f"{ent} text")
    if "vector" in want:
        for ent, out, on in (("user", users, "vector" in want_user), ("item", items, "vector" in want_item)):
            if on and (enc := _vector(cfg, side, ent)) is not None:
                out["vector"] = enc
    sequence = None
    if "sequence" in want_user:
        s = cfg.sequence
        # item_tower: the encoder is given the item tower once it exists (below); id: the item id table
        sequence = SequenceEncoder(item_ids if s.item_repr == "id" else _Deferred(d), d, n_layers=s.layers,
                                   n_heads=s.heads, max_len=history_len, dropout=s.dropout, name="sequence")
        users["sequence"] = sequence
    graph = None
    if "graph" in want:
        g = cfg.graph
        tu, ti = side.train_pairs
        social = np.array(side.array("graph_social")) if g.social and side.has("graph_social") else None
        kg = np.array(side.array("graph_kg")) if g.kg and side.has("graph_kg") else None
        seed = g.sample_seed
        if g.fanouts and seed is None:  # drawn only when sampling, so full-propagation runs keep their init stream
            seed = int(torch.randint(2**62, (1,)))
        graph = GraphEncoder(side.n_users, side.n_items, tu, ti, d, n_layers=g.layers, social=social, kg=kg,
                             fanouts=g.fanouts, sample_seed=seed or 0)
        if "graph" in want_user:
            users["graph"] = graph.user_view()
        if "graph" in want_item:
            items["graph"] = graph.item_view()
        log.info("graph source: %d nodes (social edges: %s, kg edges: %s; %s)", graph.n_nodes,
                 0 if social is None else len(social), 0 if kg is None else len(kg),
                 f"sampled, fanouts {g.fanouts}" if g.fanouts else "full propagation")
    if not users or not items:
        raise ValueError(f"model.sources={cfg.sources} leaves a tower empty (user: {list(users)}, item: {list(items)})")
    log.info("user tower sources: %s; item tower sources: %s; fusion: %s", list(users), list(items), cfg.fusion)
    item_tower = Tower(items, _fusion(cfg, items))
    if sequence is not None and cfg.sequence.item_repr == "item_tower":
        sequence.item_embedding = ItemTowerView(item_tower)
        log.info("sequence source: history items represented by the item tower (%s)", list(items))
    return TwoTower(Tower(users, _fusion(cfg, users)), item_tower, side.n_items, graph=graph)


class ItemTowerView(nn.Module):
    """The item tower as a source encoder of history items: `forward(ids (M,), ctx) -> (M, D)` fused vectors,
    so a sequence over items speaks the item tower's language (text, attributes, ids), as text-based
    sequential recommenders (UniSRec, RecFormer) represent items by their text."""

    def __init__(self, tower: Tower):
        super().__init__()
        self.tower = tower
        self.out_dim = tower.out_dim

    def forward(self, ids: Tensor, ctx: Mapping[str, Any] | None = None) -> Tensor:
        # history items are many (B x L): their text always comes from the cache (live only for positives)
        return self.tower.forward_unique(ids, {**(ctx or {}), USE_TEXT_CACHE: True})[0]


class _Deferred(nn.Module):
    """Placeholder with the item tower's size until the tower is built (replaced in build_two_tower)."""

    def __init__(self, dim: int):
        super().__init__()
        self.out_dim = dim


def trained_users(side: SideData) -> np.ndarray:
    """(n_users,) bool: users with training interactions, the only ones training looks up. (Items are not
    narrowed so: sampled negatives reach items without training interactions too.)"""
    counts = np.diff(np.asarray(side.array("history_offsets")))
    out = np.zeros(side.n_users, dtype=bool)
    out[: len(counts)] = counts[: side.n_users] > 0
    return out


def _tabular(side: SideData, ent: str, d: int, trained: np.ndarray | None = None) -> TabularEncoder | None:
    f = side.fields(f"{ent}s")
    cat = np.array(side.array(f"{ent}_cat")) if side.has(f"{ent}_cat") else None
    num = np.array(side.array(f"{ent}_num")) if side.has(f"{ent}_num") else None
    multi = {m["name"]: (np.array(side.array(f"{ent}_multi_{m['name']}_offsets")),
                         np.array(side.array(f"{ent}_multi_{m['name']}_values")), m["cardinality"])
             for m in f.get("multi_categorical", [])}
    if cat is None and num is None and not multi:
        return None
    cards = [c["cardinality"] for c in f.get("categorical", [])]
    return TabularEncoder(cat, cards, num, multi, d, name="tabular", trained=trained)


def _vector(cfg: ModelConfig, side: SideData, ent: str) -> VectorEncoder | None:
    """The precomputed `ent` vectors (prepare's `vectors:` section) projected to `cfg.dim`, or None (logged)."""
    info = side.vector_info(ent)
    if info is None:
        log.info("no %s vectors in the data (prepare with a vectors.%s file): skipped", ent, ent)
        return None
    v = cfg.vector
    log.info("%s vector source: %d-d vectors for %d of %d %ss (the others declared missing)", ent, info["dim"],
             info["matched"], info["matched"] + info["missing"], ent)
    return VectorEncoder(np.array(side.array(f"{ent}_vectors")), np.array(side.array(f"{ent}_vector_mask")), cfg.dim,
                         hidden=v.hidden, dropout=v.dropout, center=v.center,
                         normalize_input=v.normalize_input, name=f"{ent} vector")


def _fusion(cfg: ModelConfig, encoders: dict[str, nn.Module]) -> nn.Module:
    dims = {name: int(enc.out_dim) for name, enc in encoders.items()}
    drop = {k: v for k, v in cfg.source_dropout.items() if k in dims}
    if cfg.fusion == "gated":
        return GatedFusion(dims, cfg.dim, source_dropout=drop)
    if cfg.fusion == "attention":
        return AttentionFusion(dims, cfg.dim, source_dropout=drop)
    return ConcatMLPFusion(dims, cfg.dim, source_dropout=drop)


def build_objective(cfg: LossConfig) -> MultiObjective:
    losses: dict[str, nn.Module] = {}
    for name in cfg.weights:
        if name == "softmax":
            losses[name] = SampledSoftmaxLoss(temperature=cfg.temperature, logq_correction=cfg.logq_correction)
        elif name == "bpr":
            losses[name] = BPRLoss()
        elif name == "bce":
            losses[name] = BCELoss()
        else:
            losses[name] = RatingMSELoss()
    return MultiObjective(losses, cfg.weights)
