"""`fusionrec ensemble CKPT CKPT [...]`: late fusion of whole trained models by their scores.

The fusion head combines *sources* inside one model (early fusion); this combines the *scores* of separately
trained models on the same prepared dataset (an id model, a text model, a fused one, several seeds):

* **weighted**: each member's scores are standardised per user over the items it may rank (mean 0, std 1; seen
  items excluded), then summed with non-negative weights that add up to 1, chosen to maximise the validation
  metric (`--metric`, default ndcg@10): an exhaustive grid over the simplex (step 1/20) for up to 3 members,
  coordinate ascent on that grid from equal weights for more. Only the validation split is read to fit them.
* **rrf**: reciprocal-rank fusion, sum over members of 1 / (60 + rank) (Cormack et al., SIGIR 2009), the
  parameter-free baseline.

Every member, and both ensembles, are evaluated by the same full-ranking evaluator as `fusionrec test`
(trainer/engine/metrics.py), users conditioned as evaluation conditions them (history = train items for valid,
train + valid for test), seen items masked. The test split is scored once, after the weights are fixed.

Memory: each member's scores for every evaluated user over the whole catalog are held (4 bytes x users x items x
members per split): fine up to ~1e4 users x 1e5 items; larger catalogs need top-K fusion.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from data_modules.evaluation import RankingEvalSet
from data_modules.side import SideData
from trainer.engine.metrics import RankingAccumulator
from trainer.inference.export import load_model

log = logging.getLogger("fusionrec.ensemble")
RRF_K = 60
GRID = 20  # simplex grid step 1 / GRID


@dataclass
class SplitScores:
    """One split's evaluated users and, per member, their scores over the catalog."""

    users: np.ndarray  # (U,) dense user ids in evaluation order
    relevant: tuple[Tensor, Tensor]  # CSR over U rows: held-out items
    excluded: tuple[Tensor, Tensor]  # CSR over U rows: items not ranked (seen; non-cold in cold-start evaluation)
    scores: list[Tensor]  # per member (U, n_items) float32, raw


def _csr(rows: Tensor, cols: Tensor, n: int) -> tuple[Tensor, Tensor]:
    order = torch.argsort(rows, stable=True)
    offsets = torch.zeros(n + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    return offsets, cols[order]


def _rows(csr: tuple[Tensor, Tensor], a: int, b: int) -> tuple[Tensor, Tensor]:
    off, cols = csr
    return off[a : b + 1] - off[a], cols[off[a] : off[b]]


@torch.no_grad()
def member_scores(model, dataset_dir: Path, history_len: int, split: str, batch_size: int = 512
                  ) -> tuple[np.ndarray, Tensor, tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(users (U,), scores (U, n_items), relevant CSR, excluded CSR) for one member on `split`, computed as
    FusionModule's evaluation computes them (catalog encoded once, users by `encode_eval_users`)."""
    side = SideData(dataset_dir)
    ds = RankingEvalSet(dataset_dir, side.manifest, split, history_len)
    ctx = model.towers.context()
    items = model._all_items(ctx)
    users, scores, rel_r, rel_c, ex_r, ex_c = [], [], [], [], [], []
    n = 0
    for batch in DataLoader(ds, batch_size=batch_size, collate_fn=ds.collate):
        keep = ~batch["padding"] if "padding" in batch else torch.ones(len(batch["user"]), dtype=torch.bool)
        if not bool(keep.all()):
            raise ValueError("ensemble: padded evaluation rows in a single-process evaluation (unexpected)")
        u = model.encode_eval_users(batch, {**ctx, **batch})[0]
        scores.append((u @ items.T).float())
        users.append(batch["user"].numpy())
        rel_r.append(batch["target_rows"] + n)
        rel_c.append(batch["target_cols"])
        ex_r.append(batch["seen_rows"] + n)
        ex_c.append(batch["seen_cols"])
        n += len(batch["user"])
    s = torch.cat(scores)
    excluded_rows, excluded_cols = torch.cat(ex_r), torch.cat(ex_c)
    if model.cold_start_eval:  # only items without training interactions are ranked
        warm = torch.nonzero(~model.item_cold).flatten()
        excluded_rows = torch.cat([excluded_rows, torch.arange(n).repeat_interleave(len(warm))])
        excluded_cols = torch.cat([excluded_cols, warm.repeat(n)])
    return (np.concatenate(users), s, _csr(torch.cat(rel_r), torch.cat(rel_c), n),
            _csr(excluded_rows, excluded_cols, n))


def _mask(scores: Tensor, excluded: tuple[Tensor, Tensor]) -> Tensor:
    """(U, n_items) bool: True where an item is not ranked for that user."""
    off, cols = excluded
    rows = torch.repeat_interleave(torch.arange(len(off) - 1), torch.diff(off))
    m = torch.zeros_like(scores, dtype=torch.bool)
    m[rows, cols] = True
    return m


def standardise(scores: Tensor, masked: Tensor) -> Tensor:
    """Per user: (s - mean) / std over the items that user may rank; excluded items set to 0 (masked later)."""
    keep = (~masked).float()
    n = keep.sum(1, keepdim=True).clamp(min=1)
    mean = (scores * keep).sum(1, keepdim=True) / n
    var = (((scores - mean) ** 2) * keep).sum(1, keepdim=True) / n
    return ((scores - mean) / var.sqrt().clamp(min=1e-8)) * keep


def reciprocal_ranks(scores: Tensor, masked: Tensor, k: int = RRF_K) -> Tensor:
    """1 / (k + rank) per user and item (rank 1 = best among the items the user may rank; excluded -> 0)."""
    s = scores.masked_fill(masked, float("-inf"))
    order = torch.argsort(s, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(1, s.shape[1] + 1).expand_as(order).contiguous())
    return (1.0 / (k + ranks.float())).masked_fill(masked, 0.0)


def evaluate(scores: Tensor, split: SplitScores, ks: Sequence[int], chunk: int = 2048) -> dict[str, float]:
    acc = RankingAccumulator(ks)
    for a in range(0, scores.shape[0], chunk):
        b = min(a + chunk, scores.shape[0])
        acc.update(scores[a:b], _rows(split.relevant, a, b), _rows(split.excluded, a, b))
    return acc.compute()


def _grid(m: int) -> list[tuple[float, ...]]:
    """Every weight vector of m members on the simplex with step 1 / GRID."""
    out = []
    for combo in itertools.product(range(GRID + 1), repeat=m - 1):
        if sum(combo) <= GRID:
            out.append(tuple(c / GRID for c in (*combo, GRID - sum(combo))))
    return out


def fit_weights(members: list[Tensor], split: SplitScores, metric: str, ks: Sequence[int]) -> tuple[list[float], float]:
    """Non-negative weights summing to 1 that maximise `metric` on this (validation) split; ties keep the
    earlier candidate. Returns (weights, metric value)."""
    def value(w: Sequence[float]) -> float:
        return evaluate(sum(wi * s for wi, s in zip(w, members)), split, ks)[metric]

    m = len(members)
    if m <= 3:
        best = max(_grid(m), key=value)  # max keeps the first of equal values
        return list(best), value(best)
    w = [1.0 / m] * m  # coordinate ascent: move 1/GRID of weight between two members while it helps
    cur = value(w)
    improved = True
    while improved:
        improved = False
        for i, j in itertools.permutations(range(m), 2):
            step = min(1.0 / GRID, w[j])
            if step <= 0:
                continue
            cand = list(w)
            cand[i] += step
            cand[j] -= step
            v = value(cand)
            if v > cur:
                w, cur, improved = cand, v, True
    return w, cur


def ensemble(checkpoints: Sequence[str | Path], configs: Sequence[str | Path | None] | None = None,
             names: Sequence[str] | None = None, metric: str | None = None, ks: Sequence[int] | None = None,
             out: str | Path | None = None, allow_dataset_change: bool = False) -> dict:
    """Score every member on valid and test, fit weights on valid, evaluate members, weighted and RRF on test.
    `ks` default: the first member's `metrics_k`; `metric` default: ndcg at its `monitor_k` (what its checkpoint
    was chosen by)."""
    if len(checkpoints) < 2:
        raise ValueError(f"ensemble: {len(checkpoints)} checkpoint(s) given; expected 2 or more")
    configs = list(configs) if configs else [None] * len(checkpoints)
    if len(configs) != len(checkpoints):
        raise ValueError(f"ensemble: {len(configs)} --config for {len(checkpoints)} checkpoints; give one per checkpoint or none")
    names = list(names) if names else [Path(c).parent.parent.parent.name if Path(c).parent.name == "checkpoints"
                                       else Path(c).stem for c in checkpoints]
    t0 = time.perf_counter()
    splits: dict[str, SplitScores] = {}
    fingerprint = None
    for i, (ckpt, cfg) in enumerate(zip(checkpoints, configs)):
        model, data = load_model(ckpt, cfg, allow_dataset_change)
        if i == 0:
            ks = list(ks or model.metrics_k)
            metric = metric or f"ndcg@{model.monitor_k}"
            name, _, k = metric.partition("@")
            if name not in ("ndcg", "recall", "mrr", "hit", "precision") or not k.isdigit() or int(k) not in ks:
                raise ValueError(f"ensemble: metric={metric!r}: expected ndcg|recall|mrr|hit|precision @ one of {ks}")
        dataset_dir = Path(data["dataset_dir"]).expanduser()
        fp = SideData(dataset_dir).manifest.get("fingerprint")
        if fingerprint is None:
            fingerprint, first_dir = fp, dataset_dir
        elif fp != fingerprint:
            raise ValueError(f"ensemble: {ckpt} was trained on {dataset_dir} (fingerprint {fp}), member 1 on "
                             f"{first_dir} ({fingerprint}): members must share one prepared dataset")
        for split in ("valid", "test"):
            users, scores, relevant, excluded = member_scores(model, dataset_dir, int(data.get("history_len", 50)), split)
            if split not in splits:
                splits[split] = SplitScores(users, relevant, excluded, [])
            elif not np.array_equal(users, splits[split].users):
                raise ValueError(f"ensemble: {ckpt} evaluates other {split} users than member 1")
            splits[split].scores.append(scores)
        log.info("member %d/%d %s scored on valid and test (%.0f s so far)", i + 1, len(checkpoints), names[i],
                 time.perf_counter() - t0)
        del model
    prepared = {}
    for split, ss in splits.items():
        masked = _mask(ss.scores[0], ss.excluded)
        prepared[split] = ([standardise(s, masked) for s in ss.scores], [reciprocal_ranks(s, masked) for s in ss.scores])
    weights, fit_value = fit_weights(prepared["valid"][0], splits["valid"], metric, ks)
    log.info("weights fitted on valid (%s = %.4f): %s", metric, fit_value, dict(zip(names, weights)))
    rows = []
    for split in ("valid", "test"):  # test is read here once, with the weights fixed above
        ss, (std, rr) = splits[split], prepared[split]
        for name, s in zip(names, ss.scores):
            rows.append({"model": name, "split": split, **evaluate(s, ss, ks)})
        rows.append({"model": "ensemble (weighted)", "split": split, **evaluate(sum(w * s for w, s in zip(weights, std)), ss, ks)})
        rows.append({"model": "ensemble (rrf)", "split": split, **evaluate(sum(rr), ss, ks)})
    result = {"members": [{"name": n, "checkpoint": str(c), "weight": w} for n, c, w in zip(names, checkpoints, weights)],
              "metric": metric, "ks": ks, "fit_on": "valid", "valid_fit_value": fit_value, "rrf_k": RRF_K, "grid_step": 1 / GRID,
              "dataset_fingerprint": fingerprint, "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "ensemble.json.tmp"
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out / "ensemble.json")
        log.info("wrote %s", out / "ensemble.json")
    return result


def format_table(result: dict, metrics: Sequence[str] = ("ndcg@10", "recall@10", "mrr@10", "ndcg@20")) -> str:
    by = {(r["model"], r["split"]): r for r in result["rows"]}
    models = list(dict.fromkeys(r["model"] for r in result["rows"]))
    weight = {m["name"]: m["weight"] for m in result["members"]}
    head = "| model | weight | valid " + result["metric"] + " | " + " | ".join(f"test {m}" for m in metrics) + " |"
    lines = [head, "|" + "---|" * (3 + len(metrics))]
    for m in models:
        w = f"{weight[m]:.2f}" if m in weight else ""
        lines.append(f"| {m} | {w} | {by[(m, 'valid')][result['metric']]:.4f} | "
                     + " | ".join(f"{by[(m, 'test')][k]:.4f}" for k in metrics) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="fusionrec ensemble", description=__doc__.split("\n\n")[0] + " Weights are fit on "
                                "validation only; members, the weighted ensemble and RRF are then evaluated on test once.")
    p.add_argument("checkpoints", nargs="+", help="2 or more Lightning .ckpt files (or DeepSpeed folders) on one prepared dataset")
    p.add_argument("--config", action="append", help="run config per checkpoint, in order (default: config.yaml in each log folder)")
    p.add_argument("--name", action="append", help="member name per checkpoint, in order (default: the run folder's name)")
    p.add_argument("--metric", help="validation metric the weights maximise (default: ndcg at the first member's monitor_k)")
    p.add_argument("--ks", type=int, nargs="+", help="cut-offs to report (default: the first member's metrics_k)")
    p.add_argument("--out", help="folder for ensemble.json (weights, every member's and ensemble's valid / test metrics)")
    p.add_argument("--allow-dataset-change", action="store_true",
                   help="score a checkpoint even if its run config names another prepared dataset than it was trained on")
    a = p.parse_args(list(argv))
    for flag, values in (("--config", a.config), ("--name", a.name)):
        if values and len(values) != len(a.checkpoints):
            p.error(f"{flag} given {len(values)} times for {len(a.checkpoints)} checkpoints: give it once per checkpoint or not at all")
    try:
        result = ensemble(a.checkpoints, a.config, a.name, a.metric, a.ks, a.out, a.allow_dataset_change)
    except (FileNotFoundError, ValueError) as e:
        print(f"fusionrec ensemble: error: {e}", file=sys.stderr)
        return 2
    print(format_table(result, [f"{m}@{k}" for k in result["ks"] for m in ("ndcg", "recall")]))
    if a.out:
        print(f"wrote {Path(a.out) / 'ensemble.json'}")
    return 0
