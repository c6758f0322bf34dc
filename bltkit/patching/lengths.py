"""Patch-length algebra (docs/reference-semantics.md §4.1, §5). Axes: B batch, N bytes, P patches.

Conventions:
- ``patch_lengths`` is (B, P) int64, right-padded with zeros, no non-zero after a zero;
- the model's rows sum to ``N + 1`` (the last patch holds the target of the last byte), the first
  patch is 1 byte (BOS alone);
- ``patch_ids[b, i]`` is the index of the patch that holds byte i; zero-length patches are skipped.
"""
from __future__ import annotations

from typing import Optional

import torch


def patch_starts(patch_lengths: torch.Tensor) -> torch.Tensor:
    """Start offset of each patch, (B, P): exclusive cumulative sum."""
    return torch.cumsum(patch_lengths, dim=-1) - patch_lengths


def patch_ids_from_lengths(patch_lengths: torch.Tensor, n: int) -> torch.Tensor:
    """Index of the patch holding byte i, (B, N). Zero-length patches never own a byte.

    ``#{m : start_m <= i} - 1`` over the patch *ends*: a searchsorted over cumulative ends gives
    the first patch whose end exceeds i, which skips empty patches (docs/reference-semantics.md §4.1).
    """
    ends = torch.cumsum(patch_lengths, dim=-1)  # (B, P)
    pos = torch.arange(n, device=patch_lengths.device, dtype=ends.dtype).expand(patch_lengths.shape[0], n)
    return torch.searchsorted(ends.contiguous(), pos.contiguous(), right=True)


def decoder_patch_ids(patch_lengths: torch.Tensor, n: int) -> torch.Tensor:
    """Global patch that byte i reads in the decoder: ``patch_ids(pl[:, 1:])`` = ``pid(i+1) - 1``.

    Byte i predicts byte i+1 and must see only patches that end at or before i: the patch just
    before the one holding its target (docs/reference-semantics.md §5).
    """
    return patch_ids_from_lengths(patch_lengths[:, 1:], n)


def validate_patch_lengths(patch_lengths: torch.Tensor, n: int, extra: int = 1, first_one: bool = True) -> None:
    """Raise ``ValueError`` naming the row when ``patch_lengths`` break the model's conventions.

    Rows must sum to ``n + extra``; lengths are >= 0 with no non-zero after a zero; the first is 1
    when ``first_one``.
    """
    if patch_lengths.dim() != 2:
        raise ValueError(f"patch_lengths must be (batch, patches), got shape {tuple(patch_lengths.shape)}")
    if patch_lengths.dtype.is_floating_point or patch_lengths.dtype == torch.bool:
        raise ValueError(f"patch_lengths must be integers, got {patch_lengths.dtype}")
    if patch_lengths.shape[1] == 0:
        raise ValueError("patch_lengths has no patches")
    pl = patch_lengths.detach().to("cpu", torch.int64)
    neg = (pl < 0).any(dim=1)
    if bool(neg.any()):
        r = int(neg.nonzero()[0])
        raise ValueError(f"patch_lengths row {r} has a negative length: {pl[r].tolist()}")
    zero = pl == 0
    # A zero followed by a later non-zero: some zero has a non-zero to its right.
    later_nonzero = torch.flip(torch.cummax(torch.flip((~zero).int(), [1]), dim=1).values, [1])
    bad = (zero[:, :-1] & later_nonzero[:, 1:].bool()).any(dim=1)
    if bool(bad.any()):
        r = int(bad.nonzero()[0])
        raise ValueError(f"patch_lengths row {r} has a zero length before a non-zero one: {pl[r].tolist()}")
    sums = pl.sum(dim=1)
    wrong = sums != n + extra
    if bool(wrong.any()):
        r = int(wrong.nonzero()[0])
        raise ValueError(
            f"patch_lengths row {r} sums to {int(sums[r])}, expected {n + extra} "
            f"({n} bytes + {extra}); row sums: {sums.tolist()}"
        )
    if first_one:
        first = pl[:, 0] != 1
        if bool(first.any()):
            r = int(first.nonzero()[0])
            raise ValueError(f"patch_lengths row {r} starts with a patch of {int(pl[r, 0])} bytes; the first patch must be 1 byte (BOS alone)")


def trim_zero_columns(patch_lengths: torch.Tensor) -> torch.Tensor:
    """Drop trailing columns that are zero in every row (docs/reference-semantics.md §4.4)."""
    nonzero_cols = (patch_lengths != 0).any(dim=0)
    if not bool(nonzero_cols.any()):
        return patch_lengths[:, :1]
    last = int(nonzero_cols.nonzero().max()) + 1
    return patch_lengths[:, :last]


def lengths_from_boundaries(boundary: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Patch lengths (B, P), right-zero-padded, of the patches that ``boundary`` (B, N) bool opens
    (True = the byte opens a patch; position 0 must be one) over the ``valid`` bytes (B, N, a
    prefix of each row; all when None): learned boundaries. Rows sum to N: a row's padding is
    folded into its last patch, as packed rows do (``bltkit.data.packing``)."""
    b = boundary.detach().to("cpu", torch.bool)
    v = torch.ones_like(b) if valid is None else valid.detach().to("cpu", torch.bool)
    rows = []
    for r in range(b.shape[0]):
        n = int(v[r].sum())
        starts = b[r, :n].nonzero()[:, 0].tolist()
        if n and (not starts or starts[0] != 0):
            raise ValueError(f"row {r}: position 0 opens no patch (boundaries {starts[:8]}...)")
        row = [e - a for a, e in zip(starts, starts[1:] + [n])]
        if row:
            row[-1] += b.shape[1] - n
        rows.append(row or [b.shape[1]])
    return pad_rows(rows)


def pad_rows(rows: list[torch.Tensor] | list[list[int]], min_cols: int = 1) -> torch.Tensor:
    """Stack 1-D length rows into a right-zero-padded (B, P) int64 tensor."""
    rows = [torch.as_tensor(r, dtype=torch.int64) for r in rows]
    p = max([min_cols] + [int(r.numel()) for r in rows])
    out = torch.zeros(len(rows), p, dtype=torch.int64)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r
    return out
