"""Render entity text from fields by a template and tokenize it once; token ids are stored as CSR arrays."""

from __future__ import annotations

import string
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from data_modules.errors import DataError
from data_modules.pretrained import resolve_pretrained
from data_modules.tables import FieldKind


def render_texts(table: pd.DataFrame | None, key: str, fields: dict[str, FieldKind], index: pd.Index,
                 template: str | None, extra: dict[int, list[str]] | None = None) -> list[str]:
    """One string per entity in `index` order. `extra` maps entity index -> texts appended (e.g. recent reviews).

    With no template, the entity's text fields are joined. A template naming an unknown field is an error.
    """
    n = len(index)
    texts = [""] * n
    if table is not None and (template or any(k == FieldKind.text for k in fields.values())):
        aligned = table.drop_duplicates(key).set_index(key).reindex(index)
        if template:
            names = {f for _, f, _, _ in string.Formatter().parse(template) if f}
            unknown = names - set(aligned.columns)
            if unknown:
                raise DataError(f"text template {template!r} names unknown fields {sorted(unknown)}; fields are {sorted(aligned.columns)}",
                                field=sorted(unknown)[0])
            cols = {name: [_as_text(v) for v in aligned[name].tolist()] for name in names}
            texts = [template.format(**{name: cols[name][i] for name in names}) for i in range(n)]
        else:
            text_fields = [f for f, k in fields.items() if k == FieldKind.text]
            cols_list = [[_as_text(v) for v in aligned[f].tolist()] for f in text_fields]
            texts = [". ".join(c[i] for c in cols_list if c[i]) for i in range(n)]
    if extra:
        for i, more in extra.items():
            texts[i] = " ".join(t for t in [texts[i], *more] if t)
    return texts


def _as_text(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, (list, tuple, np.ndarray)):
        return ", ".join(str(x) for x in v)
    if v is pd.NA:
        return ""
    return str(v)


def tokenize(texts: list[str], tokenizer_ref: str, max_length: int, trust_remote_code: bool = False,
             batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Tokenize with a Hugging Face tokenizer; return (offsets (n+1,) int64, ids (total,) int32, info for the manifest)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_pretrained(tokenizer_ref), trust_remote_code=trust_remote_code)
    lengths = np.zeros(len(texts), dtype=np.int64)
    chunks: list[np.ndarray] = []
    for start in tqdm(range(0, len(texts), batch_size), desc="tokenize", unit="batch", leave=False):
        batch = texts[start:start + batch_size]
        enc = tok(batch, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
        for j, ids in enumerate(enc):
            lengths[start + j] = len(ids)
            chunks.append(np.asarray(ids, dtype=np.int32))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
    info = {
        "tokenizer": tokenizer_ref,
        "max_length": max_length,
        "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        "mean_tokens": float(lengths.mean()) if len(lengths) else 0.0,
        "at_max_length": int((lengths >= max_length).sum()),  # texts cut (or exactly filling) max_length
        "empty_texts": int(sum(1 for t in texts if not t)),
    }
    return offsets, ids, info
