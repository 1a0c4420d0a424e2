"""SASRec-like user encoder: causal self-attention over the representations of the user's recent items."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.model.encoders.base import SourceEncoder


class SequenceEncoder(nn.Module):
    """Encode a user by its history: `forward(ids (B,), ctx) -> (B, dim)`.

    Reads `ctx["history"]` (B, L) long item ids and `ctx["history_mask"]` (B, L) bool, right-aligned (most
    recent item at L - 1, padding on the left). Items are represented by `item_embedding`, a source encoder
    shared with the item tower (so the sequence and the item vectors live in one space), plus a learned
    position embedding indexed by recency (0 = most recent). The output is the hidden state at the last
    position; a row with an empty history gets a learned "no history" vector instead.

    Args:
        item_embedding: source encoder of items, called as `item_embedding(ids (M,), ctx) -> (M, E)`.
        dim: model and output size (a Linear maps E -> dim when they differ).
        n_layers, n_heads, dropout: transformer shape.
        max_len: longest history used; longer ones keep their most recent `max_len` items.
        name: source name used by the fusion head.
    """

    def __init__(
        self,
        item_embedding: SourceEncoder,
        dim: int,
        n_layers: int = 2,
        n_heads: int = 2,
        max_len: int = 50,
        dropout: float = 0.1,
        name: str = "sequence",
        history_key: str = "history",
        mask_key: str = "history_mask",
    ):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"SequenceEncoder: dim={dim} is not divisible by n_heads={n_heads}")
        self.name = name
        self.out_dim = dim
        self.max_len = max_len
        self.n_heads = n_heads
        self.history_key, self.mask_key = history_key, mask_key
        self.item_embedding = item_embedding
        in_dim = int(item_embedding.out_dim)
        self.input_proj = nn.Linear(in_dim, dim) if in_dim != dim else nn.Identity()
        self.positions = nn.Embedding(max_len, dim)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(_CausalBlock(dim, n_heads, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)
        self.no_history = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.positions.weight, std=0.02)
        nn.init.normal_(self.no_history, std=0.02)

    def forward(self, ids: Tensor, ctx: Mapping[str, Any]) -> Tensor:
        history: Tensor = ctx[self.history_key][:, -self.max_len :]
        valid: Tensor = ctx[self.mask_key][:, -self.max_len :].bool()
        # right-aligned: leading columns that are padding in every row change nothing (padded keys are blocked,
        # positions count from the right), so drop them; short histories then cost what they hold, not max_len.
        # One column always stays, so every rank's step runs the same parameters (DDP / ZeRO expect that).
        used = valid.any(dim=0)
        first = int(used.to(torch.int8).argmax()) if bool(used.any()) else max(used.numel() - 1, 0)
        history, valid = history[:, first:], valid[:, first:]
        b, length = history.shape
        if length == 0:
            return self.no_history.expand(b, -1)
        items = self.item_embedding(history.reshape(-1), ctx).reshape(b, length, -1)
        recency = torch.arange(length - 1, -1, -1, device=history.device)  # (L,): 0 = most recent
        x = self.dropout(self.input_proj(items) + self.positions(recency))
        x = x * valid.unsqueeze(-1).to(x.dtype)

        # True = may attend: causal, padded keys blocked; every query may always see itself, so padded
        # queries never get a fully masked row (whose softmax would be NaN and leak into later layers).
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        keep = (causal.unsqueeze(0) & valid.unsqueeze(1)) | torch.eye(length, dtype=torch.bool, device=x.device)
        keep = keep.unsqueeze(1)  # (B, 1, L, L), broadcast over heads
        for i, layer in enumerate(self.layers):
            # only the last position is read out, so the last layer computes that query alone (L times cheaper)
            x = layer(x, keep, last_only=i == len(self.layers) - 1)
        last = self.norm(x[:, -1])  # (B, dim)
        has_history = valid.any(dim=1, keepdim=True)
        return torch.where(has_history, last, self.no_history.to(last.dtype).expand_as(last))


class _CausalBlock(nn.Module):
    """Pre-norm transformer block on `scaled_dot_product_attention` (fused kernels, mask broadcast over heads)."""

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, keep: Tensor, last_only: bool = False) -> Tensor:
        """x (B, L, D), keep (B, 1, L, L) bool -> (B, L, D), or (B, 1, D) with `last_only`."""
        b, length, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if last_only:
            q, keep, x = q[:, :, -1:], keep[:, :, -1:], x[:, -1:]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.out(o.transpose(1, 2).reshape(b, -1, d)))
        return x + self.drop(self.ffn(self.norm2(x)))
