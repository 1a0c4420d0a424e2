"""`fusionrec explain --ckpt CKPT (--users ID... | --users-file F | --sample N) --out DIR`: why each top-K item.

For each chosen user (raw ids through the dataset's id map, or a seeded sample of the split's users) and each of
their top-K unseen items, scored as evaluation scores them (core.py), it writes:

    DIR/explanations.jsonl   one record per (user, item): rank, score, the score's shares by item source and by user
                             source with the method used (attribution.py: exact for the gated head, exact Shapley
                             over source masks otherwise), the head's gates, the supporting history items (cosine
                             of fused item vectors), the item's title, text and attributes (facts.py), the prompt
                             and the one-sentence rationale (rationale.py), and the rationale's grounding check
    DIR/explanations.md      the same as readable tables, one per user
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainer.inference.explain.attribution import Shares
from trainer.inference.explain.core import (
    BatchExplanation,
    Catalog,
    catalog,
    explain_batch,
    supporting_history,
)
from trainer.inference.explain.facts import ItemFacts
from trainer.inference.explain.rationale import (
    DEFAULT_MODEL,
    Facts,
    GroundingChecker,
    Rationale,
    served_rationales,
)

log = logging.getLogger("fusionrec.explain")
__all__ = ["explain", "main"]


def choose_users(facts: ItemFacts, cat: Catalog, users: Sequence[str] | None = None, users_file: str | None = None,
                 sample: int | None = None, seed: int = 0) -> list[int]:
    """Dense user ids: raw ids (given or one per line of a file) through the id map, or `sample` users drawn with
    `seed` from those the split evaluates (users with held-out items)."""
    raw = list(users or [])
    if users_file:
        raw += [line.strip() for line in Path(users_file).read_text().splitlines() if line.strip()]
    if raw:
        index = {u: i for i, u in enumerate(facts.user_ids)}
        unknown = [u for u in raw if u not in index]
        if unknown:
            raise ValueError(f"unknown user id(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''}: not in the "
                             f"dataset's id map ({len(index)} users, e.g. {facts.user_ids[:3]})")
        return [index[u] for u in raw]
    if not sample:
        raise ValueError("choose users: give --users, --users-file or --sample N")
    pool = np.asarray(cat.eval_set.users)
    pool = pool[pool >= 0]
    rng = np.random.default_rng(seed)
    return sorted(int(u) for u in rng.choice(pool, size=min(sample, len(pool)), replace=False))


def _shares(sh: Shares, row: int, col: int) -> dict[str, Any]:
    vals = sh.shares[row, col] if sh.shares.dim() == 3 else sh.shares[row]
    gates = None
    if sh.gates is not None:
        g = sh.gates[row, col] if sh.gates.dim() == 3 else sh.gates[row]
        gates = {n: round(float(x), 6) for n, x in zip(sh.names, g)}
    return {"method": sh.method, "shares": {n: float(x) for n, x in zip(sh.names, vals)},
            "baseline": float(sh.baseline[row, col]), "score": float(sh.score[row, col]), "gates": gates}


def records(ex: BatchExplanation, cat: Catalog, facts: ItemFacts, split: str, n_support: int = 3,
            noun: str = "item") -> list[dict[str, Any]]:
    """One JSON-ready record per (user, item) of the batch, without the rationale (added by `explain`)."""
    out = []
    for r in range(ex.items.shape[0]):
        user = int(ex.users[r])
        for c in range(ex.items.shape[1]):
            item = int(ex.items[r, c])
            isha, usha = _shares(ex.item, r, c), _shares(ex.user, r, c)
            support = [{"item": facts.ids[h], "title": facts.title(h), "cosine": round(cos, 4)}
                       for h, cos in supporting_history(cat, item, ex.history[r], n_support)]
            top_source = max(isha["shares"], key=isha["shares"].get)
            f = Facts(facts.title(item), facts.attributes(item), [s["title"] for s in support], top_source, noun)
            out.append({
                "user": facts.user_ids[user], "user_index": user, "split": split, "rank": c + 1,
                "item": facts.ids[item], "item_index": item, "score": float(ex.scores[r, c]),
                "attribution": {"item": isha, "user": usha, "top_item_source": top_source,
                                "top_user_source": max(usha["shares"], key=usha["shares"].get)},
                "support": support, "history_length": int(len(ex.history[r])),
                "facts": {"title": f.title, "text": facts.text(item), "attributes": f.attributes},
                "prompt": f.prompt(), "rationale": None, "_facts": f,
            })
    return out


def _fmt_shares(s: dict[str, Any]) -> str:
    return ", ".join(f"{n} {v:+.3f}" for n, v in sorted(s["shares"].items(), key=lambda kv: -abs(kv[1])))


def markdown(recs: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# Explanations: {meta['checkpoint']}", "",
             f"Split {meta['split']} (users conditioned as evaluation conditions them, seen items masked), top {meta['k']}. "
             f"Item attribution: {meta['item_method']}; user attribution: {meta['user_method']} "
             f"({'shares sum to the score' if meta['item_method'] == 'gated-exact' else 'Shapley values sum to score(all) - score(none)'}). "
             f"Supporting history: cosine of fused item vectors. Titles from {meta['title_source']}. "
             f"Rationales: {meta['rationale_model'] or 'none'}.", ""]
    by_user: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        by_user.setdefault(r["user"], []).append(r)
    for user, rs in by_user.items():
        lines += [f"## User {user}", "",
                  "| rank | item | score | by item source | by user source | supporting history | rationale |",
                  "|---|---|---|---|---|---|---|"]
        for r in rs:
            attrs = "; ".join(f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                              for k, v in r["facts"]["attributes"].items())
            hist = "; ".join(f"{s['title']} ({s['cosine']:.2f})" for s in r["support"])
            cells = [str(r["rank"]), f"{r['facts']['title']} ({attrs})" if attrs else r["facts"]["title"],
                     f"{r['score']:.4f}", _fmt_shares(r["attribution"]["item"]), _fmt_shares(r["attribution"]["user"]),
                     hist, r["rationale"] or ""]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def explain(checkpoint: str | Path, out: str | Path, config: str | Path | None = None, users: Sequence[str] | None = None,
            users_file: str | None = None, sample: int | None = None, k: int = 10, split: str = "test",
            rationale_model: str | None = DEFAULT_MODEL, method: str = "auto", seed: int = 0, noun: str = "item",
            trust_remote_code: bool = False, allow_dataset_change: bool = False, batch_size: int = 64,
            ungrounded: str = "template") -> dict[str, Any]:
    """Write explanations.jsonl and explanations.md under `out`; return the run's summary (also in the JSONL's
    companion `explain.json`)."""
    from trainer.inference.export import load_model

    t0 = time.process_time()
    model, data = load_model(checkpoint, config, allow_dataset_change)
    dataset_dir = Path(data["dataset_dir"]).expanduser()
    facts = ItemFacts(dataset_dir)
    cat = catalog(model, dataset_dir, split, int(data.get("history_len", 50)))
    chosen = choose_users(facts, cat, users, users_file, sample, seed)
    t_setup = time.process_time() - t0
    recs: list[dict[str, Any]] = []
    methods = {}
    t1 = time.process_time()
    for a in range(0, len(chosen), batch_size):
        ex = explain_batch(model, cat, chosen[a:a + batch_size], k, method)
        methods = {"item_method": ex.item.method, "user_method": ex.user.method}
        recs += records(ex, cat, facts, split, noun=noun)
    t_attr = time.process_time() - t1
    t_rat = 0.0
    grounded = named = model_grounded = model_named = fallbacks = 0
    if rationale_model:
        t2 = time.process_time()
        gen = Rationale(rationale_model, seed=seed, trust_remote_code=trust_remote_code)
        texts = gen([r["_facts"] for r in recs])
        checker = GroundingChecker(facts.titles, facts.attribute_vocab())
        served = served_rationales(texts, [r["_facts"] for r in recs], checker, ungrounded)
        for r, model_text, (text, g, g_model, origin) in zip(recs, texts, served):
            r["rationale"], r["rationale_origin"] = text, origin
            r["grounding"] = {"named": [{"kind": kd, "name": n, "grounded": ok} for kd, n, ok in g.named]}
            if origin == "template":  # what the model wrote, and the names that were not in its facts
                r["model_rationale"] = {"text": model_text, "ungrounded": [n for _, n, ok in g_model.named if not ok]}
            grounded, named = grounded + g.n_grounded, named + g.n_named
            model_grounded, model_named = model_grounded + g_model.n_grounded, model_named + g_model.n_named
            fallbacks += origin == "template"
        t_rat = time.process_time() - t2
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"checkpoint": str(checkpoint), "dataset_dir": str(dataset_dir), "split": split, "k": k, "users": len(chosen),
            "explanations": len(recs), **methods, "title_source": facts.title_source,
            "rationale_model": rationale_model, "seed": seed,
            "grounding": {"named": named, "grounded": grounded, "share": grounded / named if named else None,
                          "model_named": model_named, "model_grounded": model_grounded,
                          "model_share": model_grounded / model_named if model_named else None,
                          "ungrounded_policy": ungrounded, "template_fallbacks": fallbacks},
            "cpu_seconds": {"setup": round(t_setup, 2), "attribution": round(t_attr, 2), "rationale": round(t_rat, 2),
                            "per_explanation_without_rationale": t_attr / max(1, len(recs)),
                            "per_explanation_with_rationale": (t_attr + t_rat) / max(1, len(recs))}}
    with open(out / "explanations.jsonl.tmp", "w") as fh:
        for r in recs:
            fh.write(json.dumps({k_: v for k_, v in r.items() if not k_.startswith("_")}) + "\n")
    (out / "explanations.jsonl.tmp").replace(out / "explanations.jsonl")
    (out / "explanations.md").write_text(markdown(recs, meta) + "\n")
    (out / "explain.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("wrote %d explanations of %d users to %s (%s / %s)", len(recs), len(chosen), out, meta.get("item_method"),
             meta.get("user_method"))
    return meta


def main(argv: Sequence[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="fusionrec explain", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="Lightning .ckpt file (or DeepSpeed folder)")
    p.add_argument("--config", help="run config (default: config.yaml in the checkpoint's log folder)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", nargs="+", help="raw user ids (as in the raw data)")
    who.add_argument("--users-file", help="file with one raw user id per line")
    who.add_argument("--sample", type=int, help="N users drawn (--seed) from the split's evaluated users")
    p.add_argument("--k", type=int, default=10, help="items per user (default 10)")
    p.add_argument("--split", default="test", choices=("valid", "test"),
                   help="conditioning: valid = train history, test = train + valid history (default test)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--rationale-model", default=DEFAULT_MODEL,
                   help=f"causal LM for the one-sentence rationale (default {DEFAULT_MODEL}); 'none' skips it")
    p.add_argument("--attribution", default="auto", choices=("auto", "gated-exact", "shapley-exact"),
                   help="auto: exact decomposition for a gated head, exact Shapley over source masks otherwise")
    p.add_argument("--noun", default="item", help="what an item is called in the prompt (movie, product, ...)")
    p.add_argument("--seed", type=int, default=0, help="user sample and decoding seed")
    p.add_argument("--ungrounded", default="template", choices=("template", "keep"),
                   help="a model sentence naming a title / attribute not in its facts: replaced by a sentence built "
                        "from the facts (template, default) or kept")
    p.add_argument("--trust-remote-code", action="store_true", help="let the rationale model run its own code")
    p.add_argument("--allow-dataset-change", action="store_true",
                   help="explain even if the run config's prepared dataset is not the one the checkpoint was trained on")
    a = p.parse_args(list(argv))
    model = None if a.rationale_model.lower() == "none" else a.rationale_model
    try:
        meta = explain(a.ckpt, a.out, a.config, a.users, a.users_file, a.sample, a.k, a.split, model, a.attribution,
                       a.seed, a.noun, a.trust_remote_code, a.allow_dataset_change, ungrounded=a.ungrounded)
    except (FileNotFoundError, ValueError) as e:
        print(f"fusionrec explain: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {Path(a.out) / 'explanations.jsonl'} and {Path(a.out) / 'explanations.md'} "
          f"({meta['explanations']} explanations, {meta['users']} users; item attribution {meta.get('item_method')})")
    return 0
