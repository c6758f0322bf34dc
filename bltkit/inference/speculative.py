"""Self-speculative decoding for the BLT (BLT-S; Kallini et al., "Fast Byte Latent Transformer",
arXiv 2605.08044): the local decoder drafts past a patch boundary instead of waiting for the
global model, and one global call then verifies the draft. Greedy only; no extra training.

Axes: B rows, D draft length (bytes fed per draft, the boundary byte included), V vocabulary.

When a fed byte closes a patch in some live row, the stepper does not run the global model.
It feeds that byte and D - 1 more, each the decoder's greedy choice, with ``global_width=0``:
entropy model, boundaries and encoder are exact (they read bytes only); the decoder reads the
newest patch the global model has seen, a stale state. Then one verification: the global model
runs on every patch closed during the draft, and the decoder reruns the D positions in parallel
with the right patches, giving the exact logits. The longest prefix of drafted bytes those logits
agree with is kept; the first disagreement is where the exact logits take over. Everything fed
after the last kept byte is forgotten: counters go back to their snapshot after that byte (row
by row) and every cache slot past it is marked empty (caches are position-addressed, nothing
else moves). Patches closed by kept bytes stay in the global model's cache, so the next global
call only sees newer ones.

The exact logits of kept bytes are queued: the generation loop asks ``step`` for them next, byte
by byte, and gets them without computing (it feeds exactly the drafted bytes, because greedy
argmax of the exact logits is what agreed). So the loop, its stop strings and its EOS handling
are the plain one, and the output is the plain greedy output, byte for byte.

``stats`` counts drafted and accepted bytes and global-model calls (acceptance rate and bytes per
global call in ``bltkit bench``).

With ``compile``, every byte fed (drafted or not) goes through the compiled split step's two
graphs (``CachedStepper``, ``split_global``): the encoder half, then the half without the global
model, which a drafted byte needs anyway (the global model waits for verification). The
verification (a variable number of patches, D positions) stays eager, once a draft.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..nn.kv_cache import RING_MARGIN
from ..patching.config import PatcherConfig
from .stepper import CachedStepper


def check_draft_length(draft: object) -> int:
    """``speculative``: True (the default draft of 4 bytes) or a whole number in [1, RING_MARGIN]
    (a rejected draft is rolled back, and a windowed cache's ring survives rollbacks that deep:
    ``bltkit.nn.kv_cache``)."""
    if draft is True:
        return DEFAULT_DRAFT
    if isinstance(draft, bool) or not isinstance(draft, int) or not 1 <= draft <= RING_MARGIN:
        raise ValueError(f"speculative draft length must be a whole number from 1 to {RING_MARGIN} (or True), "
                         f"got {draft!r}")
    return draft


DEFAULT_DRAFT = 4


def _pick(snaps: list, idx: torch.Tensor):
    """Per row b, the value of ``snaps[idx[b]]`` (nested dicts of (B,) tensors)."""
    first = snaps[0]
    if first is None:
        return None
    if isinstance(first, dict):
        return {k: _pick([s[k] for s in snaps], idx) for k in first}
    return torch.stack(snaps).gather(0, idx[None])[0]


class SpeculativeStepper(CachedStepper):
    def __init__(self, model: nn.Module, patcher: PatcherConfig, entropy_model: Optional[nn.Module],
                 max_bytes: int, device: torch.device, draft: int | bool = True, compile: bool | str = False):
        if patcher is None:
            raise ValueError("speculative decoding drafts past patch boundaries: it needs a BLT (with a patcher)")
        self.draft = check_draft_length(draft)
        # Room for a draft that runs past the last requested byte before it is rejected.
        super().__init__(model, patcher, entropy_model, max_bytes + self.draft, device, compile=compile,
                         split_global=True if compile else None)
        self.stats = {"drafted": 0, "accepted": 0, "global_calls": 0}

    def start(self, prompts: list[list[int]]) -> torch.Tensor:
        out = super().start(prompts)
        self.stats["global_calls"] += 1
        b, q = len(prompts), self.draft - 1
        self.queued = out.new_zeros(b, q, out.shape[-1])  # (B, D - 1, V) exact logits of kept drafted bytes
        self.expect = torch.zeros(b, q, dtype=torch.int64, device=self.device)  # the byte each one answers
        self.qlen = torch.zeros(b, dtype=torch.int64, device=self.device)  # entries left a row
        self.qptr = torch.zeros(b, dtype=torch.int64, device=self.device)  # next entry a row
        return out

    @torch.no_grad()
    def step(self, ids: torch.Tensor, live: Optional[torch.Tensor] = None) -> torch.Tensor:
        ids = ids.to(self.device)
        live = torch.ones_like(ids, dtype=torch.bool) if live is None else live.to(self.device)
        served = live & (self.qlen > 0)
        out = torch.zeros(ids.shape[0], self.queued.shape[-1], device=self.device)
        if bool(served.any()):
            rows = served.nonzero()[:, 0]
            col = self.qptr[rows]
            if not bool((self.expect[rows, col] == ids[rows]).all()):
                raise RuntimeError("speculative decoding was fed a byte it did not verify (it is greedy only)")
            out[rows] = self.queued[rows, col]
            self.qlen[rows] -= 1
            self.qptr[rows] += 1
        need = live & ~served
        if bool(need.any()):
            out[need] = self._advance(ids, need)[need]
        return out

    def _feed_one(self, ids: torch.Tensor, need: torch.Tensor) -> torch.Tensor:
        self._check_room(int(self.cache.length.max()) + 1)
        if self.split:  # compiled: the encoder graph, then the graph with no global model
            state = self._call("encode", self._front_fn, ids, need)
            return self._call(0, self._back_fns[0], *state)  # (B, V)
        return self.feed(ids[:, None], need[:, None], global_width=0)[:, 0]  # (B, V)

    def _advance(self, ids: torch.Tensor, need: torch.Tensor) -> torch.Tensor:
        """Feed ``ids`` where ``need``; draft and verify when a patch closed. Logits (B, V)."""
        c = self.cache
        logits = self._feed_one(ids, need)
        if not bool(((c.n_closed > c.n_global) & need).any()):
            return logits  # no patch closed: the decoder already read the right patch
        # A patch closed: draft D - 1 more bytes from the stale global state.
        start = c.length - 1  # (B,) position of the boundary byte (rows that fed it)
        snaps, drafted, dl = [self.snapshot()], [], [logits]
        for _ in range(self.draft - 1):
            drafted.append(dl[-1].argmax(dim=-1))
            dl.append(self._feed_one(drafted[-1], need))
            snaps.append(self.snapshot())
        drafted.append(dl[-1].argmax(dim=-1))
        d = self.draft

        # Verify: the global model on every patch closed in the draft, the decoder on all D bytes.
        pos = torch.where(need[:, None], start[:, None] + torch.arange(d, device=self.device), -1)  # (B, D)
        slot = pos.clamp(min=0)
        closed_after = torch.stack([s["model"]["n_closed"] for s in snaps], dim=1)  # (B, D)
        width = int((c.n_closed - c.n_global).max())
        patches = self.model._global_step(c, width)
        h = c.h.gather(1, slot[..., None].expand(-1, -1, c.h.shape[-1]))  # (B, D, De)
        exact = self.model.decode_step(h, pos, c.enc.doc_at(pos), closed_after, c, patches)  # (B, D, V)
        self.stats["global_calls"] += 1

        # Keep the longest agreeing prefix: a = drafted bytes the exact logits agree with.
        agree = exact.argmax(dim=-1) == torch.stack(drafted, dim=1)  # (B, D)
        a = torch.cumprod(agree.to(torch.int64), dim=1).sum(dim=1)  # (B,)
        keep = torch.where(need, torch.clamp(a, max=d - 1), 0)  # bytes kept after the boundary byte
        self.stats["drafted"] += int(need.sum()) * (d - 1)
        self.stats["accepted"] += int(keep.sum())
        back = _pick(snaps, keep)
        back["model"]["n_global"] = back["model"]["n_closed"]  # every kept patch went through the global model
        self.restore(back)
        if d > 1:
            self.queued[need] = exact[need, 1:]
            self.expect[need] = torch.stack(drafted[:-1], dim=1)[need]
        self.qlen = torch.where(need, keep, self.qlen)
        self.qptr = torch.where(need, 0, self.qptr)
        return exact[:, 0]


__all__ = ["SpeculativeStepper", "check_draft_length", "DEFAULT_DRAFT"]
