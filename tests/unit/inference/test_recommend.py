"""Serving top-K (trainer/inference/recommend.py, ann_index.py): on a tiny model trained for real and exported,
`recommend` (HNSW index and exact) returns the live model's exact top-K with seen items filtered, its attribution
is explain's; on a generated clustered catalog the HNSW index reaches recall@10 >= 0.99 and filters exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml

from data_modules.datamodule import FusionDataModule
from tests.helpers.tiny_dataset import prepare_tiny
from trainer.engine.module import FusionModule
from trainer.inference.ann_index import ExactIndex, HNSWConfig, HNSWIndex, recall_at_k
from trainer.inference.explain.core import catalog, explain_batch
from trainer.inference.export import all_embeddings, export, load_model
from trainer.inference.recommend import main, open_export, recommend

pytestmark = pytest.mark.unit
MODEL = {"model": {"dim": 16, "sources": ["id", "tabular", "sequence", "graph"], "fusion": "gated",
                   "graph": {"layers": 1}, "sequence": {"layers": 1, "heads": 2, "dropout": 0.0}},
         "loss": {"weights": {"softmax": 1.0}, "temperature": 0.1}, "optim": {"lr": 0.01, "warmup_steps": 2},
         "metrics_k": [5, 10], "monitor_k": 10}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """The tiny dataset prepared for real, a model trained 2 epochs by Lightning, its checkpoint and export."""
    root = tmp_path_factory.mktemp("recommend")
    data = prepare_tiny(root / "data")
    pl.seed_everything(0)
    dm = FusionDataModule(dataset_dir=str(data), batch_size=32, eval_batch_size=8, history_len=8)
    model = FusionModule(**MODEL)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    ckpt = root / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    run = root / "run.yaml"
    run.write_text(yaml.safe_dump({"model": MODEL, "data": {"dataset_dir": str(data), "history_len": 8}}))
    out = export(ckpt, root / "export", run, progress=False)
    return {"root": root, "data": data, "ckpt": ckpt, "run": run, "out": out}


def _live_top_k(exported: dict, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, items) (n_users, k): the live model scored as evaluation scores it, seen items at -inf."""
    model, _ = load_model(exported["ckpt"], exported["run"])
    users, items = all_embeddings(model, exported["data"], 8, "test", progress=False)
    scores = users @ items.T
    cat = catalog(model, exported["data"], "test", 8)
    batch = cat.eval_set.collate(list(range(len(users))))
    scores[batch["seen_rows"], batch["seen_cols"]] = float("-inf")
    return scores.topk(k, dim=1)


def test_export_writes_the_index_seen_items_and_says_how(exported):
    out = exported["out"]
    meta = json.loads((out / "config.json").read_text())
    ret = meta["retrieval"]
    assert ret["kind"] == "faiss-hnsw" and ret["items_indexed"] == 16 and ret["candidates"] == "all items"
    assert ret["hnsw"] == {"m": 32, "ef_construction": 100, "ef_search": 128}
    assert (out / "item_index.faiss").is_file() and (out / "seen.safetensors").is_file()
    assert meta["history_len"] == 8 and meta["split"] == "test"
    assert not list(out.parent.glob(".export.*"))  # the temporary folder was renamed into place


def test_recommend_equals_the_live_models_exact_top_k_with_seen_items_filtered(exported):
    exp = open_export(exported["out"])
    k = 5
    want = _live_top_k(exported, k)
    users = list(range(len(exp.users)))
    for exact in (True, False):  # 16 items: the graph finds all of them, so both paths are exact here
        got = recommend(exp, users, k, exact=exact)
        for u, (scores, items) in zip(users, got):
            assert items.tolist() == want.indices[u].tolist(), (exact, u)
            np.testing.assert_allclose(scores, want.values[u].numpy(), rtol=0, atol=1e-5)
            assert not set(items.tolist()) & set(exp.seen(u).tolist())
    ds = catalog(load_model(exported["ckpt"], exported["run"])[0], exported["data"], "test", 8).eval_set
    for u in users:  # train + valid items: what evaluation masks for the test split
        assert exp.seen(u).tolist() == np.unique(ds.seq_items[ds.seq_offsets[u]:ds.seq_offsets[u + 1]]).tolist()


def test_recommend_cli_batch_with_attribution_matches_explain(exported, tmp_path, capsys):
    exp = open_export(exported["out"])
    users_file = tmp_path / "users.txt"
    users_file.write_text("\n".join(exp.user_ids[:3]) + "\n")
    out = tmp_path / "recs.jsonl"
    assert main(["--export", str(exported["out"]), "--users-file", str(users_file), "--k", "4", "--attribution",
                 "--out", str(out)]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["user"] for r in recs] == exp.user_ids[:3] and all(len(r["items"]) == 4 for r in recs)
    model, _ = load_model(exported["ckpt"], exported["run"])
    ex = explain_batch(model, catalog(model, exported["data"], "test", 8), [0, 1, 2], 4)
    for r, rec in enumerate(recs):
        assert [i["item_index"] for i in rec["items"]] == ex.items[r].tolist()
        for c, item in enumerate(rec["items"]):
            att = item["attribution"]
            assert att["item"]["method"] == "gated-exact"
            shares = np.array(list(att["item"]["shares"].values()))
            np.testing.assert_allclose(shares, ex.item.shares[r, c].numpy(), rtol=0, atol=1e-5)
            np.testing.assert_allclose(shares.sum(), item["score"], rtol=0, atol=1e-5)  # gated: shares sum to it
            np.testing.assert_allclose(sum(att["user"]["shares"].values()), item["score"], rtol=0, atol=1e-5)
    assert main(["--export", str(exported["out"]), "--user", exp.user_ids[0], "--k", "2"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["retrieval"] == "faiss-hnsw" and [i["item"] for i in line["items"]] == [
        i["item"] for i in recs[0]["items"][:2]]
    assert main(["--export", str(exported["out"]), "--user", "no-such-user"]) == 2
    assert "unknown user id(s) ['no-such-user']" in capsys.readouterr().err


def test_export_replaces_an_earlier_export_whole_and_refuses_other_folders(exported, tmp_path):
    out = exported["out"]
    before = (out / "model.safetensors").read_bytes()
    export(exported["ckpt"], out, exported["run"], progress=False, hnsw=HNSWConfig(m=8, ef_search=16))
    assert json.loads((out / "config.json").read_text())["retrieval"]["hnsw"]["m"] == 8
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not a fusionrec export"):
        export(exported["ckpt"], other, exported["run"], progress=False)
    assert (other / "mine.txt").read_text() == "keep me"


def clustered(n: int, d: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around sqrt(n) centres of uneven sizes (as benchmarks/ann_retrieval.py draws them)."""
    rng = np.random.default_rng(seed)
    nc = int(np.sqrt(n))
    weights = rng.dirichlet(np.full(nc, 0.5))
    centres = rng.standard_normal((nc, d)).astype(np.float32)
    x = centres[rng.choice(nc, n, p=weights)] + rng.standard_normal((n, d)).astype(np.float32)
    q = centres[rng.choice(nc, queries, p=weights)] + 1.2 * rng.standard_normal((queries, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)


def test_hnsw_recall_on_a_clustered_catalog_and_exact_filtering(tmp_path: Path):
    x, q = clustered(5000, 32, 200)
    exact = ExactIndex(x)
    ann = HNSWIndex.build(exact, HNSWConfig())
    truth = [ids for _, ids in exact.search(q, 10)]
    found = [ids for _, ids in ann.search(q, 10)]
    assert recall_at_k(found, truth) >= 0.99
    # the brute-force top 10 is the numpy ranking itself
    s = q @ x.T
    assert all(t.tolist() == np.argsort(-s[i], kind="stable")[:10].tolist() for i, t in enumerate(truth))
    # excluding each query's exact top 5: neither path returns them, and the exact path returns ranks 6..15
    ex = [t[:5] for t in truth]
    ex_exact = exact.search(q, 10, ex)
    for i, ((_, a), (_, b)) in enumerate(zip(ann.search(q, 10, ex), ex_exact)):
        assert not set(a.tolist()) & set(ex[i].tolist()) and not set(b.tolist()) & set(ex[i].tolist())
        assert b.tolist() == np.argsort(-s[i], kind="stable")[5:15].tolist()
    assert recall_at_k([a for _, a in ann.search(q, 10, ex)], [b for _, b in ex_exact]) >= 0.99
    ann.save(tmp_path / "index.faiss")
    again = HNSWIndex.load(tmp_path / "index.faiss", exact, HNSWConfig())
    assert [a.tolist() for _, a in again.search(q, 10)] == [a.tolist() for a in found]
    with pytest.raises(ValueError, match="re-run `fusionrec export`"):
        HNSWIndex.load(tmp_path / "index.faiss", ExactIndex(x[:100]), HNSWConfig())


def test_an_index_over_part_of_the_catalog_returns_catalog_ids():
    x, q = clustered(2000, 16, 20, seed=1)
    part = np.arange(0, 2000, 3)  # e.g. the cold items under cold_start_eval
    exact = ExactIndex(x[part], part)
    for _, ids in HNSWIndex.build(exact).search(q, 10, [part[:4]] * len(q)):
        assert set(ids.tolist()) <= set(part[4:].tolist()) and len(ids) == 10
