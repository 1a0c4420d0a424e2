"""RecBole's side of benchmarks/sampled_vs_recbole.py; runs in RecBole 1.2.1's own venv (numpy < 2).

    RECBOLE_VENV/bin/python benchmarks/recbole_sampled_side.py WORK_DIR

Reads WORK_DIR/scores.npz (a score for every (user, item) of ml-100k, keyed by raw ids) and WORK_DIR/ours_<mode>_
<phase>.npz (fusionrec's candidates: rows, raw item ids, positives). For each of uni100 / pop100 and valid / test:

* RecBole's own pipeline (default ml-100k protocol, seed 2020, eval_args.mode = the protocol) draws its negatives
  in NegSampleEvalDataLoader; every batch is scored from the table and evaluated exactly as Trainer.evaluate does
  (`_neg_sample_batch_eval`'s -inf matrix, Collector.eval_batch_collect, Evaluator.evaluate). Its candidates are
  written out (recbole_<mode>_<phase>.npz) for fusionrec to rank the same sets.
* fusionrec's candidates are put into the same -inf matrix and evaluated by RecBole's Collector / Evaluator.

Metrics (12 decimals) go to WORK_DIR/recbole_metrics.json.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.evaluator import Collector, Evaluator
from recbole.utils import init_seed

KS = [5, 10, 20]


def _config(mode: str) -> Config:
    return Config(model="BPR", dataset="ml-100k", config_dict={
        "seed": 2020, "reproducibility": True, "show_progress": False, "eval_args": {
            "split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "group_by": "user", "mode": mode},
        "metrics": ["Recall", "MRR", "NDCG", "Hit", "Precision"], "topk": KS, "metric_decimal_place": 12,
        "valid_metric": "MRR@10", "device": "cpu", "use_gpu": False})


def _evaluate(config: Config, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
              n_items: int) -> dict[str, float]:
    """RecBole's ranking evaluation of batches (row_idx, col_idx, origin_scores, positive_u, positive_i)."""
    collector, evaluator = Collector(config), Evaluator(config)
    for row_idx, col_idx, origin, pos_u, pos_i in batches:
        scores = torch.full((int(pos_u[-1]) + 1, n_items), -np.inf)  # as Trainer._neg_sample_batch_eval
        scores[row_idx, col_idx] = origin
        collector.eval_batch_collect(scores, None, pos_u, pos_i)
    return {k: float(v) for k, v in evaluator.evaluate(collector.get_data_struct()).items()}


def main(work: str) -> None:
    table = np.load(os.path.join(work, "scores.npz"))
    our_users = {u: i for i, u in enumerate(table["users"].tolist())}
    our_items = {t: i for i, t in enumerate(table["items"].tolist())}
    score = torch.from_numpy(table["scores"])  # (n_users, n_items) float32, fusionrec's dense ids
    out: dict[str, dict[str, float]] = {}
    for mode in ("uni100", "pop100"):
        config = _config(mode)
        init_seed(config["seed"], config["reproducibility"])
        dataset = create_dataset(config)
        _, valid, test = data_preparation(config, dataset)
        uf, itf = dataset.uid_field, dataset.iid_field
        # RecBole internal id -> fusionrec dense id (internal item 0 is RecBole's padding: never drawn)
        u_map = torch.tensor([our_users.get(t, -1) for t in dataset.field2id_token[uf].tolist()])
        i_map = torch.tensor([our_items.get(t, -1) for t in dataset.field2id_token[itf].tolist()])
        to_internal = {int(o): r for r, o in enumerate(i_map.tolist()) if o >= 0}
        for phase, loader in (("valid", valid), ("test", test)):
            batches, dump = [], {"user": [], "item": [], "positive": []}
            for interaction, row_idx, pos_u, pos_i in loader:
                users, items = interaction[uf], interaction[itf]
                origin = score[u_map[users], i_map[items]]
                batches.append((row_idx, items, origin, pos_u, pos_i))
                user_of_row = torch.zeros(int(pos_u[-1]) + 1, dtype=torch.long)
                user_of_row[row_idx] = users
                positives = set(zip(user_of_row[pos_u].tolist(), pos_i.tolist()))
                for u, i in zip(users.tolist(), items.tolist()):
                    dump["user"].append(int(u_map[u]))
                    dump["item"].append(int(i_map[i]))
                    dump["positive"].append((u, i) in positives)
            out[f"recbole_negatives/{mode}/{phase}"] = _evaluate(config, batches, dataset.item_num)
            np.savez(os.path.join(work, f"recbole_{mode}_{phase}.npz"), **{k: np.array(v) for k, v in dump.items()})
            # fusionrec's stored negatives, evaluated by RecBole's Collector / Evaluator
            ours = np.load(os.path.join(work, f"ours_{mode}_{phase}.npz"))
            batches = []
            for a in range(0, int(ours["n_rows"]), 256):
                keep = (ours["rows"] >= a) & (ours["rows"] < a + 256)
                rows = torch.from_numpy(ours["rows"][keep] - a)
                cols = torch.tensor([to_internal[int(i)] for i in ours["cols"][keep]])
                origin = torch.from_numpy(ours["scores"][keep])
                pos = ours["positive"][keep]
                present = torch.unique(rows)  # rows are users with >= 1 positive, numbered 0.. in the batch
                remap = torch.full((int(rows.max()) + 1,), -1, dtype=torch.long)
                remap[present] = torch.arange(len(present))
                rows = remap[rows]
                batches.append((rows, cols, origin, rows[torch.from_numpy(pos)], cols[torch.from_numpy(pos)]))
            out[f"fusionrec_negatives/{mode}/{phase}"] = _evaluate(config, batches, dataset.item_num)
    with open(os.path.join(work, "recbole_metrics.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
