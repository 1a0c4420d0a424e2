"""Per-tower sources and history items represented by the item tower (the sequential, text-rich setting).

Built on the tiny fixture prepared for real (MiniLM text, attributes)."""

from __future__ import annotations

import pytest
import torch

from data_modules.side import SideData
from tests.helpers.tiny_dataset import prepare_tiny
from trainer.model.builder import ItemTowerView, build_two_tower
from trainer.model.config import ModelConfig

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def side(tmp_path_factory) -> SideData:
    out = tmp_path_factory.mktemp("builder") / "tiny"
    prepare_tiny(out)
    return SideData(out)


def _batch(b: int = 3, length: int = 4) -> dict[str, torch.Tensor]:
    history = torch.tensor([[1, 2, 3, 4], [0, 0, 5, 6], [0, 0, 0, 0]])
    mask = torch.tensor([[True] * 4, [False, False, True, True], [False] * 4])
    return {"history": history[:b, :length], "history_mask": mask[:b, :length]}


def test_user_is_their_history_without_a_user_id(side):
    cfg = ModelConfig(dim=16, sources=["id", "text", "sequence"], user_sources=["sequence"],
                      text={"max_length": 16}, sequence={"layers": 1, "heads": 2, "item_repr": "item_tower"})
    towers = build_two_tower(cfg, side, history_len=4)
    assert towers.user.names == ["sequence"] and towers.item.names == ["id", "text"]
    seq = towers.user.encoders["sequence"]
    assert isinstance(seq.item_embedding, ItemTowerView) and seq.item_embedding.tower is towers.item
    assert towers.user.encoders["sequence"].input_proj.__class__.__name__ == "Identity"
    vec, _ = towers.encode_users(torch.tensor([0, 1, 2]), towers.context(_batch()))
    assert vec.shape == (3, 16) and torch.isfinite(vec).all()
    # the history is read through the item tower: its text projection gets gradients from the user side
    vec.sum().backward()
    assert towers.item.encoders["text"].proj.weight.grad.abs().sum() > 0
    assert "id" not in towers.user.encoders  # no user-id table at all


def test_text_and_sequence_without_ids(side):
    cfg = ModelConfig(dim=16, sources=["text", "sequence"], text={"max_length": 16},
                      sequence={"layers": 1, "heads": 2, "item_repr": "item_tower"})
    towers = build_two_tower(cfg, side, history_len=4)
    assert towers.user.names == ["sequence"] and towers.item.names == ["text"]
    assert not any("id.embedding" in n for n, _ in towers.named_parameters())


def test_default_sequence_reads_the_item_id_table(side):
    towers = build_two_tower(ModelConfig(dim=16, sources=["id", "sequence"], sequence={"layers": 1, "heads": 2}), side,
                             history_len=4)
    assert towers.user.names == ["id", "sequence"]
    assert towers.user.encoders["sequence"].item_embedding is towers.item.encoders["id"]


def test_bad_user_sources_are_rejected():
    with pytest.raises(ValueError, match="user_sources"):
        ModelConfig(user_sources=["ids"])


def test_forward_unique_is_forward_over_repeated_ids(side):
    """Many rows of few items (histories, negatives of a small catalog) are encoded once per distinct item:
    same vectors and gates, same gradients, as encoding every row."""
    cfg = ModelConfig(dim=16, sources=["id", "tabular", "text"], text={"max_length": 16})
    towers = build_two_tower(cfg, side, history_len=4).eval()
    ids = torch.tensor([3, 1, 3, 3, 0, 1, 2, 0])
    ctx = towers.context({})
    v_all, w_all = towers.item(ids, ctx)
    v_uni, w_uni = towers.item.forward_unique(ids, ctx)
    torch.testing.assert_close(v_uni, v_all, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(w_uni, w_all, rtol=1e-6, atol=1e-6)
    weights = torch.arange(1.0, 9.0)[:, None]
    grads = []
    for v in (v_all, v_uni):
        towers.zero_grad()
        (v * weights).sum().backward(retain_graph=True)
        grads.append(towers.item.encoders["id"].embedding.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_fine_tuned_text_history_reads_a_cache_built_before_the_first_step(side):
    """lora / full text with history items read through the item tower: the cache those items take exists from
    the first training step (otherwise B x L history items ran the backbone live until the first evaluation)."""
    from trainer.engine.module import FusionModule

    cfg = ModelConfig(dim=16, sources=["text", "sequence"], user_sources=["sequence"],
                      text={"max_length": 16, "mode": "lora"}, sequence={"layers": 1, "heads": 2, "item_repr": "item_tower"})
    module = FusionModule(model=cfg)
    module.build_towers(side, history_len=4)
    text = module.towers.item.encoders["text"]
    assert text.cache is None
    module._text_caches(training=True, negatives=False)
    assert text.cache is not None and text.cache.shape[0] == text.num_entities
    # without a history read through the item tower nothing is built in training (the earlier behaviour)
    plain = FusionModule(model=ModelConfig(dim=16, sources=["id", "text"], text={"max_length": 16, "mode": "lora"}))
    plain.build_towers(side, history_len=4)
    plain._text_caches(training=True, negatives=False)
    assert plain.towers.item.encoders["text"].cache is None


def test_full_catalog_step_scores_every_item_with_gradients(side):
    """`loss.full_catalog`: the training loss is the cross-entropy of each row's item over the whole catalog, and
    every item's parameters get a gradient (they are all negatives), not only the batch's items."""
    from trainer.engine.module import FusionModule

    torch.manual_seed(0)
    cfg = ModelConfig(dim=16, sources=["id", "sequence"], user_sources=["sequence"],
                      sequence={"layers": 1, "heads": 2, "dropout": 0.0})
    module = FusionModule(model=cfg, loss={"full_catalog": True, "temperature": 0.2})
    module.build_towers(side, history_len=4)
    module.eval()  # no dropout: the manual computation below sees the same vectors
    batch = {**_batch(), "user": torch.tensor([0, 1, 2]), "item": torch.tensor([1, 2, 3])}
    loss = module.training_step(batch, 0)
    t = module.towers
    ctx = t.context(batch)
    user = torch.nn.functional.normalize(t.encode_users(batch["user"], ctx)[0], dim=-1)
    items = torch.nn.functional.normalize(t.encode_items(torch.arange(t.n_items), ctx)[0], dim=-1)
    want = torch.nn.functional.cross_entropy(user @ items.T / 0.2, batch["item"])
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    loss.backward()
    grad = t.item.encoders["id"].embedding.weight.grad
    assert grad is not None and (grad.abs().sum(1) > 0).sum().item() >= t.n_items - 1  # (row 0 may be padding)
