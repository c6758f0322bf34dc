"""Packing documents into model rows, in the reference's conventions (docs/reference-semantics.md §5, §12.3,
docs/reference-semantics.md §12.2, §12.3). Axes: B rows, N input bytes per row, P patches per row.

Input: a stream of documents, each as ids ``BOS + bytes + EOS`` with its own patch lengths
(``include_next_token=False``: they sum to the document length; ``bltkit.patching.DocumentPatcher``
gives them).
Output rows hold ``ids`` (x), ``targets`` (y), a loss ``mask`` and ``patch_lengths`` with

- ``sum(patch_lengths) == N + 1`` (the last patch holds the target of the last byte, docs/reference-semantics.md §5),
- ``patch_lengths[0] == 1`` (a row that starts inside a patch splits it into ``[1, L-1]``),
- padding with BOE (0): ``mask`` False there and the pad count folded into the last patch.

Two packers:

``PatchPacker(patches_per_row)`` -- the reference's BLT packing (docs/reference-semantics.md §12.3): concatenate
documents and cut sequences of exactly ``P`` patches, so the byte count varies; a first patch
longer than 1 is split and the last patch (with its bytes) dropped, keeping P; then
``x = tokens[:-1]``, ``y = tokens[1:]``. The last byte of each sequence is a target only.

``BytePacker(row_len)`` -- rows of exactly ``row_len`` stream bytes (the entropy model's BYTES
packing, docs/reference-semantics.md §12.2, benchmark-style fixed-byte rows, the fixed-K patch phase with ``row_len = K*T``):
``x = tokens``, ``y = tokens[1:] + [BOE]``. The reference trains on that final BOE target
(docs/reference-semantics.md §12.2); **we mask it**, so every real target is a real next byte. Every model type (byte
LM, fixed-K patches, BLT) then sees the same row grid and scores the same targets, which keeps
bits-per-byte comparable. (``final_target="next"`` instead scores the real next byte there.)
``shift=K`` makes each position's targets the bytes K ahead (``y = tokens[K:]``), the fixed-K
patch phase's targets (patch i predicts the K bytes of patch i+1, docs/fixed-k.md); with
``final_target="next"`` a row then holds ``row_len + K`` stream bytes and consumes ``row_len``,
so every byte after the stream's first K is a target exactly once. With ``with_patches=True``
(shift 1) the document patch lengths are cut at the row boundary (the cut patch's tail opens the next row, split into ``[1, L-1]``) and the masked
virtual target is counted in the last patch, so ``sum == N + 1`` again. Without, rows carry no
patch lengths (a byte LM needs none).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from bltkit.data.vocab import BOE_ID, encode_tensor

@dataclass
class Row:
    """One packed row: ``ids``/``targets``/``mask`` (N,), ``patch_lengths`` (P,) summing to N+1 or None."""

    ids: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    patch_lengths: Optional[torch.Tensor] = None

    def to_dict(self) -> dict:
        return {"ids": self.ids, "targets": self.targets, "mask": self.mask, "patch_lengths": self.patch_lengths}

    @staticmethod
    def from_dict(d: dict) -> "Row":
        return Row(d["ids"], d["targets"], d["mask"], d.get("patch_lengths"))


def document_ids(doc: bytes) -> torch.Tensor:
    """BOS + bytes + EOS as int64 ids (docs/reference-semantics.md §2, §4.5)."""
    return encode_tensor(doc, bos=True, eos=True)


def first_patch_one(pl: torch.Tensor) -> torch.Tensor:
    """Split a first patch of length L > 1 into ``[1, L-1]`` (docs/reference-semantics.md §12.3)."""
    if pl.numel() and int(pl[0]) > 1:
        return torch.cat([pl.new_tensor([1, int(pl[0]) - 1]), pl[1:]])
    return pl


def _head(pl: torch.Tensor, n: int) -> torch.Tensor:
    """A prefix of ``pl`` summing to more than ``n`` when one exists, else all of ``pl``.

    Lengths are >= 1, so ``n + 2`` patches always suffice: cutting a row off a long document
    then costs O(row), not O(document) (a 100 MB single-document file would be quadratic).
    """
    head = pl[: n + 2]
    return head if head.numel() < pl.numel() and int(head.sum()) > n else pl


def cut_patch_lengths(pl: torch.Tensor, total: int) -> torch.Tensor:
    """The patches that cover the first ``total`` positions, the one crossing ``total`` shortened."""
    pl = _head(pl, total)
    ends = torch.cumsum(pl, 0)
    if total > (int(ends[-1]) if ends.numel() else 0):
        raise ValueError(f"cannot cut patch lengths summing to {int(pl.sum())} at {total}")
    k = int(torch.searchsorted(ends, torch.tensor(total, dtype=ends.dtype), right=False)) + 1  # patches touched
    out = pl[:k].clone()
    if k and int(ends[k - 1]) > total:
        out[-1] -= int(ends[k - 1]) - total
    return out


class _Buffer:
    """Concatenated ids (and patch lengths) of documents not yet packed."""

    def __init__(self, with_patches: bool):
        self.with_patches = with_patches
        self.ids = torch.zeros(0, dtype=torch.int64)
        self.pl = torch.zeros(0, dtype=torch.int64)

    def add(self, ids: torch.Tensor, patch_lengths: Optional[torch.Tensor]) -> None:
        ids = ids.to(torch.int64)
        if self.with_patches:
            if patch_lengths is None:
                raise ValueError("this packer needs patch lengths for every document (pass a patcher)")
            if int(patch_lengths.sum()) != ids.numel():
                raise ValueError(f"patch lengths sum to {int(patch_lengths.sum())}, expected {ids.numel()}")
            self.pl = torch.cat([self.pl, patch_lengths.to(torch.int64)])
        self.ids = torch.cat([self.ids, ids])

    def state_dict(self) -> dict:
        # ids < 260 and lengths fit 16 and 32 bits: a quarter / half the checkpoint bytes.
        return {"ids": self.ids.to(torch.int16), "pl": self.pl.to(torch.int32)}

    def load_state_dict(self, s: dict) -> None:
        self.ids, self.pl = s["ids"].to(torch.int64), s["pl"].to(torch.int64)


class PatchPacker:
    """Rows of exactly ``patches_per_row`` patches, the reference BLT packing (docs/reference-semantics.md §12.3)."""

    def __init__(self, patches_per_row: int):
        if patches_per_row < 2:
            raise ValueError(f"patches_per_row must be >= 2 (BOS alone is one patch), got {patches_per_row}")
        self.p = patches_per_row
        self.buf = _Buffer(with_patches=True)

    def add(self, ids: torch.Tensor, patch_lengths: torch.Tensor) -> None:
        self.buf.add(ids, patch_lengths)

    @staticmethod
    def _row(tokens: torch.Tensor, pl: torch.Tensor) -> Row:
        x, y = tokens[:-1], tokens[1:]
        return Row(x.clone(), y.clone(), torch.ones(x.numel(), dtype=torch.bool), pl.clone())

    def pop_rows(self) -> list[Row]:
        """Every complete row the buffer holds."""
        rows = []
        while self.buf.pl.numel() >= self.p:
            seq_pl = self.buf.pl[: self.p]
            n = int(seq_pl.sum())
            seq = self.buf.ids[:n]
            self.buf.pl, self.buf.ids = self.buf.pl[self.p:], self.buf.ids[n:]
            if int(seq_pl[0]) > 1:
                # Split the first patch, drop the last one with its bytes: P stays fixed (docs/reference-semantics.md §12.3).
                seq_pl = first_patch_one(seq_pl)[: self.p]
                seq = seq[: int(seq_pl.sum())]
            rows.append(self._row(seq, seq_pl))
        return rows

    def flush(self) -> list[Row]:
        """The final partial row (fewer patches), for a finite evaluation pass; empties the buffer."""
        rows = []
        if self.buf.ids.numel() >= 2:
            rows.append(self._row(self.buf.ids, first_patch_one(self.buf.pl)))
        self.buf = _Buffer(with_patches=True)
        return rows

    def state_dict(self) -> dict:
        return {"buffer": self.buf.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self.buf.load_state_dict(s["buffer"])


def drop_positions(pl: torch.Tensor, n: int) -> torch.Tensor:
    """Patch lengths of what follows the first ``n`` positions (a patch crossing ``n`` keeps its tail)."""
    return _drop_front(pl.clone(), n)


def _drop_front(pl: torch.Tensor, n: int) -> torch.Tensor:
    """``drop_positions`` as a view of ``pl``, whose crossing patch is shortened in place (no copy
    of the rest: the packers own their buffers)."""
    ends = torch.cumsum(_head(pl, n), 0)
    k = int(torch.searchsorted(ends, torch.tensor(n, dtype=ends.dtype), right=True))  # patches ending <= n
    rest = pl[k:]
    if rest.numel():
        rest[0] = int(ends[k]) - max(n, int(ends[k]) - int(pl[k]))
    return rest


class BytePacker:
    """Rows of exactly ``row_len`` stream bytes; patch lengths cut at the row edge when kept.

    ``final_target="masked"`` (default): the reference layout, each row's last ``shift`` targets
    are masked BOE and rows do not overlap. ``"next"``: the last targets are the real next stream
    bytes, which also open the next row, so every byte but the stream's first ``shift`` is a
    target exactly once (the ids grid is the same in both).
    """

    def __init__(self, row_len: int, with_patches: bool = False, final_target: str = "masked", shift: int = 1):
        if row_len < 1:
            raise ValueError(f"row_len must be >= 1, got {row_len}")
        if final_target not in ("masked", "next"):
            raise ValueError(f"final_target must be 'masked' or 'next', got {final_target!r}")
        if shift < 1 or (with_patches and shift != 1):
            raise ValueError(f"shift must be >= 1 (and 1 with patch lengths), got {shift}")
        self.t, self.shift = row_len, shift
        self.with_patches = with_patches
        self.final_target = final_target
        self.buf = _Buffer(with_patches=with_patches)

    def add(self, ids: torch.Tensor, patch_lengths: Optional[torch.Tensor] = None) -> None:
        self.buf.add(ids, patch_lengths)

    def _take(self, n: int) -> Row:
        s = self.shift
        nxt = self.final_target == "next" and self.buf.ids.numel() >= n + s
        tok = self.buf.ids[:n].clone()
        # "next": the real bytes s ahead, as far as the stream goes; "masked": the row's own.
        y = self.buf.ids[s:n + s] if self.final_target == "next" else tok[s:]
        k = y.numel()  # real targets; the rest is the reference's BOE pad (docs/reference-semantics.md §12.2): masked
        y = torch.cat([y, y.new_full((n - k,), BOE_ID)])
        mask = torch.arange(n) < k
        pl = None
        if self.with_patches:
            if nxt:
                pl = first_patch_one(cut_patch_lengths(self.buf.pl, n + 1))
            else:
                pl = first_patch_one(cut_patch_lengths(self.buf.pl, n))
                # The masked virtual target: sum == N + 1 (docs/reference-semantics.md §5); in the last patch, unless that is
                # the 1-byte first patch, which must stay 1.
                pl = torch.cat([pl, pl.new_tensor([1])]) if pl.numel() == 1 else pl
                if int(pl.sum()) == n:
                    pl[-1] += 1
            self.buf.pl = _drop_front(self.buf.pl, n)
        self.buf.ids = self.buf.ids[n:]
        return Row(tok, y, mask, pl)

    def pop_rows(self) -> list[Row]:
        rows = []
        need = self.t + (self.shift if self.final_target == "next" else 0)
        while self.buf.ids.numel() >= need:
            rows.append(self._take(self.t))
        return rows

    def flush(self) -> list[Row]:
        """The final partial rows (fewer targets or bytes; ``collate`` pads them), for a finite pass.

        ``shift`` or fewer leftover bytes make no row: they have no target (with ``"next"`` they
        already were the previous row's last targets), so the row would be all padding to the loss.
        """
        rows = []
        while self.buf.ids.numel() > self.shift:
            n = min(self.t, self.buf.ids.numel())
            if self.final_target == "masked" and n <= self.shift:
                break
            rows.append(self._take(n))
        self.buf = _Buffer(with_patches=self.with_patches)
        return rows

    def state_dict(self) -> dict:
        return {"buffer": self.buf.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self.buf.load_state_dict(s["buffer"])


def truncate_row(row: Row, max_len: int) -> Row:
    """Cut a row to ``max_len`` input bytes, shortening the boundary patch (docs/reference-semantics.md §12.3)."""
    if row.ids.numel() <= max_len:
        return row
    pl = None if row.patch_lengths is None else cut_patch_lengths(row.patch_lengths, max_len + 1)
    return Row(row.ids[:max_len], row.targets[:max_len], row.mask[:max_len], pl)


def collate(rows: Sequence[Row], pad_to: Optional[int] = None) -> dict:
    """Stack rows into a batch, padding with BOE (mask False) folded into each row's last patch.

    Returns ``{"ids", "targets": (B, N) int64, "mask": (B, N) bool}`` plus ``"patch_lengths":
    (B, P) int64`` (right-padded with zeros) when the rows carry them; every row then sums to N+1.
    ``N`` is ``pad_to`` or the longest row.
    """
    if not rows:
        raise ValueError("collate: no rows")
    longest = max(r.ids.numel() for r in rows)
    n = longest if pad_to is None else pad_to
    if longest > n:
        raise ValueError(f"collate: a row holds {longest} bytes, more than pad_to={n} (truncate_row first)")
    b = len(rows)
    ids = torch.full((b, n), BOE_ID, dtype=torch.int64)
    targets = torch.full((b, n), BOE_ID, dtype=torch.int64)
    mask = torch.zeros((b, n), dtype=torch.bool)
    for i, r in enumerate(rows):
        k = r.ids.numel()
        ids[i, :k], targets[i, :k], mask[i, :k] = r.ids, r.targets, r.mask
    out = {"ids": ids, "targets": targets, "mask": mask}
    has_pl = [r.patch_lengths is not None for r in rows]
    if any(has_pl):
        if not all(has_pl):
            raise ValueError("collate: some rows have patch lengths and some do not")
        p = max(r.patch_lengths.numel() for r in rows)
        pl = torch.zeros((b, p), dtype=torch.int64)
        for i, r in enumerate(rows):
            q = r.patch_lengths.clone()
            q[-1] += n - r.ids.numel()  # padding folded into the last patch (docs/reference-semantics.md §12.3)
            pl[i, : q.numel()] = q
        out["patch_lengths"] = pl
    return out


def shard_batch(batch: dict, rank: int, world_size: int) -> dict:
    """Rows ``[rank*B/W, (rank+1)*B/W)`` of a global batch: rank r's share for data parallelism.

    Every rank builds the same global batch (same padding width too), so the union over ranks
    is exactly what one process at the same global batch sees.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    b = batch["ids"].shape[0]
    if b % world_size:
        raise ValueError(f"global batch of {b} rows does not split over {world_size} ranks")
    k = b // world_size
    return {key: v[rank * k:(rank + 1) * k] for key, v in batch.items()}


__all__ = ["Row", "document_ids", "first_patch_one", "cut_patch_lengths",
           "drop_positions", "PatchPacker", "BytePacker", "truncate_row", "collate", "shard_batch"]
