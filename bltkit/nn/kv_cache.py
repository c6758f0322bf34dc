"""Preallocated key/value caches with static shapes, passed through a model's ``forward``.

Axes: B rows, T new positions a row in one step, S slots (the capacity), H kv heads, hd head dim.

Every buffer is allocated once, for the generation's maximum length, and a step never changes a
shape: position (or patch) p lives in slot p, a write that must not land (padding, a finished
row) goes to one extra *sink* slot that no query ever sees, and visibility is a mask built from
per-slot metadata. So a decode step holds no host sync and can be compiled whole or captured as
a CUDA graph. Rolling back (speculative decoding) is marking slots empty (``truncate``).

The API is two classes and the ``update(k, v)`` protocol ``SelfAttention``/``CrossAttention``
already call:

- ``KVCache(n_layers, batch, slots, heads, head_dim, dtype, device)``: K/V buffers only. The
  caller names the slots of the step's new entries with ``write_at(slot, valid)`` and passes
  ``cache.layer(i)`` to layer i, which writes its new K/V there and attends over all S slots with
  a mask the caller builds (cross-attention: patch vectors over byte slots, bytes over patches).
- ``StackCache``: a ``KVCache`` for a self-attention stack that also records each slot's absolute
  position and document and builds the local rule of ``bltkit.nn.masks.local_causal_mask`` from
  them (causal, within ``window``, same document; docs/reference-semantics.md, "Masks").
  ``begin(pos, doc)`` starts a step at explicit positions (-1 = padding); ``length``/``n_docs``
  counters plus ``advance(valid, ends_doc)`` serve a plain LM whose rows grow one token at a time.

A windowed stack keeps a *ring* of ``window + RING_MARGIN`` slots (position p in slot p mod R)
instead of one slot a position, so a step reads what its window can reach whatever the length:
a compiled step that read every preallocated slot cost 0.8 ms at 769 slots and 7.5 ms at 16,513
(tiny BLT, docs/benchmarks.md, "Cached generation"). Writing p overwrites p - R, which no query
at p or later can see while R >= window. A chunk of T <= ``RING_MARGIN`` new entries is written,
then read (its writes overwrite only entries older than any of its queries can see); a longer
chunk (a prompt) reads the slots as they were plus its own entries, and only its last R entries
a row are written. A rollback (``truncate``) of at most ``RING_MARGIN`` entries finds every entry
the next queries can see still in place, so speculative drafts are capped at that length.

A query at position -1 (padding) sees every slot, so its attention stays finite; its output is
never read. ``see(n)`` narrows what the next steps read to the first n slots, when the caller
knows on the host that every later slot is empty (an eager step: its cost then follows the
longest row, not the preallocated length; a compiled step keeps every slot, its shapes static).
A position at or beyond the ``positions`` a ``StackCache`` was made for (``slots`` of a plain
``KVCache``) is the caller's error (checked on the host, where lengths are known, so the step
itself stays sync-free).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .masks import local_causal_mask
from .rope import apply_rope, rope_angles

# Extra ring slots past a windowed stack's window: the longest chunk written before it is read,
# and the deepest rollback (``truncate``) a ring survives (``bltkit.inference.speculative`` caps
# its drafts here).
RING_MARGIN = 64


def put_slots(buf: torch.Tensor, slot: torch.Tensor, values: torch.Tensor, dim: int = 1) -> None:
    """``buf[b, ..., slot[b, t], ...] = values[b, t, ...]`` with the slots on axis ``dim`` of
    ``buf`` (B, ..., S + 1, ...) and ``slot`` (B, T); ``values`` (B, T, the other axes in order).
    An ``index_put_``, which a compiled step writes in place; inductor copies a ``scatter_``
    target whole (into a temporary and back) every step (docs/benchmarks.md, "Cached generation")."""
    rows = torch.arange(buf.shape[0], device=buf.device)[:, None]  # (B, 1)
    buf[(rows,) + (slice(None),) * (dim - 1) + (slot,)] = values.to(buf.dtype)


class KVCache:
    def __init__(self, n_layers: int, batch: int, slots: int, heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        if slots < 1:
            raise ValueError(f"cache slots must be >= 1, got {slots}")
        self.slots = slots
        # One buffer a layer, not one stacked tensor: a compiled step then writes each layer's
        # slots in place, where a write into a view of a stacked buffer is functionalised into
        # a copy of the whole stack every step.
        shape = (batch, heads, slots + 1, head_dim)  # slot ``slots`` is the sink
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.visible = slots  # slots a step reads (``see``)
        self.reach: Optional[int] = None  # positions rows reach after the next step (``see``), if told
        self.reads_before_write = False  # a ring's long chunk: layers read the slots, then write
        self.old = 0  # the slots such a chunk reads
        self._slot: Optional[torch.Tensor] = None  # (B, T) where this step's entries go

    @classmethod
    def for_layers(cls, attns: Sequence[nn.Module], batch: int, slots: int) -> "KVCache":
        """A cache sized for attention modules that all have the shape of ``attns[0]``."""
        a = attns[0]
        w = a.wk.weight
        heads = getattr(a, "n_kv_heads", a.n_heads)
        return cls(len(attns), batch, slots, heads, a.head_dim, w.dtype, w.device)

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    def see(self, n: int) -> None:
        """The next steps read slots [0, n) only (clamped to [1, slots]): every later slot is empty."""
        self.visible = max(1, min(int(n), self.slots))
        self.reach = int(n)

    def write_at(self, slot: torch.Tensor, valid: Optional[torch.Tensor] = None) -> None:
        """The slots (B, T) of the next step's new entries; invalid ones go to the sink."""
        self._slot = slot if valid is None else torch.where(valid, slot, self.slots)

    def layer(self, i: int) -> "_LayerView":
        return _LayerView(self, i)


class _LayerView:
    def __init__(self, cache: KVCache, i: int):
        self.cache, self.i = cache, i

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's K/V (B, H, T, hd) into their slots; return the S visible ones (B, H, S, hd)."""
        c = self.cache
        kb, vb = c.k[self.i], c.v[self.i]
        if c.reads_before_write:  # a long chunk into a ring: the slots as they were, then its own
            k_all = torch.cat([kb[:, :, :c.old], k.to(kb.dtype)], dim=2)  # (B, H, S + T, hd)
            v_all = torch.cat([vb[:, :, :c.old], v.to(vb.dtype)], dim=2)
        put_slots(kb, c._slot, k.transpose(1, 2), dim=2)  # values (B, T, H, hd)
        put_slots(vb, c._slot, v.transpose(1, 2), dim=2)
        if c.reads_before_write:
            return k_all, v_all
        return kb[:, :, :c.visible], vb[:, :, :c.visible]


class StackCache(KVCache):
    """K/V of a self-attention stack with each slot's position (-1 = empty) and document.
    ``positions`` is the most a row will hold; a windowed stack keeps a ring of
    ``window + RING_MARGIN`` slots when that is fewer (module docstring)."""

    def __init__(self, blocks: Sequence[nn.Module], batch: int, positions: int, window: Optional[int], doc_reset: bool):
        a = blocks[0].attention
        w = a.wk.weight
        self.ring = window is not None and window + RING_MARGIN < positions
        slots = window + RING_MARGIN if self.ring else positions
        super().__init__(len(blocks), batch, slots, a.n_kv_heads, a.head_dim, w.dtype, w.device)
        self.window, self.doc_reset = window, doc_reset
        dev = w.device
        self.pos = torch.full((batch, slots + 1), -1, dtype=torch.int64, device=dev)  # (B, S + 1)
        self.doc = torch.zeros(batch, slots + 1, dtype=torch.int64, device=dev)
        self.length = torch.zeros(batch, dtype=torch.int64, device=dev)  # for ``advance``
        self.n_docs = torch.zeros(batch, dtype=torch.int64, device=dev)

    def slot_of(self, pos: torch.Tensor) -> torch.Tensor:
        """The slot of each position (>= 0)."""
        return pos % self.slots if self.ring else pos

    def doc_at(self, pos: torch.Tensor) -> torch.Tensor:
        """(B, T) document of the entries at positions ``pos`` (B, T) (each still in the cache)."""
        return self.doc.gather(1, self.slot_of(pos.clamp(min=0)))

    def begin(self, pos: torch.Tensor, doc: torch.Tensor) -> torch.Tensor:
        """Start a step whose new entries sit at positions ``pos`` (B, T), -1 for padding, in
        documents ``doc``; returns the attention mask (B, 1, T, S), True = may attend (S: the
        visible slots, plus the T new entries when a long chunk reads the ring before writing)."""
        valid = pos >= 0
        keep = valid
        self.reads_before_write = self.ring and pos.shape[1] > RING_MARGIN
        if self.reads_before_write:
            # The slots as they were (entries before the chunk's first position), then the
            # chunk's own; only a row's last R entries are written, so no two share a slot. The
            # slots filled before the chunk: all of them, or as many as rows had reached (``see``).
            self.old = self.slots if self.reach is None else max(0, min(self.reach - pos.shape[1], self.slots))
            first = torch.where(valid, pos, torch.iinfo(torch.int64).max).min(dim=1, keepdim=True).values  # (B, 1)
            old_pos, old_doc = self.pos[:, :self.old], self.doc[:, :self.old]
            kpos = torch.cat([torch.where(old_pos < first, old_pos, -1), torch.where(valid, pos, -1)], dim=1)
            kdoc = torch.cat([old_doc, doc], dim=1)
            keep = valid & (pos > pos.max(dim=1, keepdim=True).values - self.slots)
        self.write_at(self.slot_of(pos.clamp(min=0)), keep)
        put_slots(self.pos, self._slot, torch.where(keep, pos, -1))
        put_slots(self.doc, self._slot, doc)
        if not self.reads_before_write:
            kpos, kdoc = self.pos[:, :self.visible], self.doc[:, :self.visible]
        m = local_causal_mask(doc, kdoc, pos, kpos, self.window, self.doc_reset)  # (B, 1, T, S)
        return (m & (kpos >= 0)[:, None, None, :]) | (~valid)[:, None, :, None]

    def advance(self, valid: torch.Tensor, ends_doc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions and mask of T new entries a row (``valid`` (B, T) a prefix of each row;
        ``ends_doc`` marks an entry that closes its document, an EOS): ``(pos, mask)``."""
        t = valid.shape[1]
        pos = torch.where(valid, self.length[:, None] + torch.arange(t, device=valid.device), -1)
        ends = (ends_doc & valid).to(torch.int64)
        doc = self.n_docs[:, None] + torch.cumsum(ends, dim=1) - ends
        mask = self.begin(pos, doc)
        self.length += valid.sum(dim=1)
        self.n_docs += ends.sum(dim=1)
        return pos, mask

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {"length": self.length.clone(), "n_docs": self.n_docs.clone()}

    def restore(self, snap: dict[str, torch.Tensor]) -> None:
        """Counters from ``snap``; every entry at or past its length is forgotten."""
        self.truncate(snap["length"], snap["n_docs"])

    def truncate(self, length: torch.Tensor, n_docs: Optional[torch.Tensor] = None) -> None:
        """Forget every entry at position >= ``length`` (B,) (a rejected speculative draft); the
        ``advance`` counters become ``length`` and ``n_docs`` (documents closed before it)."""
        self.pos.masked_fill_(self.pos >= length[:, None], -1)
        self.length.copy_(length)
        if n_docs is not None:
            self.n_docs.copy_(n_docs)


class WindowCarry:
    """What a windowed stack needs of a row's previous chunk to go on with the next: each layer's
    last ``window - 1`` keys and values, and their documents. Streaming a long row through the
    full-sequence blocked attention with it (``bltkit.patching.entropies``) computes every
    position once, where chunks overlapping by the receptive field ``n_layers * (window - 1)``
    recompute it (25% of the paper entropy model's 28,616-position chunks).

    Frame: a chunk's T queries sit at positions ``window - 1 .. window - 2 + T`` after the carried
    keys at ``0 .. window - 2``, so RoPE angles stay as small as in one window whatever the row's
    length (RoPE is relative: q·k depends on position differences only). The keys kept for the
    next chunk sit at ``T .. T + window - 2`` and are turned back by T (one rotation, in the
    keys' own dtype). A row that has no carried keys yet gives them document -2, which no query
    sees. Axes: B rows, H kv heads, C = window - 1 carried positions, hd head dim.

    The ``update(k, v)`` of ``layer(i)`` is the protocol ``SelfAttention`` calls; ``documents``
    starts a chunk. Rows go in lockstep: every row of a chunk has T positions (padding at a row's
    end leaves garbage in its carry, read only by its own later padding)."""

    def __init__(self, n_layers: int, window: int, head_dim: int, rope_theta: float):
        if window < 2:
            raise ValueError(f"a carried window needs window >= 2, got {window}")
        self.context = window - 1
        self.head_dim, self.rope_theta = head_dim, rope_theta
        self.k: list[Optional[torch.Tensor]] = [None] * n_layers  # (B, H, C, hd) each
        self.v: list[Optional[torch.Tensor]] = [None] * n_layers
        self.doc: Optional[torch.Tensor] = None  # (B, C) int32 documents of the carried keys
        self.next_doc: Optional[torch.Tensor] = None  # (B,) document the next position opens in
        self._shift: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # rope angles of -T

    def documents(self, ends_doc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Start a chunk whose entries ``ends_doc`` (B, T) marks where a document closes (EOS):
        returns its documents (B, T) and the carried keys' (B, C), one numbering for both."""
        b, t = ends_doc.shape
        dev = ends_doc.device
        ends = ends_doc.to(torch.int32)
        base = self.next_doc if self.next_doc is not None else torch.zeros(b, dtype=torch.int32, device=dev)
        doc = base[:, None] + torch.cumsum(ends, dim=1, dtype=torch.int32) - ends  # (B, T)
        carried = self.doc if self.doc is not None else torch.full((b, self.context), -2, dtype=torch.int32, device=dev)
        self.doc = torch.cat([carried, doc], dim=1)[:, -self.context:]
        self.next_doc = doc[:, -1] + ends[:, -1]
        self._shift = rope_angles(torch.tensor([-t], device=dev), self.head_dim, self.rope_theta)  # (1, hd/2)
        return doc, carried

    def layer(self, i: int) -> "_CarriedLayer":
        return _CarriedLayer(self, i)


class _CarriedLayer:
    def __init__(self, carry: WindowCarry, i: int):
        self.carry, self.i = carry, i

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values (B, H, T, hd) of a chunk -> the carried ones then these (B, H, C + T, hd);
        keeps the last C for the next chunk, turned into its frame."""
        c, i = self.carry, self.i
        if c._shift is None:
            raise RuntimeError("WindowCarry.documents starts a chunk before its layers update")
        if c.k[i] is None:
            b, h, _, d = k.shape
            c.k[i] = k.new_zeros(b, h, c.context, d)
            c.v[i] = v.new_zeros(b, h, c.context, d)
        k_all = torch.cat([c.k[i], k], dim=2)
        v_all = torch.cat([c.v[i], v], dim=2)
        cos, sin = c._shift
        c.k[i] = apply_rope(k_all[:, :, -c.context:], cos, sin)
        c.v[i] = v_all[:, :, -c.context:]
        return k_all, v_all


__all__ = ["KVCache", "RING_MARGIN", "StackCache", "WindowCarry", "put_slots"]
