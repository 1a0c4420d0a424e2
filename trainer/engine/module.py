"""The LightningModule: two fused towers trained on streamed batches, evaluated by full ranking over all items.

Ranks stay out of the towers: this module only asks the strategy to sum metric states across processes.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from data_modules.prepare.negatives import stored as stored_negatives
from data_modules.side import SideData
from trainer.engine import sharded_embedding
from trainer.engine.backbone_weights import restore_frozen_backbones, strip_frozen_backbones
from trainer.engine.collectives import gather_rows
from trainer.engine.dataset_guard import KEY as DATASET_KEY
from trainer.engine.dataset_guard import check_dataset, dataset_identity
from trainer.engine.evaluator import EvalConfig, SampledEval, full_ranking_top
from trainer.engine.init_from import init_from_checkpoint
from trainer.engine.metrics import RankingAccumulator, RatingAccumulator
from trainer.engine.optim import OptimConfig, param_groups, warmup_cosine
from trainer.engine.text_cache import build_sharded, load_or_build
from trainer.model.builder import ItemTowerView, build_objective, build_two_tower, trained_users
from trainer.model.config import LossConfig, ModelConfig
from trainer.model.encoders.text import USE_TEXT_CACHE, TextEncoder
from trainer.model.losses import Scores, mixed_log_q
from trainer.model.rating import RatingHead

log = logging.getLogger("fusionrec.module")


def _as(cls: type, value: Any) -> Any:
    """Accept a dataclass or its dict form (checkpoints store plain dicts, so they load with weights_only)."""
    if isinstance(value, cls):
        return value
    return cls(**dict(value or {}))


class FusionModule(pl.LightningModule):
    init_from: str | None = None
    """A checkpoint whose weights the towers start from once built (`fusionrec fit --init_from`, set by the CLI;
    trainer/engine/init_from.py): trained on this dataset or one it extends; a run-time choice, not saved."""

    """Args:
        model: which sources, fusion head, sizes (trainer/model/config.py).
        loss: objectives and weights.
        optim: learning rates (separate for the text backbone), weight decay, warmup + cosine.
        metrics_k: cut-offs K for Recall / NDCG / MRR / Hit / Precision @K.
        monitor_k: K whose NDCG is reported as `val/ndcg` for checkpoint selection and early stopping.
        predict_top_k: items per user written by `fusionrec predict`.
        eval_item_batch: items per chunk when encoding the whole catalog for evaluation.
        cold_start_eval: rank only items without training interactions (the candidates of a cold-start split).
        evaluation: block-wise full ranking (`block_items`) and the sampled-negative protocols (trainer/engine/
            evaluator.py EvalConfig).
        allow_dataset_change: load a checkpoint trained on a different prepared dataset (trainer/engine/
            dataset_guard.py); off by default: a changed split could leak test items.
    """

    def __init__(self, model: ModelConfig | None = None, loss: LossConfig | None = None, optim: OptimConfig | None = None,
                 metrics_k: list[int] | None = None, monitor_k: int = 10, predict_top_k: int = 10, eval_item_batch: int = 4096,
                 cold_start_eval: bool = False, allow_dataset_change: bool = False, shard_id_tables: bool = False,
                 evaluation: EvalConfig | None = None):
        super().__init__()
        self.model_cfg = _as(ModelConfig, model)
        self.loss_cfg = _as(LossConfig, loss)
        self.optim_cfg = _as(OptimConfig, optim)
        self.metrics_k = list(metrics_k or [10, 20])
        if monitor_k not in self.metrics_k:
            raise ValueError(f"monitor_k={monitor_k} must be one of metrics_k={self.metrics_k}")
        self.monitor_k, self.predict_top_k, self.eval_item_batch = monitor_k, predict_top_k, eval_item_batch
        self.cold_start_eval = cold_start_eval
        self.eval_cfg = _as(EvalConfig, evaluation)
        self.allow_dataset_change = allow_dataset_change  # a run-time choice, not a hyper-parameter of the model
        self.shard_id_tables = shard_id_tables  # id tables row-sharded over ddp ranks: trainer/engine/sharded_embedding.py
        self.save_hyperparameters({"model": asdict(self.model_cfg), "loss": asdict(self.loss_cfg), "optim": asdict(self.optim_cfg),
                                   "metrics_k": self.metrics_k, "monitor_k": monitor_k, "predict_top_k": predict_top_k,
                                   "eval_item_batch": eval_item_batch, "cold_start_eval": cold_start_eval,
                                   "evaluation": asdict(self.eval_cfg)})
        self.towers = None
        self.rating_head: RatingHead | None = None  # built with the towers when a rating objective is used
        self.objective = build_objective(self.loss_cfg)
        self.ranking = RankingAccumulator(self.metrics_k)
        self.rating = RatingAccumulator()
        self.sampled = SampledEval([], self.metrics_k)  # protocols set per evaluation from the dataset (_start_eval)
        self._item_table: Tensor | None = None
        self._eval_ctx: dict[str, Any] = {}

    # -- model ----------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Built from the data module's side data (catalog size, fields, token ids, graphs) once it is set up."""
        if self.towers is not None:
            return
        dm = self.trainer.datamodule
        self.build_towers(dm.side, dm.hparams.history_len)
        if self.init_from:  # before anything wraps or shards the tables: they grow for new users / items here
            init_from_checkpoint(self, self.init_from, dm.side.manifest, dm.dataset_dir,
                                 self.allow_dataset_change)
        if self.shard_id_tables and self.trainer.world_size > 1:
            if type(self.trainer.strategy).__name__ != "DDPStrategy":
                raise ValueError(f"model.shard_id_tables needs strategy_name ddp, not {type(self.trainer.strategy).__name__}"
                                 " (ZeRO partitions every parameter already)")
            names = sharded_embedding.shard_id_tables(self, self.trainer.global_rank, self.trainer.world_size)
            self._ddp_params_and_buffers_to_ignore = names  # their gradients are averaged in the sharded lookup

    def build_towers(self, side: SideData, history_len: int) -> None:
        """The towers and side buffers for a prepared dataset, without a trainer (used by `fusionrec export`)."""
        self.towers = build_two_tower(self.model_cfg, side, history_len=history_len)
        self._text_encoders = [m for m in self.towers.modules() if isinstance(m, TextEncoder)]
        self._cache_step = -1  # global step at which the fine-tuning caches were last rebuilt
        self._history_from_cache = any(isinstance(m, ItemTowerView) for m in self.towers.modules())
        # In-batch negatives are the batch's positives, drawn in proportion to training popularity: that is their
        # q for logQ correction (the batch's own `pos_logq` is the *sampler's* probability, uniform by default).
        pop = torch.as_tensor(np.array(side.array("item_popularity")), dtype=torch.float64)
        self.register_buffer("item_log_pop", torch.log(pop.clamp(min=1) / pop.sum()).float(), persistent=False)
        self.register_buffer("item_cold", pop == 0, persistent=False)
        # users without training interactions (a cold_user split's held-out ones): no trained id row, empty history;
        # their graph node is untrained too unless social links tie it to trained users
        self.register_buffer("user_cold", torch.from_numpy(~trained_users(side)), persistent=False)
        graph = self.towers.graph
        isolated = graph.isolated_users() if graph is not None else torch.ones(side.n_users, dtype=torch.bool)
        self.register_buffer("user_isolated", isolated, persistent=False)
        if "mse" in self.loss_cfg.weights:  # ratings are predicted by a head over the towers' score
            stats = side.manifest.get("stats") or {}
            mean = stats.get("train_rating_mean", stats.get("rating_mean")) or 0.0
            lo_hi = ((side.manifest.get("config") or {}).get("clean") or {}).get("rating_range")
            self.rating_head = RatingHead(side.n_users, side.n_items, global_mean=float(mean), rating_range=lo_hi)

    def _vectors(self, out: tuple[Tensor, Tensor | None]) -> tuple[Tensor, Tensor | None]:
        v, w = out
        return (F.normalize(v, dim=-1) if self.model_cfg.normalize else v), w

    # -- checkpoints know their dataset ------------------------------------------------------------------
    def _dataset(self) -> dict[str, Any] | None:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        side = getattr(dm, "side", None)
        return dataset_identity(side.manifest, dm.dataset_dir) if side is not None else None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        current = self._dataset()
        if current is not None:
            checkpoint[DATASET_KEY] = current
        # frozen text-backbone weights are rebuilt from their source on load (trainer/engine/backbone_weights.py)
        strip_frozen_backbones(self, checkpoint, self._trainer.strategy if self._trainer is not None else None)
        sharded_embedding.gather_into_checkpoint(self, checkpoint, self._trainer.optimizers if self._trainer is not None else [])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        current = self._dataset()
        path = getattr(self._trainer, "ckpt_path", None) or "(loaded checkpoint)"
        if current is not None:
            check_dataset(checkpoint.get(DATASET_KEY), current, str(path), self.allow_dataset_change)
        restore_frozen_backbones(self, checkpoint, str(path))
        sharded_embedding.slice_from_checkpoint(self, checkpoint)

    # -- training ---------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        # in training the cache serves only sampled negatives: without them there is nothing to refresh it for
        self._text_caches(training=True, negatives="neg_items" in batch and batch["neg_items"].numel() > 0)
        t = self.towers
        ctx = t.context(batch)
        user, ugates = self._vectors(t.encode_users(batch["user"], ctx))
        if self.loss_cfg.full_catalog:
            return self._full_catalog_step(batch, ctx, user, ugates)
        pos, igates = self._vectors(t.encode_items(batch["item"], ctx))
        neg = None
        if "neg_items" in batch and batch["neg_items"].numel():
            b, n = batch["neg_items"].shape
            neg_ctx = {**ctx, USE_TEXT_CACHE: self.model_cfg.text.cache_negatives}
            neg = self._vectors(t.item.forward_unique(batch["neg_items"].reshape(-1), neg_ctx))[0].view(b, n, -1)
        # only the softmax reads the (B, C) in-batch scores: BPR / BCE / MSE alone skip that matmul and the gather
        in_batch, candidates = "softmax" in self.loss_cfg.weights, None
        if in_batch:
            candidates, batch = global_candidates(pos, batch, self.item_log_pop)
        rating_pred = self._rating(batch["user"], batch["item"], (user * pos).sum(-1))
        scores = Scores.from_vectors(user, pos, neg, batch, rating_pred=rating_pred, in_batch=in_batch,
                                     candidates=candidates)
        return self._log_step(self.objective(scores), batch, ugates, igates)

    def _full_catalog_step(self, batch: dict[str, Tensor], ctx: dict[str, Any], user: Tensor,
                           ugates: Tensor | None) -> Tensor:
        """`loss.full_catalog`: every item encoded (with gradients) and scored; the same at any world size, since
        each rank scores its rows against the whole catalog and nothing is gathered."""
        t = self.towers
        items, gates = self._vectors(t.encode_items(torch.arange(t.n_items, device=user.device), ctx))
        pos = items[batch["item"]]
        rating_pred = self._rating(batch["user"], batch["item"], (user * pos).sum(-1))
        scores = Scores(pos=(user * pos).sum(-1), pos_items=batch["item"], catalog=user @ items.T,
                        rating=batch.get("rating"), rating_pred=rating_pred)
        igates = None if gates is None else gates[batch["item"]]
        return self._log_step(self.objective(scores), batch, ugates, igates)

    def _log_step(self, objective: tuple[Tensor, dict[str, Tensor]], batch: dict[str, Tensor],
                  ugates: Tensor | None, igates: Tensor | None) -> Tensor:
        total, terms = objective
        t = self.towers
        bs = batch["user"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=bs)
        for name, value in terms.items():
            self.log(f"train/loss_{name}", value, batch_size=bs)
        for tower, gates, names in (("user", ugates, t.user.names), ("item", igates, t.item.names)):
            if gates is not None:
                for i, name in enumerate(names):
                    self.log(f"gates/{tower}_{name}", gates[:, i].mean(), on_step=False, on_epoch=True, batch_size=bs)
        return total

    def text_counters(self) -> dict[str, float]:
        """Running totals of the text backbones: real tokens, token slots (pads included), model FLOPs (read per
        step by trainer.engine.callbacks.TrainingMonitor)."""
        encs = self._text_encoders if self.towers is not None else []
        return {"tokens": float(sum(e.tokens_processed for e in encs)), "slots": float(sum(e.tokens_padded for e in encs)),
                "flops": float(sum(e.flops_processed for e in encs))}

    def _text_caches(self, training: bool, negatives: bool = True) -> None:
        """Build the text caches that are due, sharded across ranks (trainer/engine/text_cache.py). Frozen: once, loaded
        from `text.cache_dir` when stored there. lora / full: at each evaluation's first step, and every
        `cache_refresh_every` steps in training. Called inside steps (the strategy's forward: under ZeRO-3 that is
        where the backbone's weights can be gathered); every rank calls it at the same steps."""
        if not self._text_encoders:
            return
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)
        gather = self.all_gather
        every = self.model_cfg.text.cache_refresh_every
        for enc in self._text_encoders:
            if enc.mode == "frozen":
                if enc.cache is None:
                    load_or_build(enc, self._text_cache_dir(), rank, world, gather)
            elif (not training or (negatives and every and self.global_step % every == 0 and self._cache_step != self.global_step)
                  or (enc.cache is None and self._history_from_cache)):
                # history items read through the item tower always take the cache (B x L items per step, no
                # gradients to the backbone): build it before the first step rather than run them live
                build_sharded(enc, rank, world, gather)
        if training and every:
            self._cache_step = self.global_step

    def _text_cache_dir(self) -> str | None:
        if self.model_cfg.text.cache_dir:
            return self.model_cfg.text.cache_dir
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return str(dm.dataset_dir / "text_cache") if dm is not None and hasattr(dm, "dataset_dir") else None

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(param_groups(self, self.optim_cfg, [e.backbone for e in self._text_encoders]))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = warmup_cosine(opt, min(self.optim_cfg.warmup_steps, total // 2), total, self.optim_cfg.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- evaluation ---------------------------------------------------------------------------------------
    def _start_eval(self) -> None:
        self._item_table = None  # encoded by the first step, see _encode_catalog
        self._eval_ctx = {}
        self.ranking.reset()
        self.rating.reset()
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        manifest = dm.side.manifest if getattr(dm, "side", None) is not None else {}
        self.sampled = SampledEval(self.eval_cfg.protocols(stored_negatives(manifest), str(getattr(dm, "dataset_dir", ""))),
                                   self.metrics_k)

    def _encode_catalog(self) -> None:
        """Encode the whole catalog once per evaluation (cost grows with items, not items x users). Done in the
        first step, not at epoch start: steps run inside the strategy's forward, where ZeRO-3 gathers partitioned
        weights (the graph source reads its embedding weight directly, outside any submodule's forward)."""
        if self._item_table is None:
            self._text_caches(training=False)
            with torch.no_grad():
                self._eval_ctx = self.towers.context()
                self._item_table = self._all_items(self._eval_ctx)

    def _all_items(self, ctx: dict[str, Any]) -> Tensor:
        """(n_items, D) in chunks. Items without training interactions (cold start) have no learned id or graph
        vector: those sources are declared missing, so the fusion head uses text and attributes alone."""
        tower = self.towers.item
        learned = torch.tensor([n in ("id", "graph") for n in tower.names], device=self.device)
        out = []
        for start in range(0, self.towers.n_items, self.eval_item_batch):
            ids = torch.arange(start, min(start + self.eval_item_batch, self.towers.n_items), device=self.device)
            missing = self.item_cold[ids].unsqueeze(1) & learned.unsqueeze(0) if learned.any() else None
            out.append(self._vectors(tower(ids, ctx, missing))[0])
        return torch.cat(out)

    def user_missing(self, users: Tensor) -> Tensor:
        """(B, S) bool: the user tower's sources that users (B,) without training interactions lack — the id (its row
        was never trained), the sequence (empty history) and the graph when their node has no edge at all — so
        the fusion head encodes a cold user from attributes, text and social links alone (as cold items)."""
        cold = self.user_cold[users]
        none = torch.zeros_like(cold)
        by_source = {"id": cold, "sequence": cold, "graph": cold & self.user_isolated[users]}
        return torch.stack([by_source.get(name, none) for name in self.towers.user.names], dim=1)

    def encode_eval_users(self, batch: dict[str, Tensor], ctx: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """Fused user vectors (B, D) and gates as evaluation, prediction and export compute them."""
        return self._vectors(self.towers.encode_users(batch["user"], ctx, self.user_missing(batch["user"])))

    def _eval_step(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        self._encode_catalog()
        ctx = {**self._eval_ctx, **batch}
        user, gates = self.encode_eval_users(batch, ctx)
        table = self._item_table  # (n_items, D); scores are ranked block by block: never a (B, n_items) copy
        rows, cols = batch["target_rows"], batch["target_cols"]
        if self.rating_head is not None:
            score = (user[rows] * table[cols]).sum(-1)
            self.rating.update(self._rating(batch["user"][rows], cols, score), batch["target_ratings"])
        b = user.shape[0]
        relevant = _csr(rows, cols, b)
        top, _ = full_ranking_top(user, table, max(self.metrics_k), batch["seen_rows"], batch["seen_cols"],
                                  self.eval_cfg.block_items, self.item_cold if self.cold_start_eval else None)
        self.ranking.update_top(top, relevant, table.shape[0])
        self.sampled.update(user, table, batch, relevant)
        return top, gates

    def _rating(self, users: Tensor, items: Tensor, score: Tensor) -> Tensor | None:
        """Predicted ratings (B,) from the towers' scores (B,), or None without a rating objective."""
        return None if self.rating_head is None else self.rating_head(users, items, score)

    def _end_eval(self, prefix: str) -> None:
        sums, count = self.ranking.state()
        metrics = self.ranking.compute(*self._reduce(sums, count))
        if self.rating_head is not None:
            metrics.update(self.rating.compute(*self._reduce(*self.rating.state())))
        metrics["ndcg"] = metrics[f"ndcg@{self.monitor_k}"]
        for name, acc in self.sampled.accumulators.items():  # every rank holds the same protocols, in one order
            metrics.update({f"{name}/{k}": v for k, v in acc.compute(*self._reduce(*acc.state())).items()})
        # already reduced across ranks: every rank logs the same numbers
        self.log_dict({f"{prefix}/{k}": v for k, v in metrics.items()}, sync_dist=False)
        self._item_table = None
        self._eval_ctx = {}

    def _reduce(self, sums: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums.to(self.device), reduce_op="sum")
            count = self.trainer.strategy.reduce(count.to(self.device), reduce_op="sum")
        return sums, count

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._end_eval("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")

    def on_predict_epoch_start(self) -> None:
        self._start_eval()

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Top-K unseen items per user with scores, and the user tower's per-source weights (attribution)."""
        self._encode_catalog()
        ctx = {**self._eval_ctx, **batch}
        user, gates = self.encode_eval_users(batch, ctx)
        items, scores = full_ranking_top(user, self._item_table, self.predict_top_k, batch["seen_rows"],
                                         batch["seen_cols"], self.eval_cfg.block_items)
        keep = ~batch["padding"] if "padding" in batch else torch.ones_like(batch["user"], dtype=torch.bool)
        out = {"user": batch["user"][keep], "items": items[keep], "scores": scores[keep]}
        if gates is not None:
            out["gates"] = gates[keep]
        return out


def global_candidates(pos: Tensor, batch: dict[str, Tensor], item_log_pop: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The in-batch candidates of the *global* batch and one consistent log Q for every logit.

    Positive vectors `pos` (B, D) are gathered from all ranks with gradients (trainer/engine/collectives.py), so
    each row's softmax sees the same C = global-batch candidates at any world size; log Q follows
    trainer.model.losses.mixed_log_q: in-batch candidates come from training popularity (`item_log_pop`
    (n_items,)), sampled negatives from the stream's sampler (the batch's `pos_logq` / `neg_logq` are the
    sampler's log probabilities of the positive / the negatives). Returns (candidates (C, D), the batch with
    `cand_items` (C,), `cand_logq` (C,), `pos_logq` (B,) and `neg_logq` (B, N) replaced by mixed log Q).
    """
    item, sampler_pos = batch["item"], batch.get("pos_logq")
    if sampler_pos is None:
        sampler_pos = torch.full_like(item_log_pop[item], float("-inf"))
    neg_items = batch.get("neg_items")
    n_neg = int(neg_items.shape[1]) if neg_items is not None and neg_items.numel() else 0
    candidates = gather_rows(pos, grad=True)
    cand_items = gather_rows(item)
    n_cand = int(cand_items.shape[0])
    cand_logq = mixed_log_q(item_log_pop[cand_items], gather_rows(sampler_pos), n_cand, n_neg)
    out = {**batch, "cand_items": cand_items, "cand_logq": cand_logq,
           "pos_logq": mixed_log_q(item_log_pop[item], sampler_pos, n_cand, n_neg)}
    if n_neg:
        out["neg_logq"] = mixed_log_q(item_log_pop[neg_items], batch["neg_logq"], n_cand, n_neg)
    return candidates, out


def _csr(rows: Tensor, cols: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """(row, col) pairs sorted by row -> (offsets (B + 1,), cols)."""
    order = torch.argsort(rows, stable=True)
    counts = torch.bincount(rows, minlength=batch)
    offsets = torch.zeros(batch + 1, dtype=torch.long, device=rows.device)
    offsets[1:] = torch.cumsum(counts, 0)
    return offsets, cols[order]
