"""Pad patch counts to a bucket so the fast path compiles a handful of shapes, not one per batch.

Why: FlexAttention under ``torch.compile`` (``dynamic=False``) specialises on sequence lengths;
entropy patching gives every batch a different patch count P, so each new P would recompile.
Padding ``patch_lengths`` (B, P) with zero columns to a multiple of ``multiple`` (64: P*k is then
a multiple of 128, FlexAttention's block size, for k = 2) keeps the shapes few.

It is a numerical no-op for every real byte (tests/test_bench.py checks logits are identical):
- a zero-length patch owns no byte: ``patch_ids`` and the decoder's ``pid(i+1) - 1`` are searches
  over cumulative ends, which trailing zero columns do not change (blt-reference §3.1, §3.6);
- its encoder cross-attention row sees no key and gives 0 (empty rows, pitfall 9);
- the global model is causal over patches and the added patches come last, so no real patch
  attends to them (§5; block-causal included: they hold no EOS);
- no byte's decoder query is allowed to see them (its patch is a real one, §6).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
