"""Attention masks from ids, in both forms ``attend`` accepts (dense bool for the reference path,
FlexAttention ``BlockMask`` for the fast path). Axes: B batch, T queries, S keys.

Local (byte) attention in the reference is *local block-causal* (blt-reference §4.3, pitfall 8):
key s is visible to query t when ``s <= t``, ``t - s < window`` and both are in the same document,
where a document ends at and includes an EOS. Positions (RoPE) are not reset at documents.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..data.vocab import EOS_ID


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


def local_causal_block_mask(doc: torch.Tensor, window: Optional[int] = None, doc_reset: bool = True):
    """FlexAttention BlockMask for full-sequence local block-causal attention over (B, T)."""
    from torch.nn.attention.flex_attention import create_block_mask

    b, t = doc.shape

    def mask_mod(bi, h, q, k):
        m = k <= q
        if window is not None:
            m = m & (q - k < window)
        if doc_reset:
            m = m & (doc[bi, q] == doc[bi, k])
        return m

    return create_block_mask(mask_mod, B=b, H=None, Q_LEN=t, KV_LEN=t, device=doc.device)
