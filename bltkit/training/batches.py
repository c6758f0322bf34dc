"""Rows and batches for the trainer: documents -> packed rows -> per-rank, per-step batches.

Packing is the data pipeline's (``bltkit.data.packing.BytePacker`` with ``final_target="next"``,
docs/reference-semantics.md §12.3 simplified to a fixed byte count so that every step has the same shape); this
module only runs it over a whole document list at once. Documents are encoded ``BOS bytes EOS``
and concatenated into one stream, with each document's patch lengths (summing to its length,
``include_next_token=False``). Row r holds the ``N + 1`` stream bytes from ``r * N``: inputs are
the first N, targets the last N, so every byte but the first is a target exactly once. A row's
patch lengths are the stream patches cut to that window; a first patch longer than 1 has its
first byte split off (docs/reference-semantics.md §12.3), so each row has ``pl[0] == 1`` and ``sum(pl) == N + 1``
(docs/reference-semantics.md §5). The last row is padded with BOE (id 0, mask 0), the padding folded into the last patch.

Batches are a pure function of the step: global step s takes rows ``s*B .. s*B+B-1`` of a
seeded per-epoch permutation, and rank r of W takes every W-th of them. Resuming needs only the
step, and any world size sees the same global batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..data.vocab import encode_tensor
from ..patching.lengths import pad_rows, trim_zero_columns

from ..patching.documents import DocumentPatcher as PatchFn  # document ids (T,) -> lengths (P,) summing to T


# ---- packing --------------------------------------------------------------------------------------
@dataclass
class Rows:
    """Packed rows: ``ids`` (R, N+1) inputs + last target, ``mask`` (R, N) real targets, per-row
    patch lengths (each summing to N + 1) or None for byte-level models."""

    ids: torch.Tensor
    mask: torch.Tensor
    patch_lengths: Optional[list[torch.Tensor]]

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"ids","targets","mask"[,"patch_lengths"]}`` for rows ``index``."""
        rows = self.ids[index]
        out = {"ids": rows[:, :-1].contiguous(), "targets": rows[:, 1:].contiguous(), "mask": self.mask[index]}
        if self.patch_lengths is not None:
            out["patch_lengths"] = trim_zero_columns(pad_rows([self.patch_lengths[int(i)] for i in index]))
        return out


def pack_rows(docs: list[bytes], seq_len: int, patch_fn: Optional[PatchFn] = None, where: str = "corpus") -> Rows:
    """Cut documents into rows of ``seq_len`` inputs (see the module docstring)."""
    from ..data.packing import BytePacker, collate, document_patch_lengths

    if not docs:
        raise ValueError(f"no documents in {where}: nothing to train or evaluate on")
    enc = [encode_tensor(d) for d in docs]  # BOS ... EOS
    all_pl = _patch_documents(enc, patch_fn, where) if patch_fn is not None else [None] * len(enc)
    packer = BytePacker(seq_len, with_patches=patch_fn is not None, final_target="next")
    rows = []
    for i, (ids, pl) in enumerate(zip(enc, all_pl)):
        if pl is not None:
            pl = document_patch_lengths(ids, lambda _ids, pl=pl: pl, where=f"{where}: document {i}")
        packer.add(ids, pl)
        rows.extend(packer.pop_rows())
    rows.extend(packer.flush())
    batch = collate(rows, pad_to=seq_len)  # (R, N) each; patch lengths (R, P) zero-padded
    ids = torch.cat([batch["ids"], batch["targets"][:, -1:]], 1)  # (R, N+1): inputs + last target
    mask = batch["mask"].to(torch.int64)
    if patch_fn is None:
        return Rows(ids, mask, None)
    return Rows(ids, mask, [q[q > 0] for q in batch["patch_lengths"]])


def _patch_documents(enc: list[torch.Tensor], patch_fn: PatchFn, where: str, group: int = 64) -> list[torch.Tensor]:
    """Patch lengths of every document, ``group`` documents a scorer pass, with a progress bar
    when there are many (entropy patching runs a model over every byte)."""
    from tqdm import tqdm

    out: list[torch.Tensor] = []
    with tqdm(total=sum(int(e.numel()) for e in enc), desc=f"patching {where}", unit="B", unit_scale=True,
              disable=len(enc) < 2 * group, leave=False) as bar:
        for i in range(0, len(enc), group):
            part = enc[i:i + group]
            out.extend(patch_fn.lengths(part, [f"{where}: document {i + j}" for j in range(len(part))]))
            bar.update(sum(int(e.numel()) for e in part))
    return out


# ---- batches ---------------------------------------------------------------------------------------
class StepBatches:
    """This rank's share of global step s's batch, as a function of s; iterable from ``start_step``.

    ``state_dict`` / ``load_state_dict`` hold the next step (the loader's whole state).
    """

    def __init__(self, rows: Rows, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True):
        if batch_size % world_size:
            raise ValueError(f"data.batch_size {batch_size} is not divisible by the world size {world_size}")
        self.rows, self.batch_size, self.rank, self.world = rows, batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.next_step = 0
        self._perm_epoch = -1
        self._perm = torch.arange(len(rows))

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            self._perm_epoch = epoch
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._perm = torch.randperm(len(self.rows), generator=g)
            else:
                self._perm = torch.arange(len(self.rows))
        return self._perm

    def global_indices(self, step: int) -> torch.Tensor:
        r = len(self.rows)
        pos = step * self.batch_size + torch.arange(self.batch_size)
        out = torch.empty(self.batch_size, dtype=torch.int64)
        for epoch in torch.unique(pos // r).tolist():
            sel = (pos // r) == epoch
            out[sel] = self._order(int(epoch))[pos[sel] % r]
        return out

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        return self.rows.batch(self.global_indices(step)[self.rank::self.world])

    def epoch(self, step: int) -> float:
        return step * self.batch_size / len(self.rows)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        b = self.batch(self.next_step)
        self.next_step += 1
        return b

    def state_dict(self) -> dict:
        return {"next_step": self.next_step, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.next_step = int(state["next_step"])


def eval_batches(rows: Rows, n_rows: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """The first ``n_rows`` held-out rows, in order, in batches (fixed across evaluations)."""
    n = min(n_rows, len(rows))
    return [rows.batch(torch.arange(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]


def split_micro(batch: dict[str, torch.Tensor], n: int) -> list[dict[str, torch.Tensor]]:
    """Split a batch's rows into ``n`` micro-batches (gradient accumulation)."""
    b = batch["ids"].shape[0]
    if b % n:
        raise ValueError(f"rows a rank a step ({b}) are not divisible by grad_accum {n}")
    m = b // n
    out = []
    for i in range(n):
        mb = {k: v[i * m:(i + 1) * m] for k, v in batch.items()}
        if "patch_lengths" in mb:
            mb["patch_lengths"] = trim_zero_columns(mb["patch_lengths"])
        out.append(mb)
    return out
