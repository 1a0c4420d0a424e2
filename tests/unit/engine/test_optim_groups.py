"""Optimizer groups follow roles: the pretrained text backbone vs everything fusionrec initialises.

Built on the tiny fixture prepared for real (all five sources, the real MiniLM text encoder), so every
parameter the shipped model has is named here with its group, learning rate and weight decay.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_modules.side import SideData
from tests.helpers.tiny_dataset import prepare_tiny
from trainer.engine.module import FusionModule
from trainer.engine.optim import OptimConfig, param_groups, param_roles

pytestmark = pytest.mark.unit
OPTIM = {"lr": 0.01, "weight_decay": 0.1, "embedding_weight_decay": 0.001, "text_lr": 5e-5, "text_weight_decay": 0.01}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("optim") / "tiny"
    return prepare_tiny(out)


def _module(prepared: Path, mode: str) -> FusionModule:
    m = FusionModule(model={"dim": 16, "text": {"mode": mode, "max_length": 16}}, optim=OPTIM)
    m.build_towers(SideData(prepared), history_len=8)
    return m


def _groups_by_param(m: FusionModule) -> dict[str, dict]:
    groups = param_groups(m, m.optim_cfg, [e.backbone for e in m._text_encoders])
    ids = {id(p): g for g in groups for p in g["params"]}
    return {name: ids[id(p)] for name, p in m.named_parameters() if id(p) in ids}


def test_frozen_backbone_the_projection_trains_at_the_model_lr(prepared):
    m = _module(prepared, "frozen")
    by = _groups_by_param(m)
    assert {g["name"] for g in by.values()} == {"model", "model_no_decay", "model_embeddings"}  # no text_backbone group
    assert not any(".backbone." in n for n in by)  # frozen weights are in no group at all
    proj = "towers.item.encoders.text.proj"
    assert (by[f"{proj}.weight"]["name"], by[f"{proj}.weight"]["lr"], by[f"{proj}.weight"]["weight_decay"]) == ("model", 0.01, 0.1)
    assert (by[f"{proj}.bias"]["name"], by[f"{proj}.bias"]["lr"], by[f"{proj}.bias"]["weight_decay"]) == ("model_no_decay", 0.01, 0.0)


def test_every_fusionrec_parameter_has_its_role(prepared):
    by = _groups_by_param(_module(prepared, "frozen"))
    expect = {
        "towers.user.encoders.id.embedding.weight": ("model_embeddings", 0.001),
        "towers.user.encoders.sequence.item_embedding.embedding.weight": ("model_embeddings", 0.001),  # = item id table (shared)
        "towers.user.encoders.graph.graph.embedding.weight": ("model_embeddings", 0.001),
        "towers.user.encoders.tabular.mix.weight": ("model", 0.1),
        "towers.user.fusion.gate.0.weight": ("model", 0.1),
        "towers.user.encoders.sequence.positions.weight": ("model_embeddings", 0.001),
        "towers.user.encoders.sequence.layers.0.norm1.weight": ("model_no_decay", 0.0),
        "towers.user.encoders.sequence.norm.weight": ("model_no_decay", 0.0),
        "towers.user.encoders.sequence.norm.bias": ("model_no_decay", 0.0),
        "towers.user.encoders.sequence.no_history": ("model_no_decay", 0.0),
    }
    for name, (group, wd) in expect.items():
        assert (by[name]["name"], by[name]["weight_decay"], by[name]["lr"]) == (group, wd, 0.01), name
    for name, g in by.items():  # the rule, for every parameter
        if name.endswith("bias") or ".norm" in name:
            assert g["name"] == "model_no_decay", name
        assert g["lr"] == 0.01, name


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_trained_backbone_weights_take_the_text_lr_and_only_they(prepared, mode):
    m = _module(prepared, mode)
    by = _groups_by_param(m)
    roles = param_roles(m, [e.backbone for e in m._text_encoders])
    assert set(roles) == set(by) == {n for n, p in m.named_parameters() if p.requires_grad}
    for name, g in by.items():
        in_backbone = ".encoders.text.backbone." in name
        assert g["name"].startswith("text_backbone") == in_backbone, (name, g["name"])
        assert g["lr"] == (5e-5 if in_backbone else 0.01), name
        if in_backbone:
            no_decay = name.endswith("bias") or "LayerNorm" in name
            assert g["weight_decay"] == (0.0 if no_decay else 0.01), name
    if mode == "lora":
        assert any("lora_A" in n and by[n]["name"] == "text_backbone" for n in by)
    assert by["towers.item.encoders.text.proj.weight"]["name"] == "model"


def test_groups_cover_each_trainable_parameter_once(prepared):
    m = _module(prepared, "full")
    groups = param_groups(m, m.optim_cfg, [e.backbone for e in m._text_encoders])
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in m.parameters() if p.requires_grad)
    torch.optim.AdamW(groups)  # a valid optimizer


def test_embedding_decay_defaults_to_weight_decay_and_rejects_negatives():
    lin = torch.nn.Sequential(torch.nn.Embedding(3, 2), torch.nn.Linear(2, 2))
    (emb,) = [g for g in param_groups(lin, OptimConfig(weight_decay=0.05)) if g["name"] == "model_embeddings"]
    assert emb["weight_decay"] == 0.05
    with pytest.raises(ValueError, match="embedding_weight_decay"):
        OptimConfig(embedding_weight_decay=-1.0)
