"""Patch boundaries decided byte by byte, as generation needs them (blt-reference §3.2-3.4, §8).

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

``max_patch_length`` m then splits every long patch into m, m, ..., rest from its start (§3.4),
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
    """Special ids and bytes that are not [0-9A-Za-z] nor UTF-8 continuation bytes (§3.3)."""
    b = ids - OFFSET
    alnum = ((b >= 48) & (b <= 57)) | ((b >= 65) & (b <= 90)) | ((b >= 97) & (b <= 122))
    cont = (b >= 0x80) & (b < 0xC0)
    return (ids < OFFSET) | (~alnum & ~cont)


class OnlineBoundaries:
    """Per-row boundary state for a batch; ``decide`` is the byte-by-byte patcher."""

    def __init__(self, rule: PatcherConfig, batch: int, device: torch.device):
        rule.check_ready()
        self.rule = rule
        self.prev_h = torch.zeros(batch, device=device)  # H_{n-1}
        self.prev_space = torch.zeros(batch, dtype=torch.bool, device=device)  # byte n-1 space-like
        self.nat_start = torch.zeros(batch, dtype=torch.int64, device=device)  # open patch's start before splits

    def keep(self, idx: torch.Tensor) -> None:
        self.prev_h, self.prev_space, self.nat_start = self.prev_h[idx], self.prev_space[idx], self.nat_start[idx]

    def decide(self, ids: torch.Tensor, pos: torch.Tensor, entropies: Optional[torch.Tensor] = None,
               rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Whether position ``pos + 1`` starts a patch, for bytes ``ids`` at positions ``pos``
        (both (b, T), consecutive positions a row); ``entropies`` (b, T) are H at those positions."""
        r = self.rule
        idx = rows if rows is not None else torch.arange(self.prev_h.shape[0], device=ids.device)
        c = pos + 1  # candidate start (b, T)
        if r.scheme in ("entropy", "monotonic"):
            if entropies is None:
                raise ValueError(f"{r.scheme} patching needs the entropy of every byte")
            h = entropies.float()
            prev = torch.cat([self.prev_h[idx, None], h[:, :-1]], dim=1)  # H_{n-1}
            if r.scheme == "entropy" and r.threshold_add is None:
                nat = h > r.threshold
            elif r.scheme == "monotonic":
                nat = (h - prev > r.threshold) | (c == 2)
            else:  # global threshold and a monotonic rise (§3.2 "global + monotonicity")
                nat = ((h - prev > r.threshold_add) & (h > r.threshold) & (c != 3)) | (c == 2)
            self.prev_h[idx] = h[:, -1]
        elif r.scheme == "space":
            sp = _space_like(ids)
            prev = torch.cat([self.prev_space[idx, None], sp[:, :-1]], dim=1)
            nat = (sp & ~(prev & (pos > 0))) | (ids < OFFSET)  # first of a run; specials always
            self.prev_space[idx] = sp[:, -1]
        elif r.scheme == "static":
            nat = (c - 1) % r.patch_size == 0
        else:
            nat = torch.ones_like(ids, dtype=torch.bool)
        nat = nat | (c == 1)
        if r.max_patch_length is None:
            return nat
        # Natural start of the patch that holds each byte, then forced starts every m bytes from it.
        opened = torch.where(nat, c, -1)
        before = torch.cat([torch.full_like(opened[:, :1], -1), opened[:, :-1]], dim=1)
        start = torch.maximum(self.nat_start[idx, None], torch.cummax(before, dim=1).values)  # (b, T)
        self.nat_start[idx] = torch.maximum(self.nat_start[idx], opened.max(dim=1).values)
        return nat | ((c - start) % r.max_patch_length == 0)
