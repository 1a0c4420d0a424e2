"""The training step builds the (B, C) in-batch score matrix only for the softmax, which is its only reader."""

from __future__ import annotations

import pytest
import torch

from data_modules.side import SideData
from tests.helpers.tiny_dataset import prepare_tiny
from trainer.engine.module import FusionModule
from trainer.model.losses import BPRLoss

pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore:You are trying to")]


@pytest.fixture(scope="module")
def side(tmp_path_factory) -> SideData:
    out = tmp_path_factory.mktemp("inbatch") / "tiny"
    prepare_tiny(out)
    return SideData(out)


def _step(side: SideData, weights: dict[str, float], negatives: bool = True):
    torch.manual_seed(0)
    m = FusionModule(model={"dim": 8, "sources": ["id"]}, loss={"weights": weights})
    m.build_towers(side, history_len=4)
    seen = []
    m.objective.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    batch = {"user": torch.tensor([0, 1, 2]), "item": torch.tensor([0, 1, 2])}
    if negatives:
        batch["neg_items"] = torch.tensor([[3], [4], [0]])
    loss = m.training_step(batch, 0)
    return m, batch, loss, seen[0]


def test_bpr_step_skips_the_in_batch_matrix_and_keeps_its_loss(side):
    m, batch, loss, scores = _step(side, {"bpr": 1.0})
    assert scores.in_batch is None and scores.cand_items is None
    # the same loss as BPR over the towers' vectors, computed here from scratch
    t = m.towers
    user = torch.nn.functional.normalize(t.encode_users(batch["user"], t.context(batch))[0], dim=-1)
    pos = torch.nn.functional.normalize(t.encode_items(batch["item"], t.context(batch))[0], dim=-1)
    neg = torch.nn.functional.normalize(t.encode_items(batch["neg_items"].reshape(-1), t.context(batch))[0], dim=-1)
    expect = -torch.nn.functional.logsigmoid((user * pos).sum(-1) - (user * neg).sum(-1)).mean()
    torch.testing.assert_close(loss, expect)
    assert BPRLoss()(scores).item() == pytest.approx(expect.item())


def test_softmax_step_still_scores_every_in_batch_candidate(side):
    _, _, loss, scores = _step(side, {"softmax": 1.0}, negatives=False)
    assert scores.in_batch is not None and scores.in_batch.shape == (3, 3)
    assert torch.isfinite(loss)
