"""Compute accounting: analytic FLOPs per source encoder, and MFU against the device's peak bf16 rate.

Model FLOPs, not hardware FLOPs: only real (non-pad) tokens count, and recomputation under gradient checkpointing
does not (the convention of the PaLM paper's MFU, which is what makes MFU comparable across set-ups). Padding waste
is reported separately, as the padding fraction.

Per real token, a transformer's forward pass costs `2 N + 4 L T d` FLOPs (Kaplan et al. 2020): N = parameters of
its layers (embedding tables excluded: a lookup is no multiply-add), L layers, T the attended context, d the
attention width. The backward pass costs about twice the forward when every weight trains (activation gradients +
weight gradients), about once when the weights are frozen but gradients flow through them to adapters below (LoRA)
and nothing when no gradient reaches the module (a frozen backbone behind its cache).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

# Dense bf16 tensor-core peaks, FLOP/s, without sparsity (vendor data sheets). Matched in order against
# torch.cuda.get_device_name(); the first key contained in the name wins, so longer names come first.
PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("H200", 989.4e12),
    ("H100 PCIe", 756.0e12),
    ("H100", 989.4e12),
    ("GH200", 989.4e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362.05e12),
    ("L40", 181.05e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("L4", 121e12),
    ("RTX 4090", 165.2e12),
    ("V100", 125e12),  # fp16 (no bf16 on Volta)
)


def peak_flops(device: torch.device | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of one device: $FUSIONREC_PEAK_TFLOPS (x 1e12) if set, else looked up by the CUDA
    device name; None on CPU or an unknown GPU (MFU is then not reported rather than guessed)."""
    env = os.environ.get("FUSIONREC_PEAK_TFLOPS")
    if env:
        return float(env) * 1e12
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16:
        if key in name:
            return flops
    return None


def layer_params(module: nn.Module) -> int:
    """Parameters outside embedding tables (what multiplies activations)."""
    emb = sum(_numel(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False))
    return sum(_numel(p) for p in module.parameters()) - emb


def _numel(p: torch.Tensor) -> int:
    # under ZeRO-3 a partitioned parameter is empty locally; DeepSpeed keeps the full size in ds_numel
    return int(getattr(p, "ds_numel", p.numel()))


@dataclass(frozen=True)
class TransformerShape:
    """What the FLOPs formula needs of a transformer: layer parameters, layers, attention width."""

    params: int
    layers: int
    width: int

    def forward_flops(self, lengths: torch.Tensor) -> float:
        """Forward FLOPs of a batch of texts with `lengths` (B,) real tokens: per token `2 N + 4 L T d`, T = its own
        text's length."""
        n = lengths.double()
        return 2.0 * self.params * float(n.sum()) + 4.0 * self.layers * self.width * float((n**2).sum())


def hf_shape(backbone: nn.Module) -> TransformerShape:
    """Shape of a Hugging Face backbone (peft-wrapped or not) from its config and parameters."""
    cfg = backbone.config
    layers = int(getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layer", 0) or 0)
    width = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0) or 0)
    return TransformerShape(layer_params(backbone), layers, width)


def backward_multiplier(mode: str) -> float:
    """Backward-pass FLOPs as a multiple of the forward for a text backbone in `mode` (see module docstring)."""
    return {"full": 2.0, "lora": 1.0, "frozen": 0.0}[mode]


def mfu(model_flops: float, seconds: float, world_size: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over `world_size` devices' peak; None without a known peak."""
    if peak is None or seconds <= 0:
        return None
    return model_flops / seconds / (peak * world_size)
