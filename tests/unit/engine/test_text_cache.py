"""Text caches on disk, length bucketing and compute accounting of the text encoder (tiny random Llama)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers.models import save_tiny_llama
from trainer.engine.text_cache import TextCacheStore, build_sharded, cache_key, load_or_build, shard_range
from trainer.model.encoders.text import USE_TEXT_CACHE, TextEncoder
from trainer.model.flops import TransformerShape, backward_multiplier, hf_shape, mfu, peak_flops

pytestmark = pytest.mark.unit
transformers = pytest.importorskip("transformers")

SEQS = [[5, 17, 99, 4, 250], [7, 8], [300, 301, 302], [], [9] * 12, [11, 12, 13, 14], [40], [41, 42]]


def _csr(seqs):
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    return offsets, np.asarray([t for s in seqs for t in s], dtype=np.int64)


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


def enc(path: str, mode: str = "frozen", seqs=SEQS, **kw) -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder(path, *_csr(seqs), dim=8, pooling="last", mode=mode, pad_token_id=0, show_progress=False,
                       cache_batch_size=3, **kw)  # fmt: skip


@torch.no_grad()
@pytest.mark.parametrize("side", ["right", "left"])
def test_length_buckets_give_the_same_vectors_with_less_padding(llama, side):
    ids = torch.tensor([4, 1, 0, 6, 2, 7, 3, 5])
    plain, bucketed = enc(llama, "full", padding_side=side).eval(), enc(llama, "full", padding_side=side, length_buckets=4).eval()
    torch.testing.assert_close(bucketed.encode_text(ids), plain.encode_text(ids), atol=1e-5, rtol=1e-4)
    assert bucketed.tokens_processed == plain.tokens_processed == sum(max(1, len(s)) for s in SEQS)
    assert plain.tokens_padded == 8 * 12  # one batch padded to the longest text
    assert bucketed.tokens_padded == 2 * 1 + 2 * 2 + 2 * 4 + 2 * 12  # four sorted chunks of two
    assert bucketed.tokens_padded < plain.tokens_padded


@torch.no_grad()
def test_flops_follow_2n_plus_attention_per_real_token(llama):
    e = enc(llama, "full").eval()
    shape = hf_shape(e.backbone)
    emb = e.backbone.get_input_embeddings().weight.numel()
    assert shape == TransformerShape(sum(p.numel() for p in e.backbone.parameters()) - emb, 2, 64)
    e.encode_text(torch.tensor([0, 1]))  # 5 and 2 real tokens; no grad: forward only
    assert e.flops_processed == pytest.approx(7 * 2 * shape.params + 4 * 2 * 64 * (5**2 + 2**2))
    assert backward_multiplier("full") == 2 and backward_multiplier("lora") == 1 and backward_multiplier("frozen") == 0


def test_mfu_and_peak_lookup(monkeypatch):
    assert mfu(1e12, 1.0, 2, 1e12) == pytest.approx(0.5)
    assert mfu(1e12, 1.0, 1, None) is None
    monkeypatch.delenv("FUSIONREC_PEAK_TFLOPS", raising=False)
    assert peak_flops(torch.device("cpu")) is None  # no guessed MFU on a CPU
    monkeypatch.setenv("FUSIONREC_PEAK_TFLOPS", "100")
    assert peak_flops(torch.device("cpu")) == 1e14


def test_store_round_trip_from_another_world_size_and_gaps(tmp_path):
    vecs = torch.randn(10, 4)
    store = TextCacheStore(tmp_path, "k")
    assert store.load(10, 4) is None
    for start, stop, _ in (shard_range(10, r, 3) for r in range(3)):  # written by 3 ranks: 0-4, 4-8, 8-10
        store.save(start, vecs[start:stop])
    torch.testing.assert_close(store.load(10, 4), vecs)  # read by any world size
    (store.folder / "rows-4-8.safetensors").unlink()
    assert store.load(10, 4) is None  # a gap is not a cache
    store.save(2, vecs[2:9])  # overlapping ranges from another world size fill it
    torch.testing.assert_close(store.load(10, 4), vecs)
    assert not list(store.folder.glob(".*tmp*"))  # atomic writes leave no temp files


def test_frozen_cache_is_stored_and_reloaded_after_a_restart_without_re_encoding(llama, tmp_path):
    first = enc(llama)
    built = load_or_build(first, tmp_path, rank=0, world=1, gather=lambda t: t.unsqueeze(0))
    assert first.tokens_processed == sum(max(1, len(s)) for s in SEQS)
    restarted = enc(llama)  # a new process: same model, same tokens
    assert cache_key(restarted) == cache_key(first)
    loaded = load_or_build(restarted, tmp_path, rank=0, world=1, gather=lambda t: t.unsqueeze(0))
    assert restarted.tokens_processed == 0  # nothing re-encoded
    torch.testing.assert_close(loaded, built)
    other_tokens = enc(llama, seqs=[s[::-1] for s in SEQS])
    assert cache_key(other_tokens) != cache_key(first)  # changed text (or model, pooling...) -> another key


def test_sharded_build_encodes_only_this_ranks_rows(llama):
    e = enc(llama)
    # rank 1 of 2: rows [4, 8); the "gather" stands in for rank 0 with this rank's own rows (shapes are what matter)
    cache = build_sharded(e, rank=1, world=2, gather=lambda t: torch.stack([t, t]))
    assert cache.shape == (8, 64)
    assert e.tokens_processed == sum(max(1, len(s)) for s in SEQS[4:])


def test_fine_tuning_mode_uses_the_cache_for_negatives_and_evaluation_only(llama):
    e = enc(llama, "lora", lora_r=2, lora_target_modules=["q_proj"]).train()
    ids = torch.tensor([0, 1])
    e(ids, {})  # no cache yet: live
    live = e.tokens_processed
    e.refresh_cache()
    after_refresh = e.tokens_processed
    e(ids, {})  # positives: live, with gradients
    assert e.tokens_processed == after_refresh + 7
    e(ids, {USE_TEXT_CACHE: True})  # negatives: from the cache
    with torch.no_grad():
        e(ids, {})  # evaluation: from the cache
    assert e.tokens_processed == after_refresh + 7 and live == 7
