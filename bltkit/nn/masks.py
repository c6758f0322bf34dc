"""Attention masks from ids, in the forms ``attend`` accepts. Axes: B batch, T queries, S keys,
n query blocks, L keys a block.

Local (byte) attention in the reference is *local block-causal* (docs/reference-semantics.md §8.1):
key s is visible to query t when ``s <= t``, ``t - s < window`` and both are in the same document,
where a document ends at and includes an EOS. Positions (RoPE) are not reset at documents.
The rule is written out in docs/reference-semantics.md, "Masks".

Full-sequence local self-attention comes in three forms, chosen by ``local_self_mask``:

| form      | what                                                     | cost a layer   |
|-----------|----------------------------------------------------------|----------------|
| dense     | (B, 1, T, T) bool for SDPA: the reference, kept to check and measure against | T x T |
| blocked   | ``LocalWindowMask``: queries in blocks of ``block``, each block attending to the ``block + window - 1`` keys that can reach it | T x (block + window) |
| flex      | FlexAttention ``BlockMask`` built from per-block document and window bounds, never a T x T tensor (``local_attention="dense"``: ``create_block_mask``, which evaluates every pair) | kernel: T x window |

All three give the same values (tests/test_attention.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import torch

from ..data.vocab import EOS_ID

LocalAttention = Literal["blocked", "dense"]
LOCAL_ATTENTION = ("blocked", "dense")
FLEX_BLOCK = 128  # FlexAttention's default sparse block (queries and keys)


def document_ids(ids: torch.Tensor, eos_id: int = EOS_ID) -> torch.Tensor:
    """Document index of each position, (B, T): the number of EOS strictly before it."""
    eos = (ids == eos_id).to(torch.int32)
    return torch.cumsum(eos, dim=-1) - eos


def local_causal_mask(
    doc_q: torch.Tensor,  # (B, T) document ids of the queries
    doc_k: torch.Tensor,  # (B, S) document ids of the keys
    pos_q: torch.Tensor,  # (T,) or (B, T) absolute positions of the queries
    pos_k: torch.Tensor,  # (S,) or (B, S) absolute positions of the keys
    window: Optional[int] = None,
    doc_reset: bool = True,
) -> torch.Tensor:
    """Dense (B, 1, T, S) bool: causal, within ``window``, within the document."""
    pq = pos_q if pos_q.dim() == 2 else pos_q[None]
    pk = pos_k if pos_k.dim() == 2 else pos_k[None]
    diff = pq[:, :, None] - pk[:, None, :]  # (B|1, T, S)
    m = diff >= 0
    if window is not None:
        m = m & (diff < window)
    if doc_reset:
        m = m & (doc_q[:, :, None] == doc_k[:, None, :])
    return m[:, None]


# ---- blocked: O(T x window) on every device, through plain SDPA ---------------------------------
def default_block(window: int) -> int:
    """Queries a block. Smaller blocks waste fewer keys (a block reads ``block + window - 1`` keys
    for about ``window`` visible ones) but make more, smaller tiles. For a window of 512 on a CPU,
    32 measured best in fp32 (head dims 16 and 64) and within about 10% of the best block in bf16
    through the whole entropy model; 64 ran SDPA's bf16 flash kernel at half its rate at head
    dim 64 (docs/benchmarks.md, "Entropy patching on a CPU with bf16 matrix units")."""
    return max(16, min(32, window // 16))


@dataclass
class LocalWindowMask:
    """Local block-causal self-attention over (B, T) as blocks: query block i (positions
    ``i*block .. i*block + block - 1``) sees the keys ``i*block - (window - 1) .. i*block + block - 1``
    (``L = block + window - 1`` of them). Query r of a block and key j of its span are
    ``r - j + window - 1`` positions apart whatever the block, so the causal window rule is one
    (block, L) ``band`` shared by all blocks; the document rule compares ``doc_q`` with ``doc_k``.
    Padding gets documents of its own (-2 before position 0, -1 past T), so no real query sees
    it; every real query sees itself, so no row is empty; padded query rows see padding only and
    ``attend`` cuts them off.

    With ``context`` the keys are ``window - 1`` carried positions before position 0 (the end of
    the previous chunk of the row, ``bltkit.nn.kv_cache.WindowCarry``) followed by the T queries'
    own, instead of padding then the queries' own; ``doc_k`` holds the carried keys' documents."""

    length: int  # T
    window: int
    block: int
    band: torch.Tensor  # (block, L) bool: 0 <= r - j + window - 1 < window
    doc_q: torch.Tensor  # (B, n, block) document of each query
    doc_k: torch.Tensor  # (B, n, L) document of each key
    context: bool = False  # keys: window - 1 carried positions, then the T queries' own
    # The caller knows every real position and key is in one document and no key is padding
    # before position 0 (a carried chunk inside one document): the band alone decides, one
    # (block, L) bias broadcast over rows and blocks. Keys past T stay unseen (the band is causal).
    one_document: bool = False
    _bias: dict = field(default_factory=dict, repr=False)

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.length / self.block)

    @property
    def span(self) -> int:
        return self.block + self.window - 1

    @property
    def allowed(self) -> torch.Tensor:
        """(B, n, block, L) bool: which key of its span each query may attend to."""
        return self.band & (self.doc_q[..., :, None] == self.doc_k[..., None, :])

    def bias(self, dtype: torch.dtype) -> torch.Tensor:
        """Additive (B, n, block, L) form of ``allowed`` in ``dtype`` ((1, 1, block, L) for
        ``one_document``), built once a forward (every layer shares it) in two passes over it.
        -inf, as SDPA turns a boolean mask, so the blocked and dense paths round alike."""
        if dtype not in self._bias:
            band = torch.zeros(self.band.shape, dtype=dtype, device=self.band.device).masked_fill_(~self.band, float("-inf"))
            if self.one_document:  # (1, 1, block, L): SDPA reads one tile for every block
                self._bias[dtype] = band[None, None]
                return self._bias[dtype]
            same = self.doc_q[..., :, None] == self.doc_k[..., None, :]
            self._bias[dtype] = torch.where(same, band, torch.tensor(float("-inf"), dtype=dtype, device=band.device))
        return self._bias[dtype]


def local_window_mask(doc: torch.Tensor, window: int, doc_reset: bool = True,
                      block: Optional[int] = None, context_doc: Optional[torch.Tensor] = None,
                      one_document: bool = False) -> LocalWindowMask:
    """The blocked form of ``local_causal_mask(doc, doc, pos, pos, window, doc_reset)``.

    ``context_doc`` (B, window - 1): the documents of ``window - 1`` carried keys before position
    0 (-2 where a row has none yet), in the same numbering as ``doc``; the keys attention is then
    given are those carried keys followed by the queries' own (``LocalWindowMask.context``).
    ``one_document``: the caller's promise that the band alone decides (``LocalWindowMask``)."""
    if window is None or window < 1:
        raise ValueError(f"the blocked local mask needs a window >= 1, got {window}")
    block = block or default_block(window)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    b, t = doc.shape
    n = max(1, math.ceil(t / block))
    span = block + window - 1
    dev = doc.device
    gap = torch.arange(block, device=dev)[:, None] - torch.arange(span, device=dev)[None, :] + (window - 1)
    band = (gap >= 0) & (gap < window)  # (block, L)
    d = torch.full((b, window - 1 + n * block), -1, dtype=torch.int32, device=dev)
    if context_doc is None:
        d[:, : window - 1] = -2
    elif context_doc.shape != (b, window - 1):
        raise ValueError(f"context_doc must be (batch, window - 1) = {(b, window - 1)}, got {tuple(context_doc.shape)}")
    else:
        d[:, : window - 1] = context_doc if doc_reset else torch.where(context_doc == -2, -2, 0)
    d[:, window - 1: window - 1 + t] = doc if doc_reset else 0
    doc_q = d[:, window - 1:].view(b, n, block)
    doc_k = d.unfold(1, span, block)  # (B, n, L), a view
    return LocalWindowMask(t, window, block, band, doc_q, doc_k, context_doc is not None, one_document)


# ---- spans: each query sees a few consecutive slots, gathered ----------------------------------
@dataclass
class SlotSpanMask:
    """Query t sees exactly the keys ``start[t] .. start[t] + width - 1`` (a byte reading the k
    cross vectors of one patch in a cached decoder step): ``attend`` gathers those ``width`` keys
    a query instead of scoring all S slots with a (B, 1, T, S) mask, so a step costs T x width,
    not T x S. ``start < 0``: no key (an empty row; ``CrossAttention`` returns 0 for it)."""

    start: torch.Tensor  # (B, T) int64 first visible slot, -1 = none
    width: int
    _index: Optional[tuple] = field(default=None, repr=False)

    def has_key(self) -> torch.Tensor:
        """(B, 1, T, 1) bool: which queries see a key."""
        return (self.start >= 0)[:, None, :, None]

    def index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Row (B, 1, 1) and slot (B, T, w) indices of every visible key, built once (every
        layer of a step shares them); an empty row reads slot 0."""
        if self._index is None:
            b, _ = self.start.shape
            dev = self.start.device
            slots = self.start.clamp(min=0)[..., None] + torch.arange(self.width, device=dev)
            self._index = (torch.arange(b, device=dev)[:, None, None], slots)
        return self._index


# ---- flex: a BlockMask from block bounds, O((T / 128)^2) to build ------------------------------
def _local_mask_mod(doc: torch.Tensor, window: Optional[int], doc_reset: bool):
    def mask_mod(bi, h, q, k):
        m = k <= q
        if window is not None:
            m = m & (q - k < window)
        if doc_reset:
            m = m & (doc[bi, q] == doc[bi, k])
        return m
    return mask_mod


def local_causal_block_mask(doc: torch.Tensor, window: Optional[int] = None, doc_reset: bool = True,
                            local_attention: LocalAttention = "blocked"):
    """FlexAttention BlockMask for full-sequence local block-causal attention over (B, T).

    ``blocked`` (default) decides which 128 x 128 tiles are empty, partial or full from each
    tile's position range and its first and last document id (ids never decrease along a row),
    so building it costs (T/128)^2, not T^2, and the kernel visits only the tiles in the window
    band. A tile counts as full only when every pair in it is visible; partial tiles apply the
    same ``mask_mod`` as ``dense``, so both forms give identical attention. ``dense`` is
    ``create_block_mask``, which evaluates the rule on all T x T pairs.
    """
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask

    b, t = doc.shape
    mask_mod = _local_mask_mod(doc, window, doc_reset)
    if local_attention == "dense":
        return create_block_mask(mask_mod, B=b, H=None, Q_LEN=t, KV_LEN=t, device=doc.device)
    if local_attention != "blocked":
        raise ValueError(f"local_attention must be one of {LOCAL_ATTENTION}, got {local_attention!r}")
    nt = max(1, math.ceil(t / FLEX_BLOCK))
    dev = doc.device
    start = torch.arange(nt, device=dev) * FLEX_BLOCK  # first position of each tile
    end = torch.clamp(start + FLEX_BLOCK, max=t) - 1  # last real position
    q_lo, q_hi = start[:, None], end[:, None]  # query tile rows
    k_lo, k_hi = start[None, :], end[None, :]  # key tile columns
    any_ = k_lo <= q_hi  # some key at or before some query
    full = (k_hi <= q_lo) & (end - start + 1 == FLEX_BLOCK)[:, None] & (end - start + 1 == FLEX_BLOCK)[None, :]
    if window is not None:
        any_ = any_ & (q_lo - k_hi < window)
        full = full & (q_hi - k_lo < window)
    any_, full = any_[None].expand(b, -1, -1), full[None].expand(b, -1, -1)  # (B, tiles_q, tiles_k)
    if doc_reset:
        d_lo, d_hi = doc[:, start], doc[:, end]  # (B, tiles): first and last document of each tile
        any_ = any_ & (d_hi[:, None, :] >= d_lo[:, :, None]) & (d_lo[:, None, :] <= d_hi[:, :, None])
        one = d_lo == d_hi
        full = full & one[:, :, None] & one[:, None, :] & (d_lo[:, :, None] == d_lo[:, None, :])
    partial = any_ & ~full

    def ordered(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, 1, tiles_q) counts and (B, 1, tiles_q, tiles_k) key-tile indices, listed ones first.
        num = tiles.sum(-1, dtype=torch.int32)
        idx = torch.argsort(~tiles, dim=-1, stable=True).to(torch.int32)
        return num[:, None], idx[:, None]

    kv_num, kv_idx = ordered(partial)
    full_num, full_idx = ordered(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=FLEX_BLOCK,
                                    mask_mod=mask_mod, seq_lengths=(t, t))


def local_self_mask(doc: torch.Tensor, window: Optional[int], doc_reset: bool, impl: str,
                    local_attention: LocalAttention = "blocked") -> Any:
    """The mask of full-sequence local self-attention over (B, T) for attention path ``impl``
    (``sdpa`` or ``flex``). ``local_attention="dense"`` keeps the T x T reference construction
    (measurement and tests); ``blocked`` costs the window. Without a window, or when the window
    covers the sequence, the dense mask is already the whole cost and is used."""
    if local_attention not in LOCAL_ATTENTION:
        raise ValueError(f"local_attention must be one of {LOCAL_ATTENTION}, got {local_attention!r}")
    if impl == "flex":
        return local_causal_block_mask(doc, window, doc_reset, local_attention)
    t = doc.shape[1]
    if local_attention == "blocked" and window is not None and t > window:
        return local_window_mask(doc, window, doc_reset)
    pos = torch.arange(t, device=doc.device)
    return local_causal_mask(doc, doc, pos, pos, window, doc_reset)  # (B, 1, T, T)
