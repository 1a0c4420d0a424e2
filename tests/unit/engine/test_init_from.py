"""`init_from` (trainer/engine/init_from.py): a parent checkpoint grows into a model of the appended dataset, old
rows equal to the parent's, new rows from side sources; a checkpoint of an unrelated dataset is refused."""

from pathlib import Path

import pytest
import torch

from data_modules.prepare import pipeline
from data_modules.prepare.append import with_appended
from data_modules.side import SideData
from tests.unit.data.test_prepare_append import NEW, parent_config
from trainer.engine.dataset_guard import KEY as DATASET_KEY
from trainer.engine.dataset_guard import DatasetMismatchError, dataset_identity
from trainer.engine.init_from import init_from_checkpoint, nearest_old
from trainer.engine.module import FusionModule

pytestmark = pytest.mark.unit
MODEL = {"dim": 8, "sources": ["id", "tabular", "sequence", "graph"], "fusion": "gated",
         "graph": {"layers": 1, "kg": True}, "sequence": {"layers": 1, "heads": 2, "dropout": 0.0}}


def module(root: Path, seed: int) -> FusionModule:
    torch.manual_seed(seed)
    m = FusionModule(model=MODEL, loss={"weights": {"softmax": 1.0, "mse": 0.5}})
    m.build_towers(SideData(root), history_len=8)
    return m


def save(m: FusionModule, root: Path, path: Path, identity: bool = True) -> Path:
    """What a Lightning checkpoint of `m` holds for init_from: the state dict and the dataset identity."""
    ckpt = {"state_dict": m.state_dict()}
    if identity:
        ckpt[DATASET_KEY] = dataset_identity(SideData(root).manifest, root)
    torch.save(ckpt, path)
    return path


@pytest.fixture()
def datasets(tmp_path):
    """Parent and child under a temporal split: the child's valid / test rows are the newest, never parent training."""
    cfg = parent_config(tmp_path / "parent", protocol="temporal")
    parent = pipeline.prepare(cfg).path
    child = pipeline.prepare(with_appended(cfg, [str(NEW)], str(tmp_path / "child"))).path
    return parent, child


def test_init_from_grows_tables_and_keeps_the_parents_rows(tmp_path, datasets):
    parent_dir, child_dir = datasets
    parent = module(parent_dir, seed=0)
    ckpt = save(parent, parent_dir, tmp_path / "parent.ckpt")
    child = module(child_dir, seed=1)
    fresh = {k: v.clone() for k, v in child.state_dict().items()}
    report = init_from_checkpoint(child, ckpt, SideData(child_dir).manifest, child_dir)
    p, c = parent.state_dict(), child.state_dict()
    uid, iid = "towers.user.encoders.id.embedding.weight", "towers.item.encoders.id.embedding.weight"
    assert p[uid].shape == (20, 8) and c[uid].shape == (22, 8) and c[iid].shape == (17, 8)
    torch.testing.assert_close(c[uid][:20], p[uid], rtol=0, atol=0)
    torch.testing.assert_close(c[iid][:16], p[iid], rtol=0, atol=0)
    for name in ("towers.rating_head.user_bias.weight", "towers.user.encoders.tabular.cat.2.weight",
                 "towers.item.encoders.tabular.multi.0.weight"):
        name = name if name in c else name.replace("towers.", "", 1)
        old = p[name].shape[0]
        assert c[name].shape[0] > old, name
        torch.testing.assert_close(c[name][:old], p[name], rtol=0, atol=0)
        torch.testing.assert_close(c[name][old:], fresh[name][old:], rtol=0, atol=0)  # new vocabulary: init
    g = "towers.graph.embedding.weight"  # nodes: users, items, kg entities
    torch.testing.assert_close(c[g][:20], p[g][:20], rtol=0, atol=0)
    torch.testing.assert_close(c[g][22:38], p[g][20:36], rtol=0, atol=0)
    torch.testing.assert_close(c[g][39:], p[g][36:], rtol=0, atol=0)
    same = [k for k in p if p[k].shape == c[k].shape]
    assert len(same) > 20 and all(torch.equal(c[k], p[k]) for k in same)
    # new users / items: the mean of their nearest old ones by the tabular source (computed with loaded weights)
    assert report["from_side"] == {"user_id": 2, "graph_user": 2, "item_id": 1, "graph_item": 1}
    rows, idx = nearest_old(child.towers.user, 20, 22)
    assert rows.tolist() == [20, 21] and idx.shape == (2, 10)
    torch.testing.assert_close(c[uid][20:], p[uid][idx].mean(dim=1))
    torch.testing.assert_close(c[g][20:22], p[g][idx].mean(dim=1))
    rows, idx = nearest_old(child.towers.item, 16, 17)
    torch.testing.assert_close(c[iid][16:], p[iid][idx].mean(dim=1))
    # the same dataset is accepted too (a plain warm start); every tensor is then copied as is
    again = module(parent_dir, seed=2)
    assert init_from_checkpoint(again, ckpt, SideData(parent_dir).manifest, parent_dir)["grown"] == {}
    assert all(torch.equal(v, p[k]) for k, v in again.state_dict().items())


def test_init_from_refuses_an_unrelated_dataset(tmp_path, datasets):
    _, child_dir = datasets
    other_dir = pipeline.prepare(parent_config(tmp_path / "other")).path  # another split of the same files
    ckpt = save(module(other_dir, seed=0), other_dir, tmp_path / "other.ckpt")
    child = module(child_dir, seed=1)
    before = {k: v.clone() for k, v in child.state_dict().items()}
    with pytest.raises(DatasetMismatchError, match="neither the dataset given.*nor one of its ancestors"):
        init_from_checkpoint(child, ckpt, SideData(child_dir).manifest, child_dir)
    assert all(torch.equal(v, before[k]) for k, v in child.state_dict().items())  # nothing loaded
    bare = save(module(other_dir, seed=0), other_dir, tmp_path / "bare.ckpt", identity=False)
    with pytest.raises(DatasetMismatchError, match="records no prepared-dataset fingerprint"):
        init_from_checkpoint(child, bare, SideData(child_dir).manifest, child_dir)


def test_init_from_refuses_a_parent_that_trained_on_the_childs_test_rows(tmp_path):
    cfg = parent_config(tmp_path / "parent")  # RecBole's random split, redrawn over the grown table by the child
    parent_dir = pipeline.prepare(cfg).path
    child_dir = pipeline.prepare(with_appended(cfg, [str(NEW)], str(tmp_path / "child"))).path
    ckpt = save(module(parent_dir, seed=0), parent_dir, tmp_path / "parent.ckpt")
    manifest = SideData(child_dir).manifest
    with pytest.raises(DatasetMismatchError, match="were training interactions of the parent"):
        init_from_checkpoint(module(child_dir, seed=1), ckpt, manifest, child_dir)
    report = init_from_checkpoint(module(child_dir, seed=1), ckpt, manifest, child_dir, allow_change=True)
    assert report["grown"]  # allowed explicitly: loads


def test_init_from_refuses_another_model_config(tmp_path, datasets):
    parent_dir, child_dir = datasets
    ckpt = save(module(parent_dir, seed=0), parent_dir, tmp_path / "parent.ckpt")
    torch.manual_seed(0)
    wider = FusionModule(model={**MODEL, "dim": 16}, loss={"weights": {"softmax": 1.0, "mse": 0.5}})
    wider.build_towers(SideData(child_dir), history_len=8)
    with pytest.raises(ValueError, match="only embedding tables may grow"):
        init_from_checkpoint(wider, ckpt, SideData(child_dir).manifest, child_dir)
