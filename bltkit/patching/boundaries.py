"""Patch-start rules of every scheme, vectorised over ragged batches (docs/reference-semantics.md §4.2-§4.4).

Layout: a batch of rows of lengths ``S_b`` is handled *flat*. Each row b has ``L_b = S_b + inc``
candidate start positions ``c = 0 .. L_b - 1`` (``inc`` = include_next_token: position ``S_b`` is
the virtual next byte). All rows' positions are concatenated into one vector of M positions, each
knowing its row and its ``c``; rules read row-local scores by gathering, so no row ever sees
another row's values and no padding is ever computed on. Then:

    start mask (M,) --split at max_patch_length--> (M,) --count--> patch lengths (B, P)

Rules (scores ``H`` of the row, ``H[t]`` = entropy of the prediction of byte t+1):
- every scheme: position 0 starts a patch (BOS alone);
- ``entropy`` (global θ): positions 0, 1 always; ``c >= 2`` starts iff ``H[c-1] > θ`` (strict, nats);
  H[0] is never used (docs/reference-semantics.md §4.2);
- ``monotonic`` (approximate monotonic, relative θ): 0, 1, 2 always; ``c >= 3`` iff
  ``H[c-1] - H[c-2] > θ``;
- ``entropy`` with ``threshold_add`` (global + monotonic): 0, 1, 2 always; ``c = 3`` never;
  ``c >= 4`` iff ``H[c-1] - H[c-2] > θ_add`` and ``H[c-1] > θ``. The reference's ``¬m_{j-1}`` uses
  its *initial* mask (only ``m_0`` set), so this is the whole rule (docs/reference-semantics.md §4.2);
- ``space`` (SpaceByte, docs/reference-semantics.md §4.3): 0, 1 always; ``c >= 2`` iff byte ``c-1`` is marked: the first of a
  run of space-like bytes (not ``[0-9A-Za-z]``, not a UTF-8 continuation byte) or a special id;
- ``static`` K: 0, then every K-th position from 1 (``[1, K, K, ..., rest]``): the reference's
  static mode has no 1-byte first patch and relies on packing to fix it (docs/reference-semantics.md §4.3); we make the BOS
  patch 1 byte directly so every scheme's output feeds the model as is, and the following patches
  hold the document's bytes K at a time;
- ``byte``: every position.
``max_patch_length`` m then splits each patch of length l > m into ``m, m, ..., rest`` in order
(docs/reference-semantics.md §4.4): a position starts a patch when its offset inside its patch is a multiple of m.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..data.vocab import OFFSET

SCHEMES = ("entropy", "monotonic", "static", "space", "byte")


def flat_positions(lengths: torch.Tensor, inc: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row index and in-row position ``c`` of every candidate start, each (M,), M = Σ (S_b + inc)."""
    n_pos = lengths + inc  # (B,)
    b = lengths.numel()
    row = torch.repeat_interleave(torch.arange(b, device=lengths.device), n_pos)  # (M,)
    first = torch.cumsum(n_pos, 0) - n_pos  # (B,)
    c = torch.arange(row.numel(), device=lengths.device) - first[row]  # (M,)
    return row, c


def _gather_prev(values: torch.Tensor, lengths: torch.Tensor, row: torch.Tensor, c: torch.Tensor, back: int) -> torch.Tensor:
    """``values`` of the same row at position ``c - back`` (flat values of rows of ``lengths``);
    positions with ``c - back`` outside the row get an arbitrary value the caller masks out."""
    if values.numel() == 0:
        return torch.zeros(c.shape, dtype=values.dtype, device=c.device)
    first = torch.cumsum(lengths, 0) - lengths  # (B,)
    idx = (first[row] + c - back).clamp(0, values.numel() - 1)
    return values[idx]


def space_marks(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """SpaceByte marks of flat ``ids`` (N,): specials, and the first byte of each space-like run."""
    b = ids - OFFSET
    alnum = ((b >= 48) & (b <= 57)) | ((b >= 65) & (b <= 90)) | ((b >= 97) & (b <= 122))
    continuation = (b >= 0x80) & (b < 0xC0)
    special = ids < OFFSET
    like = special | (~alnum & ~continuation)  # (N,)
    prev = torch.zeros_like(like)
    prev[1:] = like[:-1]
    row_first = (torch.cumsum(lengths, 0) - lengths)[lengths > 0]
    prev[row_first] = False  # the previous element of a row's first byte is nothing
    return (like & ~prev) | special


def start_mask(
    scheme: str,
    lengths: torch.Tensor,  # (B,) row lengths S_b
    inc: int,
    scores: Optional[torch.Tensor] = None,  # (N,) flat entropies, N = Σ S_b
    ids: Optional[torch.Tensor] = None,  # (N,) flat ids (space scheme)
    threshold: Optional[float] = None,
    threshold_add: Optional[float] = None,
    patch_size: int = 4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row (M,), c (M,), start (M,) bool) for ``scheme`` (see the module docstring)."""
    row, c = flat_positions(lengths, inc)
    if scheme == "byte":
        start = torch.ones_like(c, dtype=torch.bool)
    elif scheme == "static":
        start = (c == 0) | ((c - 1) % patch_size == 0)
    elif scheme == "space":
        marks = space_marks(ids, lengths)
        start = (c < 2) | _gather_prev(marks, lengths, row, c, 1)
    elif scheme in ("entropy", "monotonic"):
        h1 = _gather_prev(scores, lengths, row, c, 1)  # H[c-1]
        if scheme == "entropy" and threshold_add is None:
            start = (c < 2) | (h1 > threshold)
        else:
            h2 = _gather_prev(scores, lengths, row, c, 2)  # H[c-2]
            if scheme == "monotonic":
                start = (c < 3) | ((h1 - h2) > threshold)
            else:
                start = (c < 3) | ((c > 3) & ((h1 - h2) > threshold_add) & (h1 > threshold))
    else:
        raise ValueError(f"unknown patching scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    return row, c, start


def split_long(start: torch.Tensor, max_len: int) -> torch.Tensor:
    """Add starts so no patch exceeds ``max_len``: ``l -> m, m, ..., rest`` (docs/reference-semantics.md §4.4). Needs every
    row's first position to be a start (it always is)."""
    idx = torch.arange(start.numel(), device=start.device)
    seg = torch.cummax(torch.where(start, idx, torch.zeros_like(idx)), 0).values  # start of own patch
    return (idx - seg) % max_len == 0


def lengths_from_starts(start: torch.Tensor, row: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Patch lengths (B, P), zero-padded on the right, from a flat start mask; P = most patches a row."""
    dev = start.device
    n_per = torch.zeros(n_rows, dtype=torch.int64, device=dev).index_add_(0, row, start.long())  # (B,)
    total = int(n_per.sum())
    p = int(n_per.max()) if n_rows else 0
    out = torch.zeros(n_rows, p, dtype=torch.int64, device=dev)
    if total == 0:
        return out
    pid = torch.cumsum(start.long(), 0) - 1  # (M,) global patch index of each position
    plen = torch.bincount(pid, minlength=total)  # (Ptot,)
    prow = torch.repeat_interleave(torch.arange(n_rows, device=dev), n_per)  # (Ptot,)
    col = torch.arange(total, device=dev) - (torch.cumsum(n_per, 0) - n_per)[prow]
    out[prow, col] = plen
    return out
