"""What a prepared dataset says about its items, in words: title, rendered text and attributes.

Attributes come from the side arrays the model reads (`{item}_cat`, `{item}_multi_<field>_*`) decoded by the
manifest's vocabularies, so they are exactly what the tabular source saw. The prepared folder keeps item text only as
token ids (data_modules/prepare/text.py renders a template and tokenizes it); decoding them with an uncased tokenizer
loses case and spacing ("schindler ' s list ( 1993 )"). So titles and text are taken from the raw item table when the
source named in the manifest can still be read (the same reader `data prepare` used; its item ids are matched to the
id map), and from the decoded token ids otherwise (`title_source` says which).
"""

from __future__ import annotations

import logging
import string
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_modules import layout
from data_modules.side import SideData

log = logging.getLogger("fusionrec.explain")


class ItemFacts:
    """Facts per dense item index of the prepared dataset at `root`."""

    def __init__(self, root: str | Path, side: SideData | None = None, read_raw: bool = True):
        self.root = Path(root)
        self.side = side or SideData(self.root)
        m = self.side.manifest
        self.ids = _id_map(self.root, "items")
        self.user_ids = _id_map(self.root, "users")
        self.fields = self.side.fields("items")
        text_cfg = (m.get("config") or {}).get("text") or {}
        self.template = text_cfg.get("item_template")
        self.text_fields = list(self.fields.get("text") or [])
        self.title_field = _title_field(self.template, self.text_fields)
        self.titles: list[str] | None = None
        self.texts: list[str] | None = None
        self.title_source = "decoded token ids"
        if read_raw:
            self._from_raw(m)
        if self.titles is None:
            texts = self._decoded_texts()
            self.texts = texts
            self.titles = texts

    # -- sources of words ----------------------------------------------------------------------------------
    def _from_raw(self, manifest: dict[str, Any]) -> None:
        src = (manifest.get("config") or {}).get("source")
        if not src or self.title_field is None:
            return
        try:
            from data_modules.prepare.config import SourceConfig
            from data_modules.sources import read_source

            tables = read_source(SourceConfig(**src))
        except Exception as e:  # the raw files moved or are gone: decoded tokens still work
            log.info("raw item table not readable (%s): titles from decoded token ids", e)
            return
        items = tables.items
        if items is None or self.title_field not in items.columns:
            return
        aligned = items.assign(item=items["item"].astype(str).str.strip()).drop_duplicates("item").set_index("item")
        aligned = aligned.reindex(pd.Index(self.ids))
        titles = [_text(v) for v in aligned[self.title_field].tolist()]
        if sum(bool(t) for t in titles) < 0.5 * len(titles):
            return
        self.titles = titles
        self.title_source = f"raw item table ({src.get('format')}: {src.get('path')})"
        if self.template:
            from data_modules.prepare.text import render_texts

            self.texts = render_texts(items.assign(item=items["item"].astype(str).str.strip()), "item",
                                      tables.item_fields, pd.Index(self.ids), self.template)
        else:
            self.texts = titles

    def _decoded_texts(self) -> list[str]:
        info = self.side.text_info("item")
        n = self.side.n_items
        if info is None:
            return [f"item {i}" for i in self.ids]
        from transformers import AutoTokenizer

        from data_modules.pretrained import resolve_pretrained

        tok = AutoTokenizer.from_pretrained(resolve_pretrained(info["tokenizer"]))
        off, ids = np.asarray(self.side.array("item_text_offsets")), np.asarray(self.side.array("item_text_ids"))
        return [tok.decode(ids[off[i]:off[i + 1]], skip_special_tokens=True).strip() for i in range(n)]

    # -- per item ----------------------------------------------------------------------------------------
    def title(self, item: int) -> str:
        return self.titles[item] or f"item {self.ids[item]}"

    def text(self, item: int) -> str:
        return self.texts[item] if self.texts else self.title(item)

    def attributes(self, item: int) -> dict[str, Any]:
        """{field: value or [values]} of the item's categorical and multi-categorical fields (missing ones left out)."""
        out: dict[str, Any] = {}
        cats = self.fields.get("categorical") or []
        if cats and self.side.has("item_cat"):
            row = np.asarray(self.side.array("item_cat")[item])
            for f, code in zip(cats, row):
                if code > 0:
                    out[f["name"]] = f["vocab"][int(code) - 1]
        for f in self.fields.get("multi_categorical") or []:
            name = f["name"]
            off = self.side.array(f"item_multi_{name}_offsets")
            vals = np.asarray(self.side.array(f"item_multi_{name}_values")[off[item]:off[item + 1]])
            if len(vals):
                out[name] = [f["vocab"][int(v) - 1] for v in vals if v > 0]
        return out

    def attribute_vocab(self) -> set[str]:
        """Every categorical value of the item fields (what a rationale could name as an attribute)."""
        vocab: set[str] = set()
        for f in (self.fields.get("categorical") or []) + (self.fields.get("multi_categorical") or []):
            vocab.update(str(v) for v in f["vocab"])
        return vocab


def _id_map(root: Path, entity: str) -> list[str]:
    m = pd.read_parquet(root / layout.ID_MAPS / f"{entity}.parquet").sort_values("index")
    return m["id"].astype(str).tolist()


def _title_field(template: str | None, text_fields: list[str]) -> str | None:
    """The first field a template names (`{movie_title} ({release_year}) ...`), else the first text field."""
    if template:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f]
        if names:
            return names[0]
    return text_fields[0] if text_fields else None


def _text(v: Any) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return ""
    return str(v).strip()
