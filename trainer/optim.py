"""Optimizer groups and the learning-rate schedule: a separate LR / weight decay for the LLM (text backbone)
parameters, AdamW, linear warmup then cosine decay."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class OptimConfig:
    """AdamW settings; `text_*` apply to the pretrained text backbone (and its LoRA adapters)."""

    lr: float = 1e-3
    """(float) learning rate of everything except the text backbone."""
    weight_decay: float = 0.0
    """(float) AdamW weight decay of everything except the text backbone."""
    text_lr: float = 5e-5
    """(float) learning rate of the pretrained text model (full fine-tuning or LoRA)."""
    text_weight_decay: float = 0.01
    """(float) weight decay of the pretrained text model."""
    warmup_steps: int = 100
    """(int) linear warmup steps."""
    min_lr_ratio: float = 0.1
    """(float) cosine decays to lr * min_lr_ratio at the last step."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.text_lr <= 0:
            raise ValueError(f"learning rates must be > 0 (lr={self.lr}, text_lr={self.text_lr})")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio={self.min_lr_ratio}: expected in [0, 1]")


def param_groups(model: nn.Module, cfg: OptimConfig, text_prefixes: tuple[str, ...]) -> list[dict]:
    """Split trainable parameters: names under any of `text_prefixes` (the text backbone) vs the rest."""
    text, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (text if name.startswith(text_prefixes) else rest).append(p)
    groups = [{"params": rest, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "model"}]
    if text:
        groups.append({"params": text, "lr": cfg.text_lr, "weight_decay": cfg.text_weight_decay, "name": "text_backbone"})
    return groups


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
