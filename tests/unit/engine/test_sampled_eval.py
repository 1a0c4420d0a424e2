"""Sampled-negative ranking equals full ranking of a matrix that is -inf outside the candidates (RecBole's
construction); the module's evaluation gives the same numbers whatever its block size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_modules.evaluation import RankingEvalSet
from data_modules.prepare import pipeline
from data_modules.prepare.config import PrepareConfig
from data_modules.prepare.negatives import stored
from data_modules.side import SideData
from trainer.engine.evaluator import EvalConfig, SampledEval, candidate_top
from trainer.engine.metrics import metrics_at, ranking_metrics
from trainer.engine.module import FusionModule

pytestmark = pytest.mark.unit
FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "tiny"
KS = [1, 3, 10]


@pytest.mark.parametrize("levels", [0, 3])  # 0: continuous scores; 3: three distinct values (ties everywhere)
def test_candidates_rank_like_a_masked_full_matrix(levels):
    g = torch.Generator().manual_seed(levels)
    b, n = 40, 200
    full = torch.randn(b, n, generator=g) if not levels else torch.randint(0, levels, (b, n), generator=g).float()
    rows, cols, relevant = [], [], []
    for r in range(b):
        cand = torch.randperm(n, generator=g)[: int(torch.randint(2, 30, (1,), generator=g))]
        rel = cand[: int(torch.randint(1, 3, (1,), generator=g))].tolist()
        rows.append(torch.full((len(cand),), r)), cols.append(cand.sort().values), relevant.append(rel)
    rows, cols = torch.cat(rows), torch.cat(cols)
    masked = torch.full((b, n), float("-inf"))
    masked[rows, cols] = full[rows, cols]  # RecBole: scores of the candidates, -inf elsewhere
    expect, _ = ranking_metrics(masked, relevant, KS)
    got, _ = metrics_at(candidate_top(full[rows, cols], rows, cols, b, n, max(KS)), relevant, KS, n)
    for name in expect:
        assert torch.equal(expect[name], got[name]), name


def test_eval_config_rejects_protocols_the_dataset_lacks():
    with pytest.raises(ValueError, match=r"\['pop10'\] not stored with the prepared dataset"):
        EvalConfig(sampled=["pop10"]).protocols(["uni5"], "data/x")
    assert EvalConfig().protocols(["uni5", "pop5"], "x") == ["pop5", "uni5"]
    with pytest.raises(ValueError, match="block_items"):
        EvalConfig(block_items=0)


def _evaluate(module: FusionModule, ds: RankingEvalSet, side: SideData) -> dict[str, list[float]]:
    module._start_eval()  # no trainer here: the protocols come from the dataset directly
    module.sampled = SampledEval(module.eval_cfg.protocols(stored(side.manifest), "tiny"), module.metrics_k)
    with torch.no_grad():
        for a in range(0, len(ds), 6):
            module._eval_step(ds.collate([ds[i] for i in range(a, min(a + 6, len(ds)))]))
    out = {"full": module.ranking.state()[0].tolist()}
    out.update({name: acc.state()[0].tolist() for name, acc in module.sampled.accumulators.items()})
    return out


def test_module_evaluation_is_the_same_for_any_block_size(tmp_path):
    root = pipeline.prepare(PrepareConfig.from_dict({
        "source": {"format": "recbole", "path": str(FIXTURE), "name": "tiny"},
        "clean": {"rating_range": [1, 5]},
        "negatives": {"protocols": ["uni5", "pop5"]},
        "output": {"dir": str(tmp_path / "out")},
    })).path
    side = SideData(root)
    ds = RankingEvalSet(root, side.manifest, "valid", history_len=4)
    results = []
    for block in (16, 5, 1):  # 16 items: one block (dense); 5 and 1: block-wise
        torch.manual_seed(0)
        m = FusionModule(model={"dim": 8, "sources": ["id", "tabular"]}, metrics_k=[3, 10], monitor_k=10,
                         evaluation={"block_items": block})
        m.build_towers(side, history_len=4)
        m.eval()
        results.append(_evaluate(m, ds, side))
    assert sorted(results[0]) == ["full", "pop5", "uni5"]
    assert results[0] == results[1] == results[2]
    assert results[0]["full"] != results[0]["uni5"]  # 16 items ranked vs ~6 candidates: different numbers


def test_lightning_validation_logs_sampled_metrics_beside_full_ranking(tmp_path):
    import pytorch_lightning as pl

    from data_modules.datamodule import FusionDataModule

    root = pipeline.prepare(PrepareConfig.from_dict({
        "source": {"format": "recbole", "path": str(FIXTURE), "name": "tiny"},
        "clean": {"rating_range": [1, 5]},
        "negatives": {"protocols": ["uni5"]},
        "output": {"dir": str(tmp_path / "out")},
    })).path
    logged = []
    for block in (16, 4):
        pl.seed_everything(0)
        dm = FusionDataModule(dataset_dir=str(root), eval_batch_size=6, history_len=4)
        module = FusionModule(model={"dim": 8, "sources": ["id"]}, metrics_k=[5, 10], monitor_k=10,
                              evaluation={"block_items": block, "sampled": ["uni5"]})
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False)
        logged.append(trainer.validate(module, datamodule=dm, verbose=False)[0])
    names = set(logged[0])
    assert {"val/ndcg@10", "val/uni5/ndcg@10", "val/uni5/recall@5", "val/uni5/mrr@10"} <= names
    assert logged[0] == logged[1]  # the same numbers with 4-item blocks as with one 16-item block
    # 1 held-out item among 1 + 5 distinct-or-fewer candidates: hit@5 can only miss when it ranks 6th
    assert 0 < logged[0]["val/uni5/hit@5"] <= 1 and logged[0]["val/uni5/hit@10"] == 1.0


def test_predict_top_items_are_the_same_in_blocks_and_equal_plain_topk(tmp_path):
    import pytorch_lightning as pl

    from data_modules.datamodule import FusionDataModule

    root = pipeline.prepare(PrepareConfig.from_dict({
        "source": {"format": "recbole", "path": str(FIXTURE), "name": "tiny"},
        "clean": {"rating_range": [1, 5]},
        "output": {"dir": str(tmp_path / "out")},
    })).path
    runs = []
    for block in (16, 3):
        pl.seed_everything(0)
        dm = FusionDataModule(dataset_dir=str(root), eval_batch_size=6, history_len=4)
        module = FusionModule(model={"dim": 8, "sources": ["id"]}, predict_top_k=5, evaluation={"block_items": block})
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False)
        runs.append((module, dm, trainer.predict(module, datamodule=dm)))
    for a, b in zip(runs[0][2], runs[1][2]):
        # a (B, 3) matmul may round the last bit unlike a (B, 16) one (BLAS picks kernels by shape): scores are
        # equal to float precision, and ranking a given score matrix is exact (tests/unit/engine/test_topk_blocks.py)
        assert torch.equal(a["items"], b["items"]) and torch.allclose(a["scores"], b["scores"], rtol=1e-6, atol=0)
    # the plain dense ranking (what predict did before): continuous scores, so the same items
    module, dm, out = runs[0]
    batch = next(iter(dm.predict_dataloader()))
    with torch.no_grad():
        user, _ = module.encode_eval_users(batch, {**module.towers.context(), **batch})
        scores = user @ module._all_items(module.towers.context()).T
    scores[batch["seen_rows"], batch["seen_cols"]] = float("-inf")
    assert torch.equal(scores.topk(5, dim=1).indices, out[0]["items"])
