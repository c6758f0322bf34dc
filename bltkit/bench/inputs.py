"""The anchor's inputs: random bytes, fixed patch lengths drawn uniformly from 1..8, and
patch-count buckets.

``anchor_patch_rows`` repeats the anchor's fixed-patch-length draw, draw for draw (generator
seeded 1, one ``randint(1, 9)`` at a time, the last length cut so a row sums to N). Hugging Face's
BLT takes those rows as they are (Σ = N); bltkit's convention puts a 1-byte BOS patch in front
(Σ = N + 1, first patch 1; docs/architecture.md, "The patch-alignment rule"), which is exactly
``[1] + row``: the same bytes in the same patches plus the next-byte patch.

Buckets: FlexAttention under ``torch.compile`` (``dynamic=False``) specialises on sequence
lengths, and entropy patching gives every batch a different patch count P, so each new P would
recompile. Padding ``patch_lengths`` (B, P) with zero columns to a multiple of ``multiple`` (64:
P*k is then a multiple of 128, FlexAttention's block size, for k = 2) keeps the shapes few. It is
a numerical no-op for every real byte (tests/test_bench.py checks the logits):
- a zero-length patch owns no byte: ``patch_ids`` and the decoder's ``pid(i+1) - 1`` are searches
  over cumulative ends, which trailing zero columns do not change;
- its encoder cross-attention row sees no key and gives 0 (an empty row);
- the global model is causal over patches and the added patches come last, so no real patch
  attends to them (block-causal included: they hold no EOS);
- no byte's decoder query is allowed to see them (its patch is a real one).
Axes: B rows, N bytes, P patches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

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


def bucket_size(n_patches: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that holds ``n_patches`` (``multiple`` 0: unchanged)."""
    if multiple < 0:
        raise ValueError(f"bucket multiple must be >= 0, got {multiple}")
    if multiple == 0:
        return n_patches
    return -(-n_patches // multiple) * multiple


def pad_patch_columns(patch_lengths: torch.Tensor, multiple: int = 64) -> torch.Tensor:
    """(B, P) -> (B, P') with P' = ``bucket_size(P, multiple)``, the new columns zero."""
    if patch_lengths.dim() != 2:
        raise ValueError(f"patch_lengths must be (batch, patches), got shape {tuple(patch_lengths.shape)}")
    p = patch_lengths.shape[1]
    return F.pad(patch_lengths, (0, bucket_size(p, multiple) - p))
