"""Patch boundaries decided byte by byte, as generation needs them (docs/reference-semantics.md §4.2-§4.4, §14).

After byte n is fed, the generator must know whether position c = n + 1 starts a patch: that is
the last boundary ``Patcher(prefix, include_next_token=True)`` decides on a prefix of n + 1 ids.
Every rule of ``bltkit.patching.boundaries`` is causal (it reads bytes and entropies up to n
only), so deciding the boundaries one byte at a time gives exactly the full-prefix patching:

| scheme    | c starts a patch when                                                            |
|-----------|----------------------------------------------------------------------------------|
| all       | c = 1 (BOS is a patch of its own; position 0 always starts)                      |
| entropy   | ``H_n > threshold`` (strict, nats; ``H_0`` is ignored)                            |
| monotonic | c = 2, else ``H_n - H_{n-1} > threshold``                                        |
| entropy + threshold_add | c = 2; never c = 3; else ``H_n - H_{n-1} > threshold_add`` and ``H_n > threshold`` |
| space     | byte n is marked: a special id, or a space-like byte after a non-space-like one   |
| static    | ``(c - 1) % patch_size == 0`` (after the 1-byte BOS patch, patches of patch_size) |
| byte      | always                                                                           |

Entropies are rounded to float16 first when the rule says so (``entropies_fp16``), as ``Patcher``
does. ``max_patch_length`` m then splits every long patch into m, m, ..., rest from its start (docs/reference-semantics.md §4.4),
the same as also starting a patch whenever the open patch already holds m bytes. Tests check
these decisions against ``Patcher`` on random bytes and entropies.

Rows are vectorised; a chunk of T bytes (a prompt) is decided in one call, carrying per-row state
(the previous entropy and space mark, the open patch's natural start) across calls.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..data.vocab import OFFSET
from ..patching.config import PatcherConfig

def _space_like(ids: torch.Tensor) -> torch.Tensor:
    """Special ids and bytes that are not [0-9A-Za-z] nor UTF-8 continuation bytes (docs/reference-semantics.md §4.3)."""
    b = ids - OFFSET
    alnum = ((b >= 48) & (b <= 57)) | ((b >= 65) & (b <= 90)) | ((b >= 97) & (b <= 122))
    cont = (b >= 0x80) & (b < 0xC0)
    return (ids < OFFSET) | (~alnum & ~cont)


class OnlineBoundaries:
    """Per-row boundary state for a batch; ``decide`` is the byte-by-byte patcher. No host sync."""

    STATE = ("prev_h", "prev_space", "nat_start")

    def __init__(self, rule: PatcherConfig, batch: int, device: torch.device):
        rule.check_ready()
        self.rule = rule.filled()
        self.prev_h = torch.zeros(batch, device=device)  # H_{n-1}
        self.prev_space = torch.zeros(batch, dtype=torch.bool, device=device)  # byte n-1 space-like
        self.nat_start = torch.zeros(batch, dtype=torch.int64, device=device)  # open patch's start before splits

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).clone() for k in self.STATE}

    def restore(self, snap: dict[str, torch.Tensor]) -> None:
        for k in self.STATE:
            getattr(self, k).copy_(snap[k])

    def decide(self, ids: torch.Tensor, pos: torch.Tensor, entropies: Optional[torch.Tensor] = None,
               valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Whether position ``pos + 1`` starts a patch, for bytes ``ids`` at positions ``pos``
        (both (B, T), consecutive positions a row); ``entropies`` (B, T) are H at those positions.
        ``valid`` (B, T) marks real bytes, a prefix of each row; the state follows the last one."""
        r = self.rule
        valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else valid
        n_valid = valid.sum(dim=1, keepdim=True)  # (B, 1)
        last = (n_valid - 1).clamp(min=0)  # index of each row's last real byte
        moved = n_valid[:, 0] > 0

        def carry(state: torch.Tensor, x: torch.Tensor) -> None:
            state.copy_(torch.where(moved, x.gather(1, last)[:, 0], state))

        c = pos + 1  # candidate start (B, T)
        if r.scheme in ("entropy", "monotonic"):
            if entropies is None:
                raise ValueError(f"{r.scheme} patching needs the entropy of every byte")
            h = entropies.float()
            if r.entropies_fp16:  # as Patcher rounds them (PatcherConfig.entropies_fp16)
                h = h.half().float()
            prev = torch.cat([self.prev_h[:, None], h[:, :-1]], dim=1)  # H_{n-1}
            if r.scheme == "entropy" and r.threshold_add is None:
                nat = h > r.threshold
            elif r.scheme == "monotonic":
                nat = (h - prev > r.threshold) | (c == 2)
            else:  # global threshold and a monotonic rise (docs/reference-semantics.md §4.2)
                nat = ((h - prev > r.threshold_add) & (h > r.threshold) & (c != 3)) | (c == 2)
            carry(self.prev_h, h)
        elif r.scheme == "space":
            sp = _space_like(ids)
            prev = torch.cat([self.prev_space[:, None], sp[:, :-1]], dim=1)
            nat = (sp & ~(prev & (pos > 0))) | (ids < OFFSET)  # first of a run; specials always
            carry(self.prev_space, sp)
        elif r.scheme == "static":
            nat = (c - 1) % r.patch_size == 0
        else:
            nat = torch.ones_like(ids, dtype=torch.bool)
        nat = (nat | (c == 1)) & valid
        if r.max_patch_length is None:
            return nat
        # Natural start of the patch that holds each byte, then forced starts every m bytes from it.
        opened = torch.where(nat, c, -1)
        before = torch.cat([torch.full_like(opened[:, :1], -1), opened[:, :-1]], dim=1)
        start = torch.maximum(self.nat_start[:, None], torch.cummax(before, dim=1).values)  # (B, T)
        self.nat_start.copy_(torch.maximum(self.nat_start, opened.max(dim=1).values))
        return (nat | ((c - start) % r.max_patch_length == 0)) & valid
