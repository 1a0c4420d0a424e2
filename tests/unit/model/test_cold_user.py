"""Cold-start users end to end on the tiny fixture: the cold_user split leaks nothing into training or into the
evaluation history, and the model encodes a user without training interactions from its attributes alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules import layout
from data_modules.evaluation import RankingEvalSet, read_split
from data_modules.manifest import load_manifest
from data_modules.prepare import pipeline
from data_modules.prepare.config import PrepareConfig
from data_modules.side import SideData
from trainer.engine.module import FusionModule
from trainer.model.config import ModelConfig
from trainer.model.encoders.graph import GraphEncoder
from trainer.model.encoders.tabular import TabularEncoder

pytestmark = pytest.mark.unit
FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "tiny"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cold_user") / "tiny"
    cfg = PrepareConfig.from_dict({
        "source": {"format": "recbole", "path": str(FIXTURE), "name": "tiny"},
        "clean": {"rating_range": [1, 5], "max_bad_fraction": 0.05},
        "split": {"protocol": "cold_user", "ratios": [0.6, 0.2, 0.2], "seed": 2020},
        "output": {"dir": str(out), "shard_rows": 64, "block_rows": 16},
    })
    return pipeline.prepare(cfg).path


def test_manifest_records_the_held_out_users(prepared):
    m = load_manifest(prepared)
    assert m["split"]["protocol"] == "cold_user" and m["split"]["ratios"] == [0.6, 0.2, 0.2]
    assert m["split"]["eval_users"] == {"valid": 4, "test": 4}  # 20 users -> 12 / 4 / 4
    assert m["stats"]["users_without_training_interactions"] == 8
    assert m["counts"]["train"] + m["counts"]["valid"] + m["counts"]["test"] == m["stats"]["after_filter"]


def test_cold_users_have_no_history_nor_seen_items_at_evaluation(prepared):
    m = load_manifest(prepared)
    off = np.load(prepared / layout.SIDE / "history_offsets.npy")
    assert len(off) == m["counts"]["users"] + 1  # the history covers every user, cold ones with nothing
    train_users = set(read_split(prepared, m, "train")["user"])
    for split in ("valid", "test"):
        ds = RankingEvalSet(prepared, m, split, history_len=4)
        assert not train_users & set(ds.users.tolist())
        batch = ds.collate(ds.users.tolist())
        assert not batch["history_mask"].any() and batch["seen_cols"].numel() == 0
        assert batch["target_cols"].numel() == len(read_split(prepared, m, split))


def _module(prepared: Path, sources: list[str]) -> FusionModule:
    torch.manual_seed(0)
    module = FusionModule(model=ModelConfig(dim=16, sources=sources, fusion="gated"))
    module.build_towers(SideData(prepared), history_len=4)
    return module.eval()


def _test_batch(prepared: Path) -> dict[str, torch.Tensor]:
    m = load_manifest(prepared)
    ds = RankingEvalSet(prepared, m, "test", history_len=4)
    warm = int(read_split(prepared, m, "train")["user"].iloc[0])
    return ds.collate([*ds.users.tolist(), warm])  # the cold test users, then one warm user


@torch.no_grad()
def test_cold_user_vector_does_not_depend_on_its_untrained_id_row(prepared):
    module = _module(prepared, ["id", "tabular", "sequence", "graph"])
    batch = _test_batch(prepared)
    ctx = {**module.towers.context(), **batch}
    missing = module.user_missing(batch["user"])
    names = module.towers.user.names
    assert names == ["id", "tabular", "sequence", "graph"]
    # cold rows: id, sequence and (no edge at all) graph missing; tabular kept. The warm row: nothing missing.
    assert missing[:-1].tolist() == [[True, False, True, True]] * (len(batch["user"]) - 1)
    assert not missing[-1].any()
    before, gates = module.encode_eval_users(batch, ctx)
    assert torch.allclose(gates[:-1, names.index("tabular")], torch.ones(len(batch["user"]) - 1))
    module.towers.user.encoders["id"].embedding.weight[batch["user"]] += 1.0  # change every row in the batch
    module.towers.graph.embedding.weight[batch["user"]] += 1.0
    after, _ = module.encode_eval_users(batch, module.towers.context(batch))
    assert torch.allclose(before[:-1], after[:-1], atol=1e-6)  # cold users: untouched
    assert not torch.allclose(before[-1], after[-1])  # a warm user's id row does count


@torch.no_grad()
def test_id_only_model_has_nothing_to_encode_a_cold_user_with(prepared):
    module = _module(prepared, ["id"])
    batch = _test_batch(prepared)
    vecs, _ = module.encode_eval_users(batch, {**module.towers.context(), **batch})
    assert (vecs[:-1] == 0).all() and vecs[-1].norm() > 0.5  # every item ties: chance, by the metrics' tie order


def test_graph_keeps_cold_users_with_social_links():
    # users 0, 1 trained; user 2 cold but a friend of user 0; user 3 cold and alone
    graph = GraphEncoder(4, 3, np.array([0, 1]), np.array([0, 1]), dim=4, social=np.array([[2, 0]]))
    assert graph.isolated_users().tolist() == [False, False, False, True]


@torch.no_grad()
def test_codes_only_untrained_entities_carry_read_as_missing():
    # entity 2 never trains: its field-0 code 3, field-1 code 2 and genre 3 are its alone (a cold user's zip code)
    cat = np.array([[1, 1], [2, 1], [3, 2]])
    multi = {"genre": (np.array([0, 2, 3, 5]), np.array([1, 2, 1, 3, 1]), 4)}
    enc = TabularEncoder(cat, [4, 3], None, multi, dim=4, trained=np.array([True, True, False]))
    assert enc.cat_codes.tolist() == [[1, 1], [2, 1], [0, 0]]
    assert enc.multi_values_0.tolist() == [1, 2, 1, 0, 1]
    before = enc(torch.tensor([2]))
    enc.cat[0].weight[3] += 1.0
    enc.multi[0].weight[3] += 1.0
    assert torch.equal(before, enc(torch.tensor([2])))
    assert TabularEncoder(cat, [4, 3], None, multi, dim=4).cat_codes.tolist() == cat.tolist()  # no mask: as given
