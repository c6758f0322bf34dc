"""The incremental state of a ``ByteLatentTransformer``: what ``model(ids, cache=...)`` reads and
extends. Axes: B rows, S byte slots, Q patch slots (S + 1), k cross vectors a patch,
De / G / Dd encoder, global and decoder widths.

Every buffer is preallocated for ``max_bytes`` and addressed by position (byte n in byte slot n,
patch p in patch slot p), so a step changes no shape and a rolled-back speculative draft is
forgotten by resetting counters (``snapshot`` / ``restore``) and marking slots empty.

| buffer        | shape               | holds                                                   |
|---------------|---------------------|---------------------------------------------------------|
| ``ids``       | (B, S + 1)          | the bytes fed (the hash n-grams and EOS tests read back) |
| ``enc``       | ``StackCache``      | encoder self-attention K/V, by byte                      |
| ``states``    | (n_cross, B, S+1, De) | encoder byte states the patch queries pool over        |
| ``enc_cross`` | ``KVCache``         | encoder cross K/V of every byte (the patch vectors' keys) |
| ``h``         | (B, S + 1, De)      | the encoder's output per byte (the decoder's input)       |
| ``patches``   | (B, Q + 1, k*De)    | each closed patch's vector, waiting for / given to the global |
| ``patch_doc`` | (B, Q + 1)          | each closed patch's document (block-causal global)         |
| ``glob``      | ``StackCache``      | global self-attention K/V, by patch                        |
| ``dec_cross`` | ``KVCache``         | decoder cross K/V of each global output, slot p*k + j      |
| ``dec``       | ``StackCache``      | decoder self-attention K/V, by byte                        |

Counters, (B,) int64 each: ``length`` bytes fed, ``n_docs`` EOS fed, ``patch_start`` first byte
of the open patch, ``n_closed`` patches closed by the encoder, ``n_global`` patches the global
model has run on (they lag ``n_closed`` only while a speculative draft runs), ``n_eos_patches``
closed patches holding an EOS.
"""
from __future__ import annotations

import torch
from torch import nn

from ..data.vocab import EOS_ID
from ..nn.kv_cache import KVCache, StackCache, put_slots

COUNTERS = ("length", "n_docs", "patch_start", "n_closed", "n_global", "n_eos_patches")


class BLTCache:
    def __init__(self, model: nn.Module, batch: int, max_bytes: int):
        if max_bytes < 2:
            raise ValueError(f"a BLT cache needs room for >= 2 bytes, got max_bytes {max_bytes}")
        cfg = model.config
        e, d, c = cfg.encoder, cfg.decoder, cfg.cross_attn
        w = model.local_encoder.tok_embeddings.weight
        dev, dt = w.device, w.dtype
        self.max_bytes, self.k = max_bytes, c.k
        self.visible = max_bytes  # byte slots a step reads (``see``)
        s, q = max_bytes, max_bytes + 1
        self.ids = torch.zeros(batch, s + 1, dtype=torch.int64, device=dev)
        self.enc = StackCache(model.local_encoder.layers, batch, s, e.window, e.doc_reset)
        self.states = torch.zeros(cfg.n_encoder_cross, batch, s + 1, e.dim, dtype=dt, device=dev)
        self.enc_cross = KVCache.for_layers(model.local_encoder.cross_attn_layers, batch, s)
        self.h = torch.zeros(batch, s + 1, e.dim, dtype=dt, device=dev)
        self.patches = torch.zeros(batch, q + 1, cfg.global_input_dim, dtype=dt, device=dev)
        self.patch_doc = torch.zeros(batch, q + 1, dtype=torch.int64, device=dev)
        self.glob = StackCache(model.global_transformer.layers, batch, q, None, cfg.global_model.doc_reset)
        self.dec_cross = KVCache.for_layers(model.local_decoder.cross_attn_layers, batch, q * c.k)
        self.dec = StackCache(model.local_decoder.layers, batch, s, d.window, d.doc_reset)
        for name in COUNTERS:
            setattr(self, name, torch.zeros(batch, dtype=torch.int64, device=dev))
        self._slot = None  # (B, T) byte slots of the current step (sink S for padding)

    @property
    def batch(self) -> int:
        return self.ids.shape[0]

    @property
    def patch_slots(self) -> int:
        return self.glob.slots

    def waiting(self) -> torch.Tensor:
        """() bool: whether any row has a closed patch the global model has not run on."""
        return (self.n_closed > self.n_global).any()

    def see(self, n_bytes: int) -> None:
        """The next steps read the first ``n_bytes`` byte slots (and patch slots) only: the caller
        knows every later one is empty (``bltkit.nn.kv_cache``, ``see``)."""
        self.visible = max(1, min(int(n_bytes), self.max_bytes))
        for c in (self.enc, self.enc_cross, self.dec):
            c.see(self.visible)
        self.glob.see(self.visible + 1)  # patches <= bytes; the decoder reads its k slots by index

    def byte_states(self, j: int, h: torch.Tensor) -> torch.Tensor:
        """Store the step's states (B, T, De) of cross layer j; return the visible byte slots' (B, S, De)."""
        buf = self.states[j]
        put_slots(buf, self._slot, h)
        return buf[:, :self.visible]

    def close_patches(self, patch: torch.Tensor, ok: torch.Tensor, inside: torch.Tensor, close: torch.Tensor,
                      opened: torch.Tensor, valid: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
        """The step's bookkeeping after the encoder: the patches that closed (``patch`` (B, C*k, De),
        ``ok`` (B, C) which are real, ``inside`` (B, C, S) their bytes) wait in their slots for
        the global model with their document, and the counters move past the step's bytes
        (``close``, ``opened``, ``valid``, ``eos``: (B, T)). Returns each patch's slot (B, C), the
        sink slot ``patch_slots`` for the padding ones."""
        b, width = ok.shape
        pslot = torch.where(ok, self.n_closed[:, None] + torch.arange(width, device=ok.device), self.patch_slots)
        vec = patch.reshape(b, width, -1)  # (B, C, k*De)
        put_slots(self.patches, pslot, vec)
        s = inside.shape[-1]
        has_eos = ((inside & (self.ids[:, None, :s] == EOS_ID)).any(dim=-1) & ok).to(torch.int64)  # (B, C)
        put_slots(self.patch_doc, pslot, self.n_eos_patches[:, None] + torch.cumsum(has_eos, dim=1) - has_eos)
        self.n_closed += close.sum(dim=1)
        self.n_eos_patches += has_eos.sum(dim=1)
        self.patch_start.copy_(torch.maximum(self.patch_start, opened.max(dim=1).values))
        self.length += valid.sum(dim=1)
        self.n_docs += eos.sum(dim=1)
        return pslot

    # ---- speculative drafts: keep the counters, put them back ------------------------------------
    def snapshot(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).clone() for name in COUNTERS}

    def restore(self, snap: dict[str, torch.Tensor]) -> None:
        """Counters from ``snap`` (already picked per row); forget the bytes and patches after them."""
        for name in COUNTERS:
            getattr(self, name).copy_(snap[name])
        self.enc.truncate(self.length)
        self.dec.truncate(self.length)
        self.glob.truncate(self.n_global)


__all__ = ["BLTCache", "COUNTERS"]
