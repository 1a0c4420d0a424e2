"""Optimizer groups by role and the learning-rate schedule (AdamW, linear warmup then cosine decay).

Groups follow what a parameter *is*, never its name: the weights of a pretrained text backbone (found as the
`backbone` module of each text encoder, LoRA adapters included) train at `text_lr`; everything fusionrec
initialises itself — id tables, the text projection head, fusion, sequence and tabular layers — trains at `lr`.
Inside each role, biases and normalisation weights get no weight decay (decaying them only pulls an offset or a
scale towards 0, the common practice of BERT / GPT training); fusionrec's embedding tables get
`embedding_weight_decay`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.RMSNorm)
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


@dataclass
class OptimConfig:
    """AdamW settings; `text_*` apply to the pretrained text backbone (and its LoRA adapters)."""

    lr: float = 1e-3
    """(float) learning rate of every parameter fusionrec initialises (ids, text projection, fusion, ...)."""
    weight_decay: float = 0.0
    """(float) AdamW weight decay of fusionrec's dense weights (matrices); biases and norms never decay."""
    embedding_weight_decay: float | None = None
    """(float) weight decay of fusionrec's embedding tables (id, tabular, positions, graph); null = weight_decay."""
    text_lr: float = 5e-5
    """(float) learning rate of the pretrained text model (full fine-tuning or LoRA)."""
    text_weight_decay: float = 0.01
    """(float) weight decay of the pretrained text model's matrices; its biases and norms never decay."""
    warmup_steps: int = 100
    """(int) linear warmup steps."""
    min_lr_ratio: float = 0.1
    """(float) cosine decays to lr * min_lr_ratio at the last step."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.text_lr <= 0:
            raise ValueError(f"learning rates must be > 0 (lr={self.lr}, text_lr={self.text_lr})")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio={self.min_lr_ratio}: expected in [0, 1]")
        for key in ("weight_decay", "embedding_weight_decay", "text_weight_decay"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ValueError(f"optim.{key}={value}: expected >= 0")


def param_roles(model: nn.Module, backbones: Iterable[nn.Module]) -> dict[str, str]:
    """Trainable parameter name -> group name: `text_backbone` | `text_backbone_no_decay` for the weights of the
    given pretrained `backbones`; `model` | `model_no_decay` | `model_embeddings` for the rest."""
    in_backbone = {id(p) for b in backbones for p in b.parameters()}
    kind: dict[int, str] = {}
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            # ZeRO-3 leaves a partitioned parameter an empty 1-d tensor; its real shape is `ds_shape`
            ndim = len(getattr(p, "ds_shape", p.shape))
            if isinstance(module, _NORMS) or pname.endswith("bias") or ndim < 2:
                kind[id(p)] = "no_decay"
            elif isinstance(module, _EMBEDDINGS):
                kind[id(p)] = "embeddings"
            else:
                kind[id(p)] = "decay"
    roles: dict[str, str] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        k = kind[id(p)]
        if id(p) in in_backbone:  # a pretrained model's token embeddings decay like its matrices (as HF does)
            roles[name] = "text_backbone_no_decay" if k == "no_decay" else "text_backbone"
        else:
            roles[name] = {"decay": "model", "no_decay": "model_no_decay", "embeddings": "model_embeddings"}[k]
    return roles


def param_groups(model: nn.Module, cfg: OptimConfig, backbones: Iterable[nn.Module] = ()) -> list[dict]:
    """AdamW groups (non-empty ones only, each with a `name` for the LR monitor) from `param_roles`."""
    emb_wd = cfg.weight_decay if cfg.embedding_weight_decay is None else cfg.embedding_weight_decay
    settings = {
        "model": (cfg.lr, cfg.weight_decay),
        "model_no_decay": (cfg.lr, 0.0),
        "model_embeddings": (cfg.lr, emb_wd),
        "text_backbone": (cfg.text_lr, cfg.text_weight_decay),
        "text_backbone_no_decay": (cfg.text_lr, 0.0),
    }
    roles = param_roles(model, backbones)
    members: dict[str, list[nn.Parameter]] = {g: [] for g in settings}
    for name, p in model.named_parameters():
        if name in roles:
            members[roles[name]].append(p)
    return [{"params": ps, "lr": settings[g][0], "weight_decay": settings[g][1], "name": g} for g, ps in members.items() if ps]


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
