"""Key/value caches for incremental decoding of every bltkit stack (local encoder and decoder,
global transformer, entropy model).

Axes: B rows held by the cache, b rows taking part in one step, T new positions a row, C slots,
H kv heads, hd head dim.

One ``StackCache`` holds the K/V of all layers of a stack plus, per slot, the absolute position
and document id of the key it holds. The mask of a step is rebuilt from that metadata with the
exact rule of the full forward (blt-reference §4.3, pitfall 8): key s is visible to query t when
``pos_s <= pos_t``, ``pos_t - pos_s < window`` and both lie in the same document (an EOS closes a
document). Positions are absolute and RoPE is applied before caching, so nothing is ever re-rotated.

Slots form a ring: position p lives in slot ``p % C``. With a sliding window W the ring holds
exactly W slots, which is all the window can see (the key that a new key overwrites is W
positions back, already outside the window). Without a window C is the longest sequence the
caller will feed.

A step with one new position per row (decoding) writes first and attends over the ring; a step
with several (a prompt, or several closed patches) attends over ``ring ++ new`` and then writes
the newest min(T, C) keys, so a chunk longer than the ring is still exact. Rows of one step may
be a subset of the cache's rows (``rows``), and new entries may be padding (position -1): padding
is never written and never visible, and a padding query sees every key so it stays finite.
"""
from __future__ import annotations

from typing import Optional

import torch


class StackCache:
    def __init__(self, n_layers: int, batch: int, capacity: int, window: Optional[int], doc_reset: bool,
                 device: torch.device):
        if capacity < 1:
            raise ValueError(f"cache capacity must be >= 1, got {capacity}")
        self.n_layers, self.window, self.doc_reset = n_layers, window, doc_reset
        self.capacity = min(capacity, window) if window is not None else capacity
        self.k: list[Optional[torch.Tensor]] = [None] * n_layers  # (B, H, C, hd), allocated on first use
        self.v: list[Optional[torch.Tensor]] = [None] * n_layers
        self.pos = torch.full((batch, self.capacity), -1, dtype=torch.int64, device=device)  # (B, C); -1 = empty
        self.doc = torch.zeros(batch, self.capacity, dtype=torch.int64, device=device)  # (B, C)

    @property
    def batch(self) -> int:
        return self.pos.shape[0]

    def keep(self, idx: torch.Tensor) -> None:
        """Keep only rows ``idx`` (finished rows leave the batch and stop costing)."""
        self.pos, self.doc = self.pos[idx], self.doc[idx]
        self.k = [None if t is None else t[idx] for t in self.k]
        self.v = [None if t is None else t[idx] for t in self.v]

    def step(self, pos_new: torch.Tensor, doc_new: torch.Tensor, rows: Optional[torch.Tensor] = None):
        """Begin a step for ``rows`` (all rows when None) with new positions ``pos_new`` (b, T).

        Returns ``(mask (b, 1, T, S) bool, views)``; ``views[i]`` is layer i's cache with the
        ``update(k, v)`` protocol of ``bltkit.nn.attention``. Call each view exactly once, in order.
        """
        b, t = pos_new.shape
        row_idx = rows if rows is not None else torch.arange(self.batch, device=self.pos.device)
        valid = pos_new >= 0  # (b, T)
        if t == 1 and bool(valid.all()):
            slots = pos_new[:, 0] % self.capacity  # (b,)
            self.pos[row_idx, slots] = pos_new[:, 0]
            self.doc[row_idx, slots] = doc_new[:, 0]
            kpos, kdoc = self.pos[row_idx], self.doc[row_idx]  # (b, C) after the write
            write = _InplaceWrite(row_idx, slots, gather=rows is not None)
        else:
            kpos = torch.cat([self.pos[row_idx], torch.where(valid, pos_new, -1)], dim=1)  # (b, C + T)
            kdoc = torch.cat([self.doc[row_idx], doc_new], dim=1)
            # The newest min(T, C) valid entries of each row get written after attention.
            last = pos_new.max(dim=1, keepdim=True).values  # (b, 1)
            keep = valid & (pos_new > last - self.capacity)
            bi, ti = keep.nonzero(as_tuple=True)
            slots = pos_new[bi, ti] % self.capacity
            write = _ConcatWrite(row_idx, bi, ti, slots)
            self.pos[row_idx[bi], slots] = pos_new[bi, ti]
            self.doc[row_idx[bi], slots] = doc_new[bi, ti]
        mask = self._mask(pos_new, doc_new, kpos, kdoc)
        return mask, [_LayerView(self, i, write) for i in range(self.n_layers)]

    def _mask(self, qpos, qdoc, kpos, kdoc) -> torch.Tensor:
        diff = qpos[:, :, None] - kpos[:, None, :]  # (b, T, S)
        m = (kpos[:, None, :] >= 0) & (diff >= 0)
        if self.window is not None:
            m = m & (diff < self.window)
        if self.doc_reset:
            m = m & (qdoc[:, :, None] == kdoc[:, None, :])
        m = m | (qpos < 0)[:, :, None]  # padding queries see everything: finite, never read
        return m[:, None]  # (b, 1, T, S)


class _InplaceWrite:
    def __init__(self, row_idx, slots, gather: bool):
        self.row_idx, self.slots, self.gather = row_idx, slots, gather

    def __call__(self, buf: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        buf[self.row_idx, :, self.slots] = new[:, :, 0]  # (b, H, hd)
        return buf[self.row_idx] if self.gather else buf


class _ConcatWrite:
    def __init__(self, row_idx, bi, ti, slots):
        self.row_idx, self.bi, self.ti, self.slots = row_idx, bi, ti, slots

    def __call__(self, buf: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        out = torch.cat([buf[self.row_idx], new], dim=2)  # (b, H, C + T, hd)
        buf[self.row_idx[self.bi], :, self.slots] = new[self.bi, :, self.ti]  # (M, H, hd)
        return out


class _LayerView:
    def __init__(self, cache: StackCache, layer: int, write):
        self.cache, self.layer, self.write = cache, layer, write

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, i = self.cache, self.layer
        if c.k[i] is None:
            shape = (c.batch, k.shape[1], c.capacity, k.shape[3])
            c.k[i] = torch.zeros(shape, dtype=k.dtype, device=k.device)
            c.v[i] = torch.zeros(shape, dtype=v.dtype, device=v.device)
        return self.write(c.k[i], k), self.write(c.v[i], v)
