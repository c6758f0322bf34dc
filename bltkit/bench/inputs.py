"""The anchor's inputs: random bytes and fixed patch lengths drawn uniformly from 1..8.

``anchor_patch_rows`` repeats shared/anchors/hf_blt_bench.py::fixed_patch_lengths draw for draw
(generator seeded 1, one ``randint(1, 9)`` at a time, the last length cut so a row sums to N).
Hugging Face's BLT takes those rows as they are (Σ = N, blt-reference §11.3); bltkit's convention
puts a 1-byte BOS patch in front (Σ = N + 1, first patch 1, §3.6, pitfall 2), which is exactly
``[1] + row``: the same bytes in the same patches plus the next-byte patch.
Axes: B rows, N bytes, P patches.
"""
from __future__ import annotations

import torch

from ..data.vocab import OFFSET, VOCAB_SIZE
from ..patching.lengths import pad_rows


def anchor_patch_rows(rows: int, n: int, seed: int = 1) -> list[list[int]]:
    """Per row, lengths in 1..8 summing to ``n`` (the anchor's draw, same generator and order)."""
    if rows < 1 or n < 1:
        raise ValueError(f"rows {rows} and bytes {n} must be >= 1")
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(rows):
        lens: list[int] = []
        while sum(lens) < n:
            lens.append(int(torch.randint(1, 9, (1,), generator=g)))
        lens[-1] -= sum(lens) - n
        if lens[-1] == 0:
            lens.pop()
        out.append(lens)
    return out


def hf_patch_lengths(rows: list[list[int]]) -> torch.Tensor:
    """(B, P) zero-padded, rows summing to N: the anchor's tensor for HF's ``patch_lengths``."""
    return pad_rows(rows)


def blt_patch_lengths(rows: list[list[int]]) -> torch.Tensor:
    """(B, P + 1) zero-padded, first patch 1, rows summing to N + 1: bltkit's convention."""
    return pad_rows([[1] + r for r in rows])


def random_bytes(rows: int, n: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, n) random byte ids (4..259: no specials), as the anchor draws them."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(OFFSET, VOCAB_SIZE, (rows, n), generator=g).to(device)


def mean_patch_length(patch_lengths: torch.Tensor, n: int) -> float:
    """Bytes a real (non-empty) patch as the anchor counts it: N / (mean real patches a row).
    Pass the anchor's rows (Σ = N); bltkit's rows hold one more patch (BOS alone)."""
    return n / float((patch_lengths > 0).sum(dim=1).double().mean())
