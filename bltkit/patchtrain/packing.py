"""Rows for the patch phase: K*T new bytes a row, read as T input patches (docs/fixed-k.md).

The stream is the trainer's (``training.batches.pack_rows``): documents encoded ``BOS bytes EOS``
and concatenated. Row r holds the ``K*(T+1)`` stream bytes from ``r*K*T``: inputs are its first
``K*T`` bytes (T patches), targets its last ``K*T`` (patch i's targets are the K bytes of patch
i+1), so a row consumes ``K*T`` bytes and every byte after the first patch is a target exactly
once. The last row is padded with BOE (id 0) and its padding targets masked out. With K = 1 these
are exactly ``pack_rows``' rows (a test checks it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.vocab import BOE_ID, encode_tensor


@dataclass
class PatchRows:
    """``ids`` (R, K*(T+1)) and ``mask`` (R, K*T) real targets; ``patch_size`` K."""

    ids: torch.Tensor
    mask: torch.Tensor
    patch_size: int

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"ids" (B, K*T), "targets" (B, K*T), "mask" (B, K*T)}`` for rows ``index``."""
        rows = self.ids[index]
        k = self.patch_size
        return {"ids": rows[:, :-k].contiguous(), "targets": rows[:, k:].contiguous(), "mask": self.mask[index]}


def pack_patch_rows(docs: list[bytes], patch_size: int, n_patches: int, where: str = "corpus") -> PatchRows:
    """Cut documents into rows of ``n_patches`` (T) input patches of ``patch_size`` (K) bytes."""
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch size K must be an integer >= 1, got {patch_size!r}")
    if n_patches < 1:
        raise ValueError(f"rows need at least one patch position, got T={n_patches}")
    if not docs:
        raise ValueError(f"no documents in {where}: nothing to train or evaluate on")
    stream = torch.cat([encode_tensor(d) for d in docs])
    t = int(stream.numel())
    k, step = patch_size, patch_size * n_patches
    width = step + k  # K*(T+1)
    n_rows = max(1, -(-(t - k) // step))
    padded = torch.full(((n_rows - 1) * step + width,), BOE_ID, dtype=torch.int64)
    padded[:t] = stream
    idx = torch.arange(n_rows)[:, None] * step + torch.arange(width)[None]  # (R, K*(T+1))
    mask = (idx[:, k:] < t).to(torch.int64)  # (R, K*T)
    return PatchRows(padded[idx], mask, k)
