"""Faithfulness of `fusionrec explain`: deletion test, rationale grounding, CPU seconds per explanation.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/explain_faithfulness.py --ckpt CKPT --users 943 --k 10 \
        --rationale-users 100 --json benchmarks/results/explain_faithfulness_ml100k.json

Deletion test (per tower, per attribution method): for each user and each of their top-K items, declare the
top-attributed source missing (item tower: for that item only, the other items unchanged; user tower: for that
user, every item rescored) and take the item's new rank among the user's rankable items; the same with a source
drawn at random (seeded) among the available ones, and among the available ones other than the top one. Reported:
mean rank drop of each, and the share of (user, item) pairs where masking the top source drops the rank more than
masking the random one (ties counted apart).

Grounding: rationales for the top-1 item of `--rationale-users` users (the first of the sampled users), checked
by trainer.inference.explain.rationale.GroundingChecker: share of named titles / attributes that are in the
prompt's facts, of the model's own sentences and of the served ones (`fusionrec explain`'s default
`--ungrounded template`: a sentence naming anything outside its facts is replaced by one built from the facts). CPU seconds (time.process_time, one thread): attribution + facts per explanation, and rationale
generation per explanation (model load excluded, reported apart).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.inference.explain import choose_users, records  # noqa: E402
from trainer.inference.explain.attribution import fuse, masked_score  # noqa: E402
from trainer.inference.explain.core import catalog, explain_batch, rank_of  # noqa: E402
from trainer.inference.explain.facts import ItemFacts  # noqa: E402
from trainer.inference.explain.rationale import (  # noqa: E402
    DEFAULT_MODEL,
    GroundingChecker,
    Rationale,
    served_rationales,
)
from trainer.inference.export import load_model  # noqa: E402


def _pick(rng: np.random.Generator, available: np.ndarray, exclude: int | None = None) -> int:
    idx = [i for i in np.flatnonzero(available) if i != exclude]
    return int(rng.choice(idx)) if idx else -1


@torch.no_grad()
def deletion(model, cat, users: list[int], k: int, method: str, seed: int, batch: int = 64) -> dict:
    rng = np.random.default_rng(seed)
    normalize = bool(model.model_cfg.normalize)
    drops: dict[str, dict[str, list[int]]] = {t: {"top": [], "random": [], "random_other": []} for t in ("item", "user")}
    for a in range(0, len(users), batch):
        ex = explain_batch(model, cat, users[a:a + batch], k, method)
        b, kk = ex.items.shape
        old = [[rank_of(ex.all_scores[r], int(ex.items[r, c]), float(ex.scores[r, c])) for c in range(kk)] for r in range(b)]
        # item tower: one item's source masked, the rest of the catalog unchanged
        imiss = ex.item_missing if ex.item_missing is not None else torch.zeros(b * kk, len(ex.item.names), dtype=torch.bool)
        ish = ex.item.shares.reshape(b * kk, -1)
        top = ish.masked_fill(imiss, float("-inf")).argmax(1)
        rand = torch.tensor([_pick(rng, ~imiss[j].numpy()) for j in range(b * kk)])
        other = torch.tensor([_pick(rng, ~imiss[j].numpy(), int(top[j])) for j in range(b * kk)])
        u_rep = ex.u.repeat_interleave(kk, dim=0)
        for name, drop in (("top", top), ("random", rand), ("random_other", other)):
            ok = drop >= 0
            s = masked_score(model.towers.item.fusion, ex.item_sources, ex.item_missing, drop.clamp_min(0), u_rep, normalize)
            for j in torch.nonzero(ok).flatten().tolist():
                r, c = divmod(j, kk)
                drops["item"][name].append(rank_of(ex.all_scores[r], int(ex.items[r, c]), float(s[j])) - old[r][c])
        # user tower: the user's source masked, every item rescored
        umiss = ex.user_missing
        ush = ex.user.shares  # (B, K, S_u)
        fusion = model.towers.user.fusion
        for r in range(b):
            avail = ~umiss[r]
            for c in range(kk):
                t = int(ush[r, c].masked_fill(~avail, float("-inf")).argmax())
                choices = {"top": t, "random": _pick(rng, avail.numpy()), "random_other": _pick(rng, avail.numpy(), t)}
                for name, d in choices.items():
                    if d < 0:
                        continue
                    m = umiss[r:r + 1] | F.one_hot(torch.tensor([d]), len(fusion.names)).bool()
                    u = fuse(fusion, {n: x[r:r + 1] for n, x in ex.user_sources.items()}, m, normalize)[0]
                    row = (u @ cat.items.T).masked_fill(torch.isinf(ex.all_scores[r]), float("-inf"))
                    item = int(ex.items[r, c])
                    drops["user"][name].append(rank_of(row, item, float(row[item])) - old[r][c])
    out = {}
    for tower, d in drops.items():
        top, rnd, oth = (np.asarray(d[x], dtype=np.float64) for x in ("top", "random", "random_other"))
        out[tower] = {"pairs": len(top), "mean_rank_drop_top": float(top.mean()), "mean_rank_drop_random": float(rnd.mean()),
                      "mean_rank_drop_random_other": float(oth.mean()) if len(oth) else None,
                      "median_rank_drop_top": float(np.median(top)), "median_rank_drop_random": float(np.median(rnd)),
                      "share_top_gt_random": float((top > rnd).mean()) if len(top) == len(rnd) else None,
                      "share_top_eq_random": float((top == rnd).mean()) if len(top) == len(rnd) else None,
                      "share_top_gt_random_other": float((top > oth).mean()) if len(top) == len(oth) else None}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--config")
    p.add_argument("--users", type=int, default=943, help="users sampled from the test split (>= 500)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--methods", nargs="+", default=["auto", "shapley-exact"])
    p.add_argument("--rationale-users", type=int, default=100)
    p.add_argument("--rationale-model", default=DEFAULT_MODEL)
    p.add_argument("--noun", default="movie")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    a = p.parse_args()
    torch.set_num_threads(1)
    model, data = load_model(a.ckpt, a.config)
    dataset_dir = Path(data["dataset_dir"]).expanduser()
    facts = ItemFacts(dataset_dir)
    cat = catalog(model, dataset_dir, "test", int(data.get("history_len", 50)))
    users = choose_users(facts, cat, sample=a.users, seed=a.seed)
    result: dict = {"checkpoint": str(Path(a.ckpt).resolve().relative_to(REPO)) if Path(a.ckpt).resolve().is_relative_to(REPO) else Path(a.ckpt).name,
                    "fusion": model.model_cfg.fusion, "normalize": model.model_cfg.normalize, "users": len(users), "k": a.k,
                    "item_sources": model.towers.item.names, "user_sources": model.towers.user.names, "deletion": {}, "cpu_seconds": {}}
    for method in a.methods:
        t = time.process_time()
        recs = []
        for s in range(0, len(users), 64):
            ex = explain_batch(model, cat, users[s:s + 64], a.k, method)
            recs += records(ex, cat, facts, "test", noun=a.noun)
        used = ex.item.method
        result["cpu_seconds"][f"explanation_without_rationale[{used}]"] = (time.process_time() - t) / len(recs)
        result["deletion"][used] = deletion(model, cat, users, a.k, method, a.seed)
        print(used, json.dumps(result["deletion"][used], indent=1), flush=True)
    if a.rationale_users:
        first = users[: a.rationale_users]
        ex = explain_batch(model, cat, first, 1, "auto")
        recs = records(ex, cat, facts, "test", noun=a.noun)
        t = time.process_time()
        gen = Rationale(a.rationale_model, seed=a.seed)
        result["cpu_seconds"]["rationale_model_load"] = time.process_time() - t
        t = time.process_time()
        texts = gen([r["_facts"] for r in recs])
        result["cpu_seconds"]["rationale_per_explanation"] = (time.process_time() - t) / len(recs)
        checker = GroundingChecker(facts.titles, facts.attribute_vocab())
        kinds: dict[str, list[int]] = {"title": [0, 0], "attribute": [0, 0]}
        with_name = with_bad = 0
        examples = []
        served = served_rationales(texts, [r["_facts"] for r in recs], checker, "template")
        s_named = sum(g.n_named for _, g, _, _ in served)
        s_grounded = sum(g.n_grounded for _, g, _, _ in served)
        for r, text, (_, _, g, origin) in zip(recs, texts, served):  # g: the model sentence's own grounding
            for kind, _, ok in g.named:
                kinds[kind][0] += ok
                kinds[kind][1] += 1
            with_name += g.n_named > 0
            with_bad += g.n_grounded < g.n_named
            if len(examples) < 5:
                examples.append({"prompt": r["prompt"], "rationale": text, "named": g.named, "served_as": origin})
        named = sum(v[1] for v in kinds.values())
        result["grounding"] = {"rationales": len(recs), "title_source": facts.title_source, "named": named,
                               "grounded": sum(v[0] for v in kinds.values()),
                               "share": sum(v[0] for v in kinds.values()) / named if named else None,
                               "by_kind": {k: {"grounded": v[0], "named": v[1]} for k, v in kinds.items()},
                               "rationales_naming_something": with_name, "rationales_with_an_ungrounded_name": with_bad,
                               "served": {"policy": "template", "named": s_named, "grounded": s_grounded,
                                          "share": s_grounded / s_named if s_named else None,
                                          "template_fallbacks": sum(o == "template" for *_, o in served)},
                               "examples": examples}
        print(json.dumps(result["grounding"], indent=1, default=str), flush=True)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
