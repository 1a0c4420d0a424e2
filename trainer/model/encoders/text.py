"""Text encoder over any Hugging Face AutoModel (encoder or decoder LLM): pooled hidden states -> projection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from data_modules.pretrained import resolve_pretrained
from trainer.model.flops import backward_multiplier, hf_shape

Pooling = Literal["mean", "cls", "last"]
USE_TEXT_CACHE = "use_text_cache"  # ctx key: encode these ids from the cache, not live (negatives)
Mode = Literal["frozen", "lora", "full"]


class TextEncoder(nn.Module):
    """Encode each entity's pre-tokenized text: `forward(ids (B,), ctx) -> (B, dim)`.

    Token ids come from the prepared dataset as a CSR (`token_offsets` (n + 1,), `token_ids` (nnz,)), held in
    host memory; a batch of entities is padded on `padding_side` up to its longest text (at most `max_length`).
    Pooling reads the attention mask, so it is right for left and right padding alike: "mean" over real
    tokens, "cls" = first real token, "last" = last real token (decoder LLMs). With left padding,
    position ids are computed from the mask so every real token keeps the position it has unpadded.

    Modes: "frozen" — the backbone never trains; pooled vectors of all entities are computed once
    (`refresh_cache()`, run lazily by the first forward) and only the projection learns. "lora" — peft
    LoRA adapters on `lora_target_modules` (None = peft's default for the architecture). "full" — everything.

    Args:
        model_name_or_path: hub name, local folder, or `package:<pkg>/<folder>` (see data_modules.pretrained).
        dim: output size of the projection.
        pad_token_id: id used for padding (the manifest's text info has it); default: the model config's.
        trust_remote_code: never on by default; only for model code you have read.
        cache_batch_size: entities per backbone call when building the frozen cache.
        dtype: backbone weights dtype passed to from_pretrained (e.g. "bfloat16"), None = as saved.
        length_buckets: run each text batch as this many length-sorted chunks (less padding; see encode_text).
    """

    token_offsets: Tensor
    token_ids: Tensor
    cache: Tensor | None  # (n, H) float32 on the host once built

    def __init__(
        self,
        model_name_or_path: str,
        token_offsets: np.ndarray,
        token_ids: np.ndarray,
        dim: int,
        pooling: Pooling = "mean",
        mode: Mode = "frozen",
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_target_modules: list[str] | None = None,
        gradient_checkpointing: bool = False,
        max_length: int = 128,
        pad_token_id: int | None = None,
        padding_side: Literal["left", "right"] = "right",
        trust_remote_code: bool = False,
        cache_batch_size: int = 256,
        dtype: str | None = None,
        name: str = "text",
        show_progress: bool = True,
        length_buckets: int = 1,
    ):
        super().__init__()
        if pooling not in ("mean", "cls", "last"):
            raise ValueError(f"TextEncoder pooling={pooling!r}: expected 'mean', 'cls' or 'last'")
        if mode not in ("frozen", "lora", "full"):
            raise ValueError(f"TextEncoder mode={mode!r}: expected 'frozen', 'lora' or 'full'")
        if padding_side not in ("left", "right"):
            raise ValueError(f"TextEncoder padding_side={padding_side!r}: expected 'left' or 'right'")
        if max_length <= 0:
            raise ValueError(f"TextEncoder max_length={max_length}: expected > 0")
        from transformers import AutoModel  # heavy import, only when a text source is used

        self.name, self.out_dim = name, dim
        self.pooling, self.mode, self.padding_side = pooling, mode, padding_side
        self.max_length, self.cache_batch_size = max_length, cache_batch_size
        self.length_buckets = int(length_buckets)
        self.tokens_processed = 0  # real tokens through the backbone
        self.tokens_padded = 0  # token slots through the backbone, pads included
        self.flops_processed = 0.0  # model FLOPs (trainer/model/flops.py)
        self.show_progress = show_progress
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if dtype is not None:
            kwargs["dtype"] = getattr(torch, dtype)
        backbone = AutoModel.from_pretrained(resolve_pretrained(model_name_or_path), **kwargs)
        cfg = backbone.config
        self.hidden_size = int(
            getattr(cfg, "hidden_size", None) or backbone.get_input_embeddings().embedding_dim
        )
        if pad_token_id is None:
            pad_token_id = (
                cfg.pad_token_id if cfg.pad_token_id is not None else getattr(cfg, "eos_token_id", 0)
            )
        self.pad_token_id = int(pad_token_id[0] if isinstance(pad_token_id, list) else pad_token_id or 0)
        if gradient_checkpointing:
            # non-reentrant: works with frozen inputs (LoRA) without enable_input_require_grads.
            # transformers >= 5 renamed gradient_checkpointing_enable (deprecated there) to activation_...
            if hasattr(backbone, "activation_checkpointing_enable"):
                backbone.activation_checkpointing_enable(
                    activation_checkpointing_kwargs={"use_reentrant": False}
                )
            else:
                backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if mode == "frozen":
            backbone.requires_grad_(False)
            backbone.eval()
        elif mode == "lora":
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=lora_r,
                lora_alpha=lora_alpha,
                lora_dropout=lora_dropout,
                target_modules=lora_target_modules,
                bias="none",
            )
            backbone = get_peft_model(backbone, lora)
        self.backbone = backbone
        self._shape = hf_shape(backbone)
        self._backward_multiplier = backward_multiplier(mode)
        self.proj = nn.Linear(self.hidden_size, dim)
        # Side data, not model state: plain CPU tensors (no buffers), so they never travel to the accelerator
        # whole, DDP never broadcasts them, and a large catalog's text stays in host memory; only a batch's
        # tokens are moved to the backbone's device. The cache of pooled vectors lives in host memory too.
        self.token_offsets = torch.as_tensor(np.asarray(token_offsets), dtype=torch.long)
        self.token_ids = torch.as_tensor(np.asarray(token_ids), dtype=torch.long)
        self.cache = None

    @property
    def num_entities(self) -> int:
        return len(self.token_offsets) - 1

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.mode == "frozen":  # a frozen backbone stays in eval (no dropout) whatever the tower does
            self.backbone.eval()
        return self

    def tokens(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Padded `input_ids` (B, T) and `attention_mask` (B, T) long for entities `ids` (B,).

        Texts are cut to `max_length` (first tokens kept); an empty text becomes one attended pad token, so
        pooling never divides by zero.
        """
        device, ids = ids.device, ids.detach().cpu()
        start = self.token_offsets[ids]
        length = (self.token_offsets[ids + 1] - start).clamp(max=self.max_length)
        real = length.clamp(min=1)
        t = int(real.max()) if len(ids) else 1
        pos = torch.arange(t).unsqueeze(0)  # (1, T)
        shift = (
            (t - real).unsqueeze(1) if self.padding_side == "left" else torch.zeros_like(real).unsqueeze(1)
        )
        rel = pos - shift  # index inside the entity's text
        attended = (rel >= 0) & (rel < real.unsqueeze(1))
        has_token = (rel >= 0) & (rel < length.unsqueeze(1))
        flat = (start.unsqueeze(1) + rel).clamp(0, max(len(self.token_ids) - 1, 0))
        src = self.token_ids[flat] if len(self.token_ids) else torch.zeros_like(flat)
        input_ids = torch.where(has_token, src, torch.full_like(src, self.pad_token_id))
        return input_ids.to(device), attended.long().to(device)

    def pool(self, hidden: Tensor, mask: Tensor) -> Tensor:
        """Pool hidden states (B, T, H) over the attention mask (B, T) -> (B, H)."""
        m = mask.bool()
        if self.pooling == "mean":
            w = m.unsqueeze(-1).to(hidden.dtype)
            return (hidden * w).sum(1) / w.sum(1).clamp(min=1)
        t = m.shape[1]
        if self.pooling == "cls":
            idx = m.int().argmax(1)  # first real token
        else:
            idx = t - 1 - m.flip(1).int().argmax(1)  # last real token
        return hidden[torch.arange(len(idx), device=idx.device), idx]

    def encode_text(self, ids: Tensor) -> Tensor:
        """Backbone + pooling for entities `ids` (B,) -> (B, H), gradients as the mode allows.

        With `length_buckets` k > 1 the entities are sorted by text length and run in k chunks of equal count,
        each padded only to its own longest text (padding waste falls; outputs are returned in `ids` order). The
        chunk count depends on B alone, never on the lengths, so under ZeRO-3 — where every backbone forward
        gathers weights collectively — ranks with equal batches run equally many forwards.
        """
        if self.length_buckets <= 1 or len(ids) <= 1:
            return self._encode_chunk(ids)
        lengths = self.lengths(ids)
        order = torch.argsort(lengths, stable=True).to(ids.device)
        chunks = [c for c in torch.tensor_split(order, min(self.length_buckets, len(ids))) if len(c)]
        pooled = torch.cat([self._encode_chunk(ids[c]) for c in chunks])
        return pooled[torch.argsort(torch.cat(chunks))]

    def _encode_chunk(self, ids: Tensor) -> Tensor:
        input_ids, mask = self.tokens(ids)
        real = mask.sum(1)
        self.tokens_processed += int(real.sum())  # real (non-pad) tokens through the backbone, for tokens/s
        self.tokens_padded += int(mask.numel())  # token slots computed, pads included: padding fraction
        # model FLOPs of this forward (+ its backward when gradients will flow)
        backward = self._backward_multiplier if torch.is_grad_enabled() and self.backbone.training else 0.0
        self.flops_processed += self._shape.forward_flops(real) * (1.0 + backward)
        kwargs: dict[str, Tensor] = {"input_ids": input_ids, "attention_mask": mask}
        if self.padding_side == "left":
            kwargs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
        hidden = self.backbone(**kwargs).last_hidden_state
        return self.pool(hidden, mask)

    @torch.no_grad()
    def encode_ids(self, ids: Tensor, desc: str | None = None) -> Tensor:
        """Pooled vectors (len(ids), H) float32 on the host, in `ceil(len(ids) / cache_batch_size)` backbone
        forwards of length-sorted entities (little padding), the backbone in eval mode. The building block of
        (sharded) caches: the forward count depends on len(ids) alone, as ZeRO-3 needs."""
        was_training = self.backbone.training
        self.backbone.eval()
        device = self.proj.weight.device
        ids = ids.cpu()
        order = torch.argsort(self.lengths(ids), stable=True)
        out = torch.empty(len(ids), self.hidden_size)
        steps = range(0, len(ids), self.cache_batch_size)
        for s in tqdm(steps, desc=desc or f"{self.name} cache", unit="batch", disable=not self.show_progress, leave=False):
            sel = order[s : s + self.cache_batch_size]
            out[sel] = self._encode_chunk(ids[sel].to(device)).float().cpu()
        self.backbone.train(was_training and self.mode != "frozen")
        return out

    def lengths(self, ids: Tensor) -> Tensor:
        """Tokens fed to the backbone per entity (B,) on the host: text length cut to max_length, at least 1."""
        ids = ids.detach().cpu()
        return (self.token_offsets[ids + 1] - self.token_offsets[ids]).clamp(1, self.max_length)

    def set_cache(self, cache: Tensor) -> None:
        """Install precomputed pooled vectors (n, H) of every entity (e.g. gathered from all ranks' shards)."""
        if cache.shape != (self.num_entities, self.hidden_size):
            raise ValueError(f"{self.name} cache shape {tuple(cache.shape)} != ({self.num_entities}, {self.hidden_size})")
        self.cache = cache.detach().float().cpu()

    @torch.no_grad()
    def refresh_cache(self) -> Tensor:
        """Recompute the pooled vectors of all entities (n, H) float32 in this process (no sharding)."""
        self.set_cache(self.encode_ids(torch.arange(self.num_entities)))
        assert self.cache is not None
        return self.cache

    def forward(self, ids: Tensor, ctx: Mapping[str, Any] | None = None) -> Tensor:
        """(B,) -> (B, dim). Frozen mode reads the cache (built on first use). In lora / full mode the backbone
        runs live, except where the cache may serve: without gradients (evaluation) or when the caller marks
        the ids as negatives (`ctx[USE_TEXT_CACHE]`), provided a cache has been built (see trainer/engine/text_cache.py)."""
        cached = self.mode == "frozen" or (
            self.cache is not None and (not torch.is_grad_enabled() or bool((ctx or {}).get(USE_TEXT_CACHE)))
        )
        if cached:
            cache = self.cache if self.cache is not None else self.refresh_cache()
            pooled = cache[ids.detach().cpu()].to(ids.device)
        else:
            pooled = self.encode_text(ids)
        return self.proj(pooled.to(self.proj.weight.dtype))
