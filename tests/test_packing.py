"""Packing invariants (docs/reference-semantics.md §5, §12.2, §12.3), checked against a direct model
of the concatenated document stream."""
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from bltkit.data.packing import (BytePacker, PatchPacker, Row, collate, cut_patch_lengths, document_ids,
                                 drop_positions, first_patch_one, shard_batch, truncate_row)
from bltkit.data.vocab import BOE_ID, BOS_ID, EOS_ID
from bltkit.patching.lengths import decoder_patch_ids, patch_ids_from_lengths, validate_patch_lengths


@st.composite
def documents(draw, max_docs=6, max_len=40):
    """Documents as (ids, patch lengths): BOS + bytes + EOS, lengths summing to the document."""
    docs = []
    for _ in range(draw(st.integers(1, max_docs))):
        body = bytes(draw(st.lists(st.integers(0, 255), min_size=0, max_size=max_len)))
        ids = document_ids(body)
        n, pl = ids.numel(), []
        # Reference patchers give BOS its own patch; a static patcher does not (split on packing).
        first = 1 if draw(st.booleans()) else draw(st.integers(1, n))
        pl.append(first)
        left = n - first
        while left:
            k = draw(st.integers(1, min(left, 7)))
            pl.append(k)
            left -= k
        docs.append((ids, torch.tensor(pl)))
    return docs


def stream_of(docs):
    ids = torch.cat([d[0] for d in docs])
    pl = torch.cat([d[1] for d in docs])
    bounds = set(torch.cumsum(pl, 0).tolist()) | {0}
    return ids, pl, bounds


def row_tokens(r: Row) -> torch.Tensor:
    return torch.cat([r.ids, r.targets[-1:]])


def row_bounds(pl: torch.Tensor, start: int) -> set:
    return {start + int(c) for c in torch.cumsum(pl, 0)} | {start}


@settings(max_examples=150, deadline=None)
@given(docs=documents(), p=st.integers(2, 9))
def test_patch_packer_matches_stream_model(docs, p):
    ids, pl, bounds = stream_of(docs)
    packer = PatchPacker(p)
    rows = []
    for d_ids, d_pl in docs:
        packer.add(d_ids, d_pl)
        rows.extend(packer.pop_rows())
    assert len(rows) == pl.numel() // p  # one row per P stream patches
    ends = torch.cumsum(pl, 0).tolist()
    start = 0
    for j, r in enumerate(rows):
        tok = row_tokens(r)
        assert torch.equal(tok, ids[start:start + tok.numel()])  # contiguous stream bytes
        assert r.patch_lengths.numel() == p  # exactly P patches (last one dropped after a split)
        assert int(r.patch_lengths[0]) == 1
        assert int(r.patch_lengths.sum()) == r.ids.numel() + 1
        assert torch.equal(r.targets, tok[1:]) and bool(r.mask.all())
        # Row patch boundaries are stream boundaries, plus the split after the first byte.
        assert row_bounds(r.patch_lengths, start) <= bounds | {start + 1}
        original_first = pl[j * p]
        if int(original_first) == 1:
            assert torch.equal(r.patch_lengths, pl[j * p:(j + 1) * p])
        start = ends[(j + 1) * p - 1]
    if rows:
        batch = collate(rows)
        validate_patch_lengths(batch["patch_lengths"], batch["ids"].shape[1])


@settings(max_examples=150, deadline=None)
@given(docs=documents(), t=st.integers(1, 24), final=st.sampled_from(["masked", "next"]))
def test_byte_packer_fixed_rows(docs, t, final):
    ids, pl, bounds = stream_of(docs)
    packer = BytePacker(t, with_patches=True, final_target=final)
    rows = []
    for d_ids, d_pl in docs:
        packer.add(d_ids, d_pl)
        rows.extend(packer.pop_rows())
    need = t + (final == "next")
    expected_rows = (ids.numel() - need) // t + 1 if ids.numel() >= need else 0
    assert len(rows) == expected_rows
    for j, r in enumerate(rows):
        s = j * t
        assert torch.equal(r.ids, ids[s:s + t])  # the fixed grid: row j is stream[j*T:(j+1)*T]
        if final == "masked":
            assert torch.equal(r.targets[:-1], ids[s + 1:s + t]) and int(r.targets[-1]) == BOE_ID
            assert r.mask.tolist() == [True] * (t - 1) + [False]
        else:
            assert torch.equal(r.targets, ids[s + 1:s + t + 1]) and bool(r.mask.all())
        q = r.patch_lengths
        assert int(q[0]) == 1 and int(q.sum()) == t + 1 and bool((q > 0).all())
        inner = {b for b in row_bounds(q, s) if s < b < s + t}
        assert inner <= bounds | {s + 1}
    if rows:
        validate_patch_lengths(collate(rows)["patch_lengths"], t)


@settings(max_examples=100, deadline=None)
@given(docs=documents(max_docs=4), t=st.integers(2, 16))
def test_flush_and_collate_pad_into_last_patch(docs, t):
    packer = BytePacker(t, with_patches=True)
    rows = []
    for d_ids, d_pl in docs:
        packer.add(d_ids, d_pl)
        rows.extend(packer.pop_rows())
    rows.extend(packer.flush())  # a short final row
    n_real = sum(int(r.mask.sum()) for r in rows)
    batch = collate(rows, pad_to=t)
    b = batch["ids"].shape[0]
    validate_patch_lengths(batch["patch_lengths"], t)
    assert int(batch["mask"].sum()) == n_real
    for i, r in enumerate(rows):
        k = r.ids.numel()
        assert bool((batch["ids"][i, k:] == BOE_ID).all()) and not bool(batch["mask"][i, k:].any())
        q = batch["patch_lengths"][i]
        last = int((q != 0).nonzero().max())
        assert int(q[last]) == int(r.patch_lengths[-1]) + (t - k)  # padding folded into the last patch
        assert torch.equal(q[:last], r.patch_lengths[:-1])
    assert b == len(rows)
    assert all(bool(r.mask.any()) for r in rows)  # a lone leftover byte (no target) makes no row


@settings(max_examples=100, deadline=None)
@given(docs=documents(max_docs=4), t=st.integers(1, 16), final=st.sampled_from(["masked", "next"]))
def test_byte_packer_in_one_piece_equals_document_by_document(docs, t, final):
    """Rows do not depend on how the stream arrives (one long buffer or document by document),
    and every byte but the first is scored once with final_target='next' (flush included)."""
    whole = BytePacker(t, with_patches=True, final_target=final)
    whole.add(torch.cat([d[0] for d in docs]), torch.cat([d[1] for d in docs]))
    a = whole.pop_rows() + whole.flush()
    piece = BytePacker(t, with_patches=True, final_target=final)
    b = []
    for d_ids, d_pl in docs:
        piece.add(d_ids, d_pl)
        b.extend(piece.pop_rows())
    b.extend(piece.flush())
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in ("ids", "targets", "mask", "patch_lengths"):
            assert torch.equal(getattr(x, k), getattr(y, k))
    if final == "next":
        ids = torch.cat([d[0] for d in docs])
        assert torch.equal(torch.cat([r.targets[r.mask] for r in a]), ids[1:])


def test_first_patch_split_drops_last_patch_reference_example():
    # A row starting inside a 3-byte patch: [3, 2, 2] -> [1, 2, 2] (last patch dropped, P kept).
    ids = torch.arange(10, 17)
    packer = PatchPacker(3)
    packer.add(ids, torch.tensor([3, 2, 2]))
    (r,) = packer.pop_rows()
    assert r.patch_lengths.tolist() == [1, 2, 2]
    assert row_tokens(r).tolist() == [10, 11, 12, 13, 14]
    assert first_patch_one(torch.tensor([1, 4])).tolist() == [1, 4]
    assert cut_patch_lengths(torch.tensor([1, 3, 2]), 3).tolist() == [1, 2]
    assert drop_positions(torch.tensor([1, 3, 2]), 3).tolist() == [1, 2]
    assert drop_positions(torch.tensor([1, 3, 2]), 4).tolist() == [2]


def test_truncate_row_shortens_boundary_patch():
    r = Row(torch.arange(4, 14), torch.arange(5, 15), torch.ones(10, dtype=torch.bool), torch.tensor([1, 4, 4, 2]))
    t = truncate_row(r, 6)
    assert t.ids.numel() == 6 and t.patch_lengths.tolist() == [1, 4, 2]
    validate_patch_lengths(collate([t], pad_to=8)["patch_lengths"], 8)


@settings(max_examples=100, deadline=None)
@given(docs=documents(max_docs=5), k=st.integers(1, 5), t=st.integers(1, 6))
def test_byte_packer_shift_k_targets_the_next_patch(docs, k, t):
    """shift=K (the fixed-K patch phase): row r is the K*T bytes from r*K*T, each position's target
    the byte K ahead, so every byte after the first K is a target exactly once (flush included);
    K = 1 is the ordinary byte rows."""
    ids = torch.cat([d[0] for d in docs])
    packer = BytePacker(k * t, final_target="next", shift=k)
    for d_ids, _ in docs:
        packer.add(d_ids)
    rows = packer.pop_rows() + packer.flush()
    if not rows:  # K bytes or fewer: nothing to predict
        assert ids.numel() <= k
        return
    batch = collate(rows, pad_to=k * t)
    for r, row in enumerate(rows):
        seg = ids[r * k * t:]
        n_in = min(k * t, seg.numel())
        assert torch.equal(batch["ids"][r, :n_in], seg[:n_in])
        n_tg = int(batch["mask"][r].sum())
        assert bool(batch["mask"][r, :n_tg].all())
        assert torch.equal(batch["targets"][r, :n_tg], seg[k:k + n_tg])
    assert int(batch["mask"].sum()) == max(0, ids.numel() - k)
    if k == 1:
        byte = BytePacker(t, final_target="next")
        for d_ids, _ in docs:
            byte.add(d_ids)
        same = collate(byte.pop_rows() + byte.flush(), pad_to=t)
        assert all(torch.equal(batch[key], same[key]) for key in batch)


def toy_logits(batch: dict) -> torch.Tensor:
    """A deterministic stand-in for BLT: each position's logits depend on its byte, its encoder
    patch and the decoder patch it reads (docs/reference-semantics.md §5), as a model's would."""
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(260, 260, generator=g)
    pemb = torch.randn(64, 260, generator=g)
    demb = torch.randn(64, 260, generator=g)
    n = batch["ids"].shape[1]
    pid = patch_ids_from_lengths(batch["patch_lengths"], n).clamp(max=63)
    dpid = decoder_patch_ids(batch["patch_lengths"], n).clamp(max=63)
    return emb[batch["ids"]] + pemb[pid] + 0.5 * demb[dpid]


def masked_mean(logits, targets, mask):
    """docs/reference-semantics.md §12.1: per-byte cross-entropy times mask over mask.sum()."""
    tok = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
    return (tok * mask).sum() / mask.sum()


@settings(max_examples=40, deadline=None)
@given(docs=documents(max_docs=5), p=st.integers(2, 6))
def test_packed_equals_padded_loss(docs, p):
    """The loss of a padded batch equals the loss over its rows taken one by one, unpadded: padding
    changes neither targets nor the patch each real byte is in or reads."""
    packer = PatchPacker(p)
    rows = []
    for d_ids, d_pl in docs:
        packer.add(d_ids, d_pl)
        rows.extend(packer.pop_rows())
    rows.extend(packer.flush())
    assert rows  # any document (at least BOS + EOS) makes a row, full or flushed
    batch = collate(rows, pad_to=max(r.ids.numel() for r in rows) + 3)
    packed = masked_mean(toy_logits(batch), batch["targets"], batch["mask"])
    total, count = 0.0, 0
    for r in rows:
        single = collate([r])  # no padding at all
        lg = toy_logits(single)
        total += F.cross_entropy(lg[0], single["targets"][0], reduction="sum").item()
        count += r.ids.numel()
    assert count == int(batch["mask"].sum())
    assert abs(packed.item() - total / count) < 1e-4
    # Eval's ignore_index=0 form (docs/reference-semantics.md §12.1) agrees: BOE is never a real target.
    ce = F.cross_entropy(toy_logits(batch).flatten(0, 1), batch["targets"].flatten(), ignore_index=BOE_ID,
                         reduction="sum")
    assert abs(ce.item() / count - packed.item()) < 1e-4


def test_shard_batch_splits_rows():
    batch = {"ids": torch.arange(12).view(4, 3), "mask": torch.ones(4, 3, dtype=torch.bool)}
    parts = [shard_batch(batch, r, 2) for r in range(2)]
    assert torch.equal(torch.cat([q["ids"] for q in parts]), batch["ids"])
    try:
        shard_batch(batch, 0, 3)
    except ValueError as e:
        assert "3 ranks" in str(e)
    else:
        raise AssertionError("uneven split accepted")


def test_document_ids_bos_eos():
    assert document_ids(b"\xff").tolist() == [BOS_ID, 0xFF + 4, EOS_ID]
