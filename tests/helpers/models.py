"""Tiny randomly initialised models of real architectures, saved with save_pretrained, so tests run the real
`from_pretrained` path offline."""

from __future__ import annotations

from pathlib import Path


def save_tiny_llama(path: Path, *, vocab_size: int = 512, hidden: int = 64, seed: int = 0) -> str:
    """A 2-layer Llama (grouped-query attention: 4 heads, 2 key/value heads) at `path`; returns the path."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=hidden, intermediate_size=2 * hidden,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab_size, pad_token_id=0)  # fmt: skip
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return str(path)
