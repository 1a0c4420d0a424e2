"""Variants x seeds of real `fusionrec fit` runs, with mean ± std tables read from their TensorBoard event files.

    # ml-100k rating prediction (RecBole's default split), 3 seeds; peers: benchmarks/rating_peers.py
    python benchmarks/seeded.py rating --dataset /tmp/ml100k_prepared
    # ml-100k cold users (configs/data/ml100k_cold_user.yaml prepared to /tmp/ml100k_cold_user): fused vs id only
    python benchmarks/seeded.py cold_user --dataset /tmp/ml100k_cold_user
    # Amazon 2014 Musical Instruments, time-ordered leave-one-out; peers: benchmarks/sequential_peers.py
    python benchmarks/seeded.py sequential --dataset /tmp/amazon_mi
    # the same with precomputed SmolLM2 item vectors (benchmarks/precompute_item_vectors.py): id + vector vs id only
    python benchmarks/seeded.py vector --dataset /tmp/amazon_mi_vec
    # HetRec Last.fm 2K with and without the friend graph; peers and the table: benchmarks/social_peers.py
    python benchmarks/seeded.py social --dataset /tmp/lastfm_social
    # a subset, other seeds, or only the tables again (from --out), with the RecBole peers' rows
    python benchmarks/seeded.py sequential --tables-only --peers benchmarks/results/amazon_mi_sequential_peers.json
    python benchmarks/seeded.py sequential --dataset /tmp/amazon_mi --only fused text_seq --seeds 2020
    python benchmarks/seeded.py sequential --tables-only --json /tmp/seq.json

Every run is `python -m trainer.cli fit --config <suite config> <variant overrides> --seed_everything S --data.seed S
--test_after_fit true` on an already prepared dataset (`--data.prepare_config null`). Early stopping and the checkpoint
that is tested follow the config's validation monitor only; the test split is read once per run, after fit, on that
checkpoint. The table's "valid" columns are the validation metrics of the epoch the monitor chose (the tested one).
Runs go to <out>/<suite>/<variant>-s<seed>/version_*; one at a time (2 shared cores: run it alone).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SEEDS = (2020, 2021, 2022)


@dataclass
class Suite:
    config: str
    monitor: str  # validation tag the checkpoint follows
    mode: str  # min | max
    metrics: tuple[str, ...]  # reported for valid (at the chosen epoch) and test
    variants: dict[str, list[str]] = field(default_factory=dict)


def _list(key: str, values: list[str]) -> list[str]:
    return [key, "[" + ", ".join(values) + "]"]


_REPR = ["--model.model.sequence.item_repr"]
FUSED_ITEMS = _list("--model.model.sources", ["id", "tabular", "text", "sequence"])
NO_DROPOUT = ["--model.model.source_dropout", "{}"]
# later flags override earlier ones, so a variant may follow this with its own item_repr or source_dropout
FULL_CATALOG = ["--model.loss.full_catalog", "true", "--data.num_negatives", "0"]
USER_IS_HISTORY = [*_list("--model.model.user_sources", ["sequence"]), *_REPR, "item_tower", *NO_DROPOUT]
GRAPH_ONLY = ["--trainer.max_epochs", "20", *_list("--model.model.sources", ["graph"]), *NO_DROPOUT]

SUITES: dict[str, Suite] = {
    "rating": Suite(
        "configs/ml100k_rating.yaml", "val/rmse", "min", ("rmse", "mae"),
        {
            "fused": [],
            "id_only": _list("--model.model.sources", ["id"]),
        },
    ),
    "cold_user": Suite(
        # a fixed budget of 6 epochs, like the cold-item table; users of valid / test have no training interactions
        "configs/ml100k_cold_user.yaml", "val/ndcg", "max", ("recall@10", "ndcg@10", "hit@10"),
        {
            "fused": ["--trainer.max_epochs", "6"],
            "id_only": ["--trainer.max_epochs", "6", *_list("--model.model.sources", ["id"]),
                        *_list("--model.model.user_sources", ["id"]), "--model.model.source_dropout", "{}"],
        },
    ),
    "ml100k": Suite(
        # RecBole's default ml-100k split (identical to RecBole's own); members of the ensemble table
        "configs/ml100k.yaml", "val/ndcg@10", "max", ("ndcg@10", "recall@10", "mrr@10", "hit@10", "precision@10"),
        {
            "fused": [],
            "no_sequence": [*_list("--model.model.sources", ["id", "tabular", "text", "graph"]), *NO_DROPOUT],
            "id_only": [*_list("--model.model.sources", ["id"]), *NO_DROPOUT],
        },
    ),
    "social": Suite(
        # HetRec Last.fm 2K, per-user random 80/10/10 (configs/lastfm.yaml); a fixed cap of 15 epochs, the epoch chosen
        # by val/ndcg; Cornac peers (SoRec, SBPR, BPR, MostPop) on the identical split: benchmarks/social_peers.py
        "configs/lastfm.yaml", "val/ndcg@10", "max", ("ndcg@10", "recall@10", "mrr@10", "ndcg@20", "recall@20"),
        {   # every variant spelled out in full, so it does not depend on the config's defaults
            "fused_social": ["--trainer.max_epochs", "15", *_list("--model.model.sources", ["id", "tabular", "text", "graph"]),
                             "--model.model.graph.social", "true"],
            "fused_no_social": ["--trainer.max_epochs", "15",
                                *_list("--model.model.sources", ["id", "tabular", "text", "graph"]),
                                "--model.model.graph.social", "false"],
            "fused_no_graph": ["--trainer.max_epochs", "15", *_list("--model.model.sources", ["id", "tabular", "text"])],
        },
    ),
    "graph": Suite(
        # the graph source alone (LightGCN over the user-item and knowledge-graph edges of configs/ml100k.yaml), full
        # propagation every step vs neighbour sampling, at most 20 epochs (benchmarks/graph_scale.py: cost at scale)
        "configs/ml100k.yaml", "val/ndcg@10", "max", ("ndcg@10", "recall@10", "mrr@10", "hit@10"),
        {
            "full": GRAPH_ONLY,
            "sampled": [*GRAPH_ONLY, "--model.model.graph.fanouts", "[10, 5]"],
        },
    ),
    "sequential": Suite(
        "configs/amazon_mi.yaml", "val/ndcg@10", "max", ("ndcg@10", "recall@10", "mrr@10", "ndcg@20", "recall@20"),
        {   # every variant spelled out in full, so it does not depend on the config's defaults
            # ids, attributes and text on the item side; the user is their history of those item vectors
            "fused": [*FUSED_ITEMS, *USER_IS_HISTORY],
            # SASRec's inputs: item ids only, the user is their history of item ids
            "id_seq": [*_list("--model.model.sources", ["id", "sequence"]), *USER_IS_HISTORY, *_REPR, "id"],
            # no id at all (the transferable setting): items are their text, users their history of item texts
            "text_seq": [*_list("--model.model.sources", ["text", "sequence"]), *USER_IS_HISTORY],
            # fused, with the item id dropped for half the training rows, so text and attributes must carry items too
            "fused_id_drop": [*FUSED_ITEMS, *USER_IS_HISTORY, "--model.model.source_dropout", "{id: 0.5}"],
            # the fused item tower without text (what removing text costs)
            "fused_no_text": [*_list("--model.model.sources", ["id", "tabular", "sequence"]), *USER_IS_HISTORY],
            # the user tower also gets a user-id embedding (the pre-fix default: fits the validation target)
            "fused_user_id": [*FUSED_ITEMS, *_list("--model.model.user_sources", ["id", "sequence"]), *_REPR, "item_tower",
                              *NO_DROPOUT],
            # the same three with the exact softmax over all 900 items (RecBole SASRec's CE) instead of sampled negatives
            "fused_full": [*FUSED_ITEMS, *USER_IS_HISTORY, *FULL_CATALOG],
            "id_seq_full": [*_list("--model.model.sources", ["id", "sequence"]), *USER_IS_HISTORY, *_REPR, "id", *FULL_CATALOG],
            "text_seq_full": [*_list("--model.model.sources", ["text", "sequence"]), *USER_IS_HISTORY, *FULL_CATALOG],
        },
    ),
    "vector": Suite(
        # the sequential setting with precomputed item vectors (benchmarks/precompute_item_vectors.py: SmolLM2-135M over
        # the item text, prepared into --dataset); history items are the item tower's vectors in both variants, so
        # the vector source is the only difference
        "configs/amazon_mi.yaml", "val/ndcg@10", "max", ("ndcg@10", "recall@10", "mrr@10", "ndcg@20", "recall@20"),
        {
            "id_only": [*_list("--model.model.sources", ["id", "sequence"]), *USER_IS_HISTORY],
            "id_vector": [*_list("--model.model.sources", ["id", "vector", "sequence"]), *USER_IS_HISTORY],
        },
    ),
}


def run_dir(out: Path, suite: str, variant: str, seed: int) -> Path:
    return out / suite / f"{variant}-s{seed}"


def fit(suite: str, variant: str, seed: int, dataset: Path, out: Path, extra: list[str]) -> None:
    s = SUITES[suite]
    d = run_dir(out, suite, variant, seed)
    cmd = [sys.executable, "-m", "trainer.cli", "fit", "--config", s.config, *s.variants[variant], *extra,
           "--seed_everything", str(seed), "--data.seed", str(seed), "--test_after_fit", "true",
           "--data.dataset_dir", str(dataset), "--data.prepare_config", "null",
           "--trainer.default_root_dir", str(d), "--trainer.logger.init_args.save_dir", str(d.parent),
           "--trainer.logger.init_args.name", d.name, "--trainer.enable_progress_bar", "false"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    d.parent.mkdir(parents=True, exist_ok=True)
    log = d.parent / f"{d.name}.log"
    print(f"[{time.strftime('%H:%M:%S')}] {suite}/{variant} seed {seed}: {' '.join(cmd[3:])}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"{suite}/{variant} seed {seed} failed (exit {rc}); see {log}")
    print(f"[{time.strftime('%H:%M:%S')}] done in {time.perf_counter() - t0:.0f} s; log {log}", flush=True)


def read_run(d: Path, s: Suite) -> dict[str, float] | None:
    """valid metrics at the epoch the monitor chose, test metrics, epochs run; None if the run has no test yet."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    versions = sorted(d.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not versions:
        return None
    scalars: dict[str, list] = {}
    for f in sorted(glob.glob(f"{versions[-1]}/events*")):
        ea = EventAccumulator(f, size_guidance={"scalars": 0})
        ea.Reload()
        for t in ea.Tags()["scalars"]:
            scalars.setdefault(t, []).extend(ea.Scalars(t))
    if not all(f"test/{m}" in scalars for m in s.metrics) or s.monitor not in scalars:
        return None
    mon = [e.value for e in scalars[s.monitor]]
    best = int(np.argmin(mon) if s.mode == "min" else np.argmax(mon))
    row = {f"valid {m}": scalars[f"val/{m}"][best].value for m in s.metrics if f"val/{m}" in scalars}
    row.update({f"test {m}": scalars[f"test/{m}"][-1].value for m in s.metrics})
    row["epochs"] = float(len(mon))
    return row


def summarize(out: Path, suite: str, seeds: tuple[int, ...]) -> dict:
    s = SUITES[suite]
    res: dict = {}
    for v in s.variants:
        rows = {seed: read_run(run_dir(out, suite, v, seed), s) for seed in seeds}
        rows = {k: r for k, r in rows.items() if r is not None}
        if rows:
            res[v] = aggregate(rows)
    return res


def aggregate(per_seed: dict) -> dict:
    """seed -> {metric: value} as {"seeds", "per_seed", metric: {"mean", "std" (population)}}."""
    keys = list(next(iter(per_seed.values())))
    return {"seeds": sorted(per_seed), "per_seed": per_seed,
            **{k: {"mean": float(np.mean([r[k] for r in per_seed.values()])),
                   "std": float(np.std([r[k] for r in per_seed.values()]))} for k in keys}}  # fmt: skip


def peer_rows(path: Path, s: Suite) -> dict:
    """RecBole rows from benchmarks/sequential_peers.py --json, in this table's shape: the `masked` scores (every item
    fusionrec masks is masked for them too), per seed, so the peers and the variants are read the same way."""
    runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
    res = {}
    for model, seeds in runs.items():
        per_seed = {}
        for r in seeds:
            m = r["ours"]
            row = {f"valid {k}": m["valid"]["masked"][k] for k in s.metrics}
            row.update({f"test {k}": m["test"]["masked"][k] for k in s.metrics})
            per_seed[r["seed"]] = row
        res[f"RecBole {model}"] = aggregate(per_seed)
    return res


def table(res: dict, s: Suite) -> str:
    cols = [f"valid {s.metrics[0]}", *[f"test {m}" for m in s.metrics]]
    ratio = s.mode == "max"  # test / valid of the headline metric: does validation overstate a variant?
    head = ["variant", "seeds", *cols] + ([f"test/valid {s.metrics[0]}"] if ratio else [])
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for v, r in res.items():
        cells = [v, str(len(r["seeds"]))] + [f"{r[c]['mean']:.4f} ± {r[c]['std']:.4f}" for c in cols]
        if ratio:
            q = [p[f"test {s.metrics[0]}"] / p[cols[0]] for p in r["per_seed"].values()]
            cells.append(f"{np.mean(q):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", choices=list(SUITES))
    ap.add_argument("--dataset", type=Path, help="prepared dataset folder (required unless --tables-only)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "seeded")
    ap.add_argument("--only", nargs="*", help="variants to run (default: all of the suite)")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--skip-done", action="store_true", help="do not re-run a variant/seed that already has test metrics")
    ap.add_argument("--tables-only", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    ap.add_argument("--peers", type=Path, help="sequential_peers.py --json output: RecBole rows above the variants")
    a, extra = ap.parse_known_args()  # anything else: more fit overrides for every run, e.g. --trainer.max_epochs 3
    s = SUITES[a.suite]
    bad = set(a.only or []) - set(s.variants)
    if bad:
        ap.error(f"unknown variants {sorted(bad)} for suite {a.suite}; known: {list(s.variants)}")
    extra = extra[1:] if extra[:1] == ["--"] else extra
    if not a.tables_only:
        if a.dataset is None or not (a.dataset / "manifest.json").is_file():
            ap.error(f"--dataset {a.dataset}: expected a prepared dataset folder with manifest.json")
        for v in a.only or list(s.variants):
            for seed in a.seeds:
                if a.skip_done and read_run(run_dir(a.out, a.suite, v, seed), s) is not None:
                    continue
                fit(a.suite, v, seed, a.dataset, a.out, extra)
    res = summarize(a.out, a.suite, tuple(a.seeds))
    if a.peers:
        res = {**peer_rows(a.peers, s), **res}
    print(f"\n### {a.suite}: {s.config}, mean ± std over seeds (population std); runs in {a.out / a.suite}\n")
    print(table(res, s))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {a.json}")


if __name__ == "__main__":
    main()
