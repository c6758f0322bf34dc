"""Windowed attention that costs its window: the blocked SDPA form and the FlexAttention
BlockMask built from tile bounds equal the dense T x T reference, for every length, window,
block size and EOS placement, in the entropy model and the BLT; the blocked form's cost grows
with T x window, not T^2; and the gathered slot spans of a cached decoder step equal the dense
mask over every slot."""
import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from bltkit.data.vocab import EOS_ID
from bltkit.model import ByteLatentTransformer, load_blt_config
from bltkit.nn.attention import CrossAttention, attend
from bltkit.nn.masks import (LocalWindowMask, SlotSpanMask, document_ids, local_causal_block_mask, local_causal_mask,
                             local_self_mask, local_window_mask)
from entropy_model.model import EntropyModel, EntropyModelConfig

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def docs_of(b: int, t: int, eos_at: list[int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 260, (b, t), generator=g)
    for p in eos_at:
        ids[:, p % t] = EOS_ID
    ids[-1, :: max(1, t // 3)] = EOS_ID  # the last row has its own documents
    return ids


def qkv(b, h, t, d, hkv=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, t, d, generator=g), torch.randn(b, hkv or h, t, d, generator=g),
            torch.randn(b, hkv or h, t, d, generator=g))


def dense(doc, window, doc_reset):
    pos = torch.arange(doc.shape[1])
    return local_causal_mask(doc, doc, pos, pos, window, doc_reset)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=st.integers(1, 300), window=st.integers(1, 80), block=st.integers(1, 70), doc_reset=st.booleans(),
       eos_at=st.lists(st.integers(0, 299), max_size=6), gqa=st.booleans())
def test_blocked_equals_dense(t, window, block, doc_reset, eos_at, gqa):
    doc = document_ids(docs_of(2, t, eos_at))
    q, k, v = qkv(2, 4, t, 8, hkv=2 if gqa else None)
    ref = attend(q, k, v, dense(doc, window, doc_reset))
    out = attend(q, k, v, local_window_mask(doc, window, doc_reset, block))
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t0=st.integers(0, 120), t=st.integers(1, 150), window=st.integers(2, 60), block=st.integers(1, 40),
       doc_reset=st.booleans(), eos_at=st.lists(st.integers(0, 269), max_size=6))
def test_blocked_with_carried_keys_equals_dense_over_the_whole_row(t0, t, window, block, doc_reset, eos_at):
    # A chunk of t queries after t0 earlier positions of its row, given only the last window - 1
    # of their keys (zeros and document -2 where the row has fewer): the dense rows t0.. of the whole row.
    doc = document_ids(docs_of(2, t0 + t, eos_at))
    q, k, v = qkv(2, 2, t0 + t, 8)
    ref = attend(q, k, v, dense(doc, window, doc_reset))[:, :, t0:]
    c = window - 1
    lead = max(0, c - t0)  # carried slots the row has no position for
    pad = lambda x: torch.cat([x.new_zeros(x.shape[:2] + (lead,) + x.shape[3:]), x[:, :, max(0, t0 - c):t0]], 2)
    ctx_doc = torch.cat([torch.full((2, lead), -2, dtype=torch.int32), doc[:, max(0, t0 - c):t0]], 1)
    mask = local_window_mask(doc[:, t0:], window, doc_reset, block, context_doc=ctx_doc)
    kc, vc = torch.cat([pad(k), k[:, :, t0:]], 2), torch.cat([pad(v), v[:, :, t0:]], 2)
    torch.testing.assert_close(attend(q[:, :, t0:], kc, vc, mask), ref, atol=2e-6, rtol=1e-5)
    if lead == 0 and (not doc_reset or bool((doc[:, t0 - c:] == doc[:, t0 - c:t0 - c + 1]).all())):
        # one document, every carried key real: the band alone, one tile for every block
        one = local_window_mask(doc[:, t0:], window, doc_reset, block, context_doc=ctx_doc, one_document=True)
        assert one.bias(torch.float32).shape == (1, 1, one.block, one.span)
        torch.testing.assert_close(attend(q[:, :, t0:], kc, vc, one), ref, atol=2e-6, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(t=st.integers(1, 12), s=st.integers(1, 40), width=st.integers(1, 4), seed=st.integers(0, 2**16),
       empty_rows=st.sampled_from(["zero", "uniform"]))
def test_slot_spans_equal_the_dense_mask(t, s, width, seed, empty_rows):
    """Query i sees slots start[i] .. start[i] + width - 1: gathered, as a (B, 1, T, S) mask over
    every slot gives; a row with no span (start -1, padding in a cached step) gives 0."""
    g = torch.Generator().manual_seed(seed)
    n = s * width
    start = torch.randint(-1, s, (2, t), generator=g) * width
    start = torch.where(start < 0, -1, start)
    q, k, v = (torch.randn(2, 4, m, 8, generator=g) for m in (t, n, n))
    slot = torch.arange(n)
    dense_m = ((slot >= start[..., None]) & (slot < start[..., None] + width) & (start[..., None] >= 0))[:, None]
    real = start >= 0
    spans = SlotSpanMask(start, width)
    if real.any():
        ref = attend(q, k, v, dense_m | ~dense_m.any(-1, keepdim=True))
        out = attend(q, k, v, spans)
        torch.testing.assert_close(out.transpose(1, 2)[real], ref.transpose(1, 2)[real], atol=2e-6, rtol=1e-5)
    layer = CrossAttention(32, 4, empty_rows=empty_rows)
    x, kv = torch.randn(2, t, 32, generator=g), torch.randn(2, n, 32, generator=g)
    got = layer(x, kv, spans)
    torch.testing.assert_close(got[real], layer(x, kv, dense_m)[real], atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(got[~real], x[~real])  # no span: the residual only


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=st.integers(1, 420), window=st.one_of(st.none(), st.integers(1, 300)), doc_reset=st.booleans(),
       eos_at=st.lists(st.integers(0, 419), max_size=5))
def test_flex_block_mask_from_tiles_equals_create_block_mask(t, window, doc_reset, eos_at):
    """The tile-bound BlockMask has exactly create_block_mask's full tiles, a superset of its
    partial ones (partial tiles apply the same rule), and flex over it equals dense SDPA."""
    from torch.nn.attention.flex_attention import flex_attention

    doc = document_ids(docs_of(2, t, eos_at))
    fast = local_causal_block_mask(doc, window, doc_reset)
    ref = local_causal_block_mask(doc, window, doc_reset, local_attention="dense")
    torch.testing.assert_close(fast.full_kv_num_blocks, ref.full_kv_num_blocks, rtol=0, atol=0)
    assert torch.equal(fast.to_dense() | ref.to_dense(), fast.to_dense())
    q, k, v = qkv(2, 2, t, 8)
    out = flex_attention(q, k, v, block_mask=fast)
    torch.testing.assert_close(out, attend(q, k, v, dense(doc, window, doc_reset)), atol=2e-6, rtol=1e-5)


def test_flex_block_mask_skips_tiles_outside_the_window():
    doc = torch.zeros(1, 128 * 64, dtype=torch.int32)
    bm = local_causal_block_mask(doc, 512, True)
    visited = int(bm.kv_num_blocks.sum() + bm.full_kv_num_blocks.sum())
    assert visited <= 64 * 6  # a query tile reaches at most 5 key tiles back plus its own
    assert visited < 64 * 65 // 2 // 5  # causal would visit 2080


def test_blocked_costs_the_window(monkeypatch):
    """Scores SDPA computes in one layer (queries x keys of every call it gets): blocked grows
    linearly in T (T x (block + window)), dense as T^2."""
    window, d = 64, 8
    sdpa = torch.nn.functional.scaled_dot_product_attention
    scores = []

    def counting(q, k, v, **kw):
        scores.append(q.shape[:-1].numel() * k.shape[-2])
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)

    def flops(t, mode):
        doc = torch.zeros(1, t, dtype=torch.int32)
        mask = local_self_mask(doc, window, True, "sdpa", mode)
        q, k, v = qkv(1, 1, t, d)
        scores.clear()
        attend(q, k, v, mask)
        return sum(scores)

    blocked = [flops(t, "blocked") for t in (1024, 4096)]
    dense_ = [flops(t, "dense") for t in (1024, 4096)]
    assert 3.5 < blocked[1] / blocked[0] < 4.5  # 4x the length, 4x the work
    assert 15 < dense_[1] / dense_[0] < 17  # 16x
    assert blocked[1] * 20 < dense_[1]
    m = local_window_mask(torch.zeros(2, 4096, dtype=torch.int32), window)
    assert m.bias(torch.float32).numel() <= 2 * (4096 + m.block) * m.span  # no T x T tensor


def test_local_self_mask_forms():
    doc = torch.zeros(2, 100, dtype=torch.int32)
    assert isinstance(local_self_mask(doc, 16, True, "sdpa"), LocalWindowMask)
    assert local_self_mask(doc, 16, True, "sdpa", "dense").shape == (2, 1, 100, 100)
    assert local_self_mask(doc, None, True, "sdpa").shape == (2, 1, 100, 100)  # no window: dense is the cost
    assert local_self_mask(doc, 128, True, "sdpa").shape == (2, 1, 100, 100)  # window covers the row
    with pytest.raises(ValueError, match="'sparse'"):
        local_self_mask(doc, 16, True, "sdpa", "sparse")
    with pytest.raises(ValueError, match="window >= 1"):
        local_window_mask(doc, 0)
    q, k, v = qkv(2, 2, 100, 8)
    with pytest.raises(ValueError, match="full-sequence self-attention"):
        attend(q[:, :, :1], k, v, local_window_mask(doc, 16))
    with pytest.raises(ValueError, match="15 carried keys"):  # a carried mask wants window - 1 keys first
        attend(q, k, v, local_window_mask(doc, 16, context_doc=torch.full((2, 15), -2, dtype=torch.int32)))
    with pytest.raises(ValueError, match=r"context_doc must be .*\(2, 15\).*\(2, 16\)"):
        local_window_mask(doc, 16, context_doc=torch.zeros(2, 16, dtype=torch.int32))


@pytest.mark.parametrize("impl", ["sdpa", "flex"])
def test_entropy_model_blocked_equals_dense(impl):
    cfg = EntropyModelConfig(dim=32, n_layers=2, n_heads=4, window=24, n_kv_heads=2)
    m = EntropyModel(cfg).eval()
    dense_m = EntropyModel(dataclasses.replace(cfg, local_attention="dense")).eval()
    dense_m.load_state_dict(m.state_dict())
    ids = docs_of(3, 150, [10, 11, 70, 149])
    with torch.no_grad():
        torch.testing.assert_close(m(ids, attn_impl=impl), dense_m(ids, attn_impl="sdpa"), atol=1e-5, rtol=1e-5)


def test_blt_blocked_equals_dense():
    """Encoder and decoder windows differ, so both local masks are built (the flex tiles are
    covered above and in tests/test_model.py)."""
    from tests.test_model import random_batch

    cfg = load_blt_config("tiny", overrides=["encoder.window=16", "decoder.window=24"])
    m = ByteLatentTransformer(cfg).eval()
    ref = ByteLatentTransformer(dataclasses.replace(cfg, local_attention="dense")).eval()
    ref.load_state_dict(m.state_dict())
    ids, pl = random_batch(2, 150, seed=3, eos_rate=0.08)
    with torch.no_grad():
        torch.testing.assert_close(m(ids, pl, attn_impl="sdpa"), ref(ids, pl, attn_impl="sdpa"), atol=1e-5, rtol=1e-5)
