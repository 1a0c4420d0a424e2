"""RecBole peers (SASRec, GRU4Rec, BPR) on the identical leave-one-out split of a prepared fusionrec dataset.

    # prepare the dataset once (fusionrec venv)
    HF_HUB_OFFLINE=1 .venv/bin/python -m trainer.cli data prepare configs/data/amazon_mi.yaml --out /tmp/amazon_mi
    # export + all runs + table (fusionrec venv; the RecBole runs go through RecBole's own venv)
    .venv/bin/python benchmarks/sequential_peers.py --dataset /tmp/amazon_mi --work /tmp/amazon_mi_peers \
        --json /tmp/amazon_mi_peers/sequential_peers.json
    # options: --models SASRec GRU4Rec BPR  --seeds 2020 2021 2022  --epochs 200 (BPR)  --seq-epochs 20
    #          --seq-batch-size 256 (SASRec / GRU4Rec)  --stopping-step 10  --export-only

Step 1 (fusionrec venv, `export`): reads <dataset>/manifest.json, id_maps/, side/history_* and the valid/test shards
through `data_modules.evaluation.RankingEvalSet`, i.e. exactly the history (time order), the seen items (masked) and the
held-out targets fusionrec evaluates on. It writes RecBole atomic files with the original ids as tokens under
<work>/data/:
  <name>/<name>.{train,valid,test}.inter      user_id:token item_id:token timestamp:float  (general models, BPR)
      train = every training interaction; valid / test = the held-out item of each user.
  <name>_seq/<name>_seq.{train,valid,test}.inter
      user_id:token item_id_list:token_seq item_id:token timestamp:float  (sequential models, SASRec / GRU4Rec)
      RecBole 1.2.1 does NOT build sequences from benchmark files: `SequentialDataset` skips its data augmentation
      when `benchmark_filename` is set and reads `item_id_list` from the files (a plain user/item file fails in
      `_benchmark_presets`). So the files carry the sequences, built as RecBole's own LS/TO augmentation would:
      train = one row per training item after a user's first (prefix of earlier training items -> item);
      valid = (all training items -> valid item); test = (training items + valid item -> test item); prefixes keep the
      last MAX_ITEM_LIST_LENGTH (50) items. `alias_of_item_id: [item_id_list]` puts lists and targets in one id space
      (without it RecBole remaps `item_id_list` separately and silently scrambles the histories).
  expected.json: per user the fusionrec history (valid / test) and target, used by step 2 to check what RecBole loaded.

Step 2 (RecBole venv, `run-one`, one process per model x seed): RecBole's quick-start flow (Config, create_dataset,
data_preparation, fit with early stopping on valid NDCG@10, evaluate the best checkpoint on test), full ranking over
all items, Recall / NDCG / MRR / Hit @10 and @20. It then re-scores valid and test with the best model and computes the
metrics twice with its own code (single target per user, RecBole's top-k):
  native   = RecBole's own scores as RecBole evaluates them (must equal RecBole's reported numbers: checked);
  masked   = additionally every item fusionrec masks (the user's train items; train + valid items for test) is set
             to -inf: the fusionrec protocol. RecBole masks history for general models (BPR: native == masked) but
             NOT for sequential models (FullSortEvalDataLoader gives no history_index when MODEL_TYPE is SEQUENTIAL).
It also checks, user by user, that the histories RecBole feeds for the valid / test targets (after id remapping)
are the fusionrec histories and that BPR's masked items are fusionrec's seen items.

Step 3 prints a markdown table (mean ± population std over seeds) and writes --json.
The RecBole venv is the one `../shared/peers/run_recbole.sh` builds (VENV, default ~/.cache/recbole-venv); it is built
by that script when missing. Runs are strictly one after the other (2 shared cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS = (REPO / ".." / "shared" / "peers").resolve()
MODELS = ("SASRec", "GRU4Rec", "BPR")
SEQUENTIAL = {"SASRec", "GRU4Rec"}
SEEDS = (2020, 2021, 2022)
MAX_LEN = 50  # RecBole's MAX_ITEM_LIST_LENGTH default
KS = (10, 20)
METRICS = ("recall", "ndcg", "mrr", "hit")


# ----------------------------------------------------------------------------------------------- step 1: export
def export(dataset: Path, out: Path, name: str) -> dict:
    """Write the RecBole atomic files (general + sequential) and expected.json; return counts."""
    import numpy as np
    import pandas as pd

    sys.path.insert(0, str(REPO))
    from data_modules import layout
    from data_modules.evaluation import RankingEvalSet, read_split

    manifest = json.loads((dataset / layout.MANIFEST).read_text(encoding="utf-8"))
    if manifest["split"]["protocol"] != "leave_one_out":
        print(f"warning: split protocol is {manifest['split']['protocol']!r}, not leave_one_out", file=sys.stderr)
    users = pd.read_parquet(dataset / layout.ID_MAPS / "users.parquet").sort_values("index")["id"].to_numpy()
    items = pd.read_parquet(dataset / layout.ID_MAPS / "items.parquet").sort_values("index")["id"].to_numpy()
    for tok in (*users, *items):
        if any(c in tok for c in " \t\n"):
            raise SystemExit(f"id {tok!r} holds whitespace: cannot be a RecBole token")
    side = dataset / layout.SIDE
    h_off, h_items = np.load(side / "history_offsets.npy"), np.load(side / "history_items.npy")
    train = read_split(dataset, manifest, "train").sort_values(["user", "seq_pos"])
    # the training rows in history order must be the CSR history itself
    assert (train["item"].to_numpy() == h_items).all(), "train shard order differs from side/history_items"
    train_ts = train["timestamp"].to_numpy()
    ev = {s: read_split(dataset, manifest, s) for s in ("valid", "test")}
    sets = {s: RankingEvalSet(dataset, manifest, s, history_len=10_000) for s in ("valid", "test")}

    gen, seq = out / name, out / f"{name}_seq"
    gen.mkdir(parents=True, exist_ok=True)
    seq.mkdir(parents=True, exist_ok=True)
    head_g = "user_id:token\titem_id:token\ttimestamp:float\n"
    head_s = "user_id:token\titem_id_list:token_seq\titem_id:token\ttimestamp:float\n"
    expected: dict = {"valid": {}, "test": {}}
    counts: dict = {}

    with open(gen / f"{name}.train.inter", "w") as fg, open(seq / f"{name}_seq.train.inter", "w") as fs:
        fg.write(head_g)
        fs.write(head_s)
        n_g = n_s = 0
        for u in range(len(h_off) - 1):
            a, b = int(h_off[u]), int(h_off[u + 1])
            hist = [items[i] for i in h_items[a:b]]
            for j in range(b - a):
                fg.write(f"{users[u]}\t{hist[j]}\t{train_ts[a + j]}\n")
                n_g += 1
                if j >= 1:
                    fs.write(f"{users[u]}\t{' '.join(hist[max(0, j - MAX_LEN):j])}\t{hist[j]}\t{train_ts[a + j]}\n")
                    n_s += 1
        counts["train"] = {"general_rows": n_g, "sequential_rows": n_s}

    truncated = 0
    for split, es in sets.items():
        df = ev[split].sort_values(["user", "item"])
        ts = {(int(u), int(i)): t for u, i, t in df[["user", "item", "timestamp"]].itertuples(index=False)}
        with open(gen / f"{name}.{split}.inter", "w") as fg, open(seq / f"{name}_seq.{split}.inter", "w") as fs:
            fg.write(head_g)
            fs.write(head_s)
            n = 0
            for u in es.users:
                u = int(u)
                if u < 0:
                    continue
                hist = es.seq_items[es.seq_offsets[u]:es.seq_offsets[u + 1]]
                tgts = es.tgt_items[es.tgt_offsets[u]:es.tgt_offsets[u + 1]]
                if len(tgts) != 1:
                    raise SystemExit(f"{split}: user {users[u]} has {len(tgts)} targets; leave-one-out expects 1")
                tgt = int(tgts[0])
                h_tok = [items[i] for i in hist]
                truncated += len(h_tok) > MAX_LEN
                fg.write(f"{users[u]}\t{items[tgt]}\t{ts[(u, tgt)]}\n")
                fs.write(f"{users[u]}\t{' '.join(h_tok[-MAX_LEN:])}\t{items[tgt]}\t{ts[(u, tgt)]}\n")
                # fusionrec masks np.unique(history) = seen; history order = what a sequential model conditions on
                expected[split][users[u]] = {"history": h_tok, "target": items[tgt]}
                n += 1
        counts[split] = {"users": n}
    (out / "expected.json").write_text(json.dumps(expected), encoding="utf-8")
    targets_seen = sum(e["target"] in set(e["history"]) for s in expected.values() for e in s.values())
    info = {
        "dataset": str(dataset), "name": manifest.get("name"), "fingerprint": manifest.get("fingerprint"),
        "fusionrec_counts": manifest["counts"], "recbole_files": counts,
        "histories_longer_than_max_len": int(truncated), "targets_inside_own_history": int(targets_seen),
    }
    (out / "split_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


# ------------------------------------------------------------------------------------- step 2: one RecBole run
def recbole_config(model: str, seed: int, data_path: Path, name: str, epochs: int, stopping_step: int,
                   ckpt: Path, batch_size: int = 0) -> tuple[str, dict]:
    seqm = model in SEQUENTIAL
    dataset = f"{name}_seq" if seqm else name
    cfg = {
        "seed": seed,
        "reproducibility": True,
        "show_progress": False,
        "use_gpu": False,
        "data_path": str(data_path),
        "checkpoint_dir": str(ckpt),
        "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["user_id", "item_id_list", "item_id", "timestamp"] if seqm
                     else ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["Recall", "NDCG", "MRR", "Hit"],
        "topk": list(KS),
        "valid_metric": "NDCG@10",
        "epochs": epochs,
        "stopping_step": stopping_step,
        "MAX_ITEM_LIST_LENGTH": MAX_LEN,
    }
    if batch_size:
        cfg["train_batch_size"] = batch_size  # RecBole's default is 2048
    if seqm:
        cfg["alias_of_item_id"] = ["item_id_list"]
        cfg["train_neg_sample_args"] = None  # CE loss (SASRec / GRU4Rec default) trains without negative sampling
        cfg["repeatable"] = True
    return dataset, cfg


def _metrics(ranks) -> dict:
    """ranks: 0-based rank of each user's single target (inf = outside the top max(KS))."""
    import numpy as np

    r = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in KS:
        hit = r < k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"hit@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(np.minimum(r, k) + 2), 0.0).mean())
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / (np.minimum(r, k) + 1), 0.0).mean())
    return out


def rescore(trainer, data, dataset, expected: dict, seqm: bool) -> dict:
    """Native and fusionrec-masked metrics of `trainer.model` on one eval loader; checks histories / masks."""
    import numpy as np
    import torch

    uid_f, iid_f = dataset.uid_field, dataset.iid_field
    tok2iid = dataset.field2token_id[iid_f]
    kmax = max(KS)
    ranks = {"native": [], "masked": []}
    checked = mismatched = 0
    target_in_mask = 0
    trainer.model.eval()
    with torch.no_grad():
        for batch in data:
            interaction, scores, pos_u, pos_i = trainer._full_sort_batch_eval(batch)
            uids = interaction[uid_f].cpu().numpy()
            utoks = dataset.id2token(uid_f, uids)
            # native: exactly what RecBole evaluates (PAD and, for general models, history already at -inf)
            masked = scores.clone()
            for row, ut in enumerate(utoks):
                exp = expected[str(ut)]
                seen = torch.tensor([tok2iid[t] for t in set(exp["history"])], dtype=torch.long)
                masked[row, seen] = -np.inf
                # checks: the sequence RecBole conditions on, and the target
                if seqm:
                    lst = interaction[dataset.item_id_list_field][row]
                    n = int(interaction[dataset.item_list_length_field][row])
                    got = list(dataset.id2token(iid_f, lst[:n].cpu().numpy()))
                    ok = got == exp["history"][-MAX_LEN:]
                else:  # BPR: RecBole's masked set must be fusionrec's seen set
                    got = set(np.flatnonzero(np.isneginf(scores[row].cpu().numpy())).tolist()) - {0}
                    ok = got == set(seen.tolist())
                tgt_rows = pos_i[pos_u == row]
                ok = ok and len(tgt_rows) == 1 and dataset.id2token(iid_f, int(tgt_rows[0])) == exp["target"]
                checked += 1
                mismatched += not ok
                target_in_mask += bool(np.isneginf(masked[row, int(tgt_rows[0])].item()))
            for kind, sc in (("native", scores), ("masked", masked)):
                top = torch.topk(sc, kmax, dim=-1).indices
                for row in range(len(uids)):
                    t = int(pos_i[pos_u == row][0])
                    where = (top[row] == t).nonzero()
                    ranks[kind].append(float(where[0, 0]) if len(where) else float("inf"))
    return {"native": _metrics(ranks["native"]), "masked": _metrics(ranks["masked"]), "users": checked,
            "history_or_target_mismatches": mismatched, "targets_masked": target_in_mask}


def run_one(args: argparse.Namespace) -> None:
    import numpy as np
    import recbole
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    work = Path(args.work)
    name = args.name
    dataset_name, cfg = recbole_config(args.model, args.seed, work / "data", name, args.epochs, args.stopping_step,
                                       work / "saved" / f"{args.model}-{args.seed}", args.batch_size)
    print(f"VERSIONS recbole={recbole.__version__} torch={torch.__version__} numpy={np.__version__} "
          f"threads={torch.get_num_threads()}", flush=True)
    t0 = time.time()
    sys.argv = sys.argv[:1]  # RecBole's Config also parses sys.argv for --key=value overrides
    config = Config(model=args.model, dataset=dataset_name, config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    print(dataset, flush=True)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, saved=True,
                                                      show_progress=False)
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    t_fit = time.time() - t0
    expected = json.loads((work / "expected.json").read_text(encoding="utf-8"))
    seqm = args.model in SEQUENTIAL
    ours = {split: rescore(trainer, data, data._dataset, expected[split], seqm)
            for split, data in (("valid", valid_data), ("test", test_data))}
    recbole_native = {"valid": {k: float(v) for k, v in best_valid_result.items()},
                      "test": {k: float(v) for k, v in test_result.items()}}
    # our native numbers must reproduce RecBole's (4 decimals, RecBole rounds)
    agree = all(abs(ours[s]["native"][k] - v) < 6e-5 for s in ("valid", "test")
                for k, v in recbole_native[s].items() if k in ours[s]["native"])
    out = {
        "model": args.model, "seed": args.seed, "n_users": int(dataset.user_num - 1), "n_items": int(dataset.item_num - 1),
        "n_inter_files": [len(train_data._dataset), len(valid_data._dataset), len(test_data._dataset)],
        "wall_s_in_process": round(t_fit, 1), "best_valid_score": float(best_valid_score),
        "recbole": recbole_native, "ours": ours, "ours_native_equals_recbole": bool(agree),
    }
    print("SUMMARY_JSON " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------- step 3: orchestrate
def ensure_venv(venv: Path) -> Path:
    py = venv / "bin" / "python"
    ok = py.exists() and subprocess.run([str(py), "-c", "import recbole,sys;sys.exit(recbole.__version__!='1.2.1')"],
                                        capture_output=True).returncode == 0
    if not ok:  # run_recbole.sh builds its venv; MODELS=" " (non-empty, no model) runs nothing else
        subprocess.run(["bash", str(PEERS / "run_recbole.sh")], check=True,
                       env={**os.environ, "VENV": str(venv), "MODELS": " "})
    return py


def _mean_std(xs: list[float]) -> tuple[float, float]:
    import statistics

    return statistics.fmean(xs), statistics.pstdev(xs) if len(xs) > 1 else 0.0


BEST = re.compile(r"best eval result in epoch (\d+)")
EPOCH = re.compile(r"epoch (\d+) training \[time")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", nargs="?", default="all", choices=["all", "run-one"])
    p.add_argument("--dataset", type=Path, help="prepared fusionrec dataset folder")
    p.add_argument("--work", type=Path, default=Path("/tmp/sequential_peers"), help="RecBole files, logs, checkpoints")
    p.add_argument("--name", default="amazon_mi", help="RecBole dataset name (file prefix)")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--stopping-step", type=int, default=10)
    p.add_argument("--seq-epochs", type=int, default=20, help="epoch cap of SASRec / GRU4Rec (CPU cost)")
    p.add_argument("--seq-batch-size", type=int, default=256, help="train batch of SASRec / GRU4Rec (0 = RecBole's 2048)")
    p.add_argument("--batch-size", type=int, default=0, help="run-one: train batch (0 = RecBole's 2048)")
    p.add_argument("--venv", type=Path, default=Path(os.environ.get("VENV", Path.home() / ".cache" / "recbole-venv")))
    p.add_argument("--json", type=Path)
    p.add_argument("--export-only", action="store_true")
    p.add_argument("--model")
    p.add_argument("--seed", type=int)
    args = p.parse_args()
    if args.cmd == "run-one":
        run_one(args)
        return
    if args.dataset is None:
        p.error("--dataset is required")
    work = args.work.resolve()
    info = export(args.dataset.resolve(), work / "data", args.name)
    # expected.json sits in work/ for the runs
    (work / "expected.json").write_bytes((work / "data" / "expected.json").read_bytes())
    print(json.dumps(info, indent=1), flush=True)
    if args.export_only:
        return
    py = ensure_venv(args.venv)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
           "PYTHONWARNINGS": "ignore::UserWarning:ray._private.parameter"}
    runs: dict = {m: [] for m in args.models}
    for model in args.models:
        for seed in args.seeds:
            log = work / "logs" / f"{model}-{seed}.log"
            cmd = [str(py), str(Path(__file__).resolve()), "run-one", "--work", str(work), "--name", args.name,
                   "--model", model, "--seed", str(seed),
                   "--epochs", str(args.seq_epochs if model in SEQUENTIAL else args.epochs),
                   "--batch-size", str(args.seq_batch_size if model in SEQUENTIAL else 0),
                   "--stopping-step", str(args.stopping_step)]
            t0 = time.time()
            with open(log, "w") as f:
                rc = subprocess.run(cmd, cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
            wall = time.time() - t0
            txt = log.read_text(errors="replace")
            summ = [json.loads(line[len("SUMMARY_JSON "):]) for line in txt.splitlines() if line.startswith("SUMMARY_JSON ")]
            if rc != 0 or not summ:
                print(f"FAILED {model} seed {seed} (rc {rc}); see {log}", flush=True)
                continue
            r = summ[-1]
            best, epochs = BEST.search(txt), [int(e) for e in EPOCH.findall(txt)]
            r.update(wall_s=round(wall, 1), best_epoch=int(best.group(1)) if best else None,
                     epochs_run=max(epochs) + 1 if epochs else None, log=str(log))
            runs[model].append(r)
            v, t = r["ours"]["valid"], r["ours"]["test"]
            print(f"{model} seed {seed}: {wall:.0f}s, best epoch {r['best_epoch']}/{r['epochs_run']}; "
                  f"test NDCG@10 native {t['native']['ndcg@10']:.4f} masked {t['masked']['ndcg@10']:.4f}; "
                  f"checks: native==recbole {r['ours_native_equals_recbole']}, mismatches "
                  f"{v['history_or_target_mismatches']}+{t['history_or_target_mismatches']}", flush=True)
    summary: dict = {}
    for model, rs in runs.items():
        if not rs:
            continue
        s = {"seeds": [r["seed"] for r in rs], "wall_s": [r["wall_s"] for r in rs],
             "best_epoch": [r["best_epoch"] for r in rs], "epochs_run": [r["epochs_run"] for r in rs]}
        for kind in ("native", "masked"):
            for split in ("valid", "test"):
                for k in ("ndcg@10", "recall@10", "mrr@10", "ndcg@20", "recall@20"):
                    m, sd = _mean_std([r["ours"][split][kind][k] for r in rs])
                    s[f"{kind}_{split}_{k}"] = {"mean": m, "std": sd}
        summary[model] = s
    cols = [("valid", "ndcg@10"), ("valid", "recall@10"), ("test", "ndcg@10"), ("test", "recall@10")]
    for kind, title in (("masked", "fusionrec protocol: train (+ valid for test) items masked"),
                        ("native", "RecBole as-is (sequential models: no seen-item masking)")):
        print(f"\n{title}\n")
        print("| model | " + " | ".join(f"{s} {k.upper().replace('RECALL', 'Recall').replace('NDCG', 'NDCG')}"
                                         for s, k in cols) + " | wall s / run |")
        print("|---|" + "---|" * (len(cols) + 1))
        for model, s in summary.items():
            cells = [f"{s[f'{kind}_{sp}_{k}']['mean']:.4f} ± {s[f'{kind}_{sp}_{k}']['std']:.4f}" for sp, k in cols]
            w = _mean_std(s["wall_s"])
            print(f"| {model} | " + " | ".join(cells) + f" | {w[0]:.0f} ± {w[1]:.0f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"split_info": info, "epochs": args.epochs, "seq_epochs": args.seq_epochs,
                                         "seq_batch_size": args.seq_batch_size, "stopping_step": args.stopping_step,
                                         "summary": summary, "runs": runs}, indent=1) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
