"""Learned patch boundaries for the BLT: H-Net's router in place of the entropy patcher.

A BLT with ``boundaries: learned`` places its own patch boundaries with the routing module of
dynamic chunking (H-Net, Hwang, Wang, Gu, arXiv 2507.07955 §2.2; the primitives are
``bltkit.nn.chunking``) and keeps everything else of the BLT: hash n-gram embeddings, the local
encoder, cross-attention pooling, the global transformer over patches and the local decoder.
docs/patching.md, "Learned boundaries", gives each choice and why.

Axes: B rows, N bytes, P patch slots (some padding), k cross vectors a patch, De / G / Dd widths.

    ids (B, N) --byte + hash n-gram embeddings--> (B, N, De) --encoder byte layers--> h (B, N, De)
      router(h) -> p, b (B, N): byte t opens a patch when p_t > 0.5; forced at the row's first
                   byte and after every EOS (p = 1)
      pid = cumsum(b) - 1 (B, N) --pooling + the encoder's cross step--> patches (B, P*k, De)
      --global transformer over patches--> g (B, P, G)
      --EMA over patches, P_j = p at patch j's first byte--> ḡ (B, P, G);  [null, ḡ_0, ḡ_1, ...]
      --local decoder: byte t reads ḡ_{pid(t) - 1}, the last patch *completed* before it (the
        null vector in its document's first patch), each cross update times STE(c_t)--> logits

Why the decoder reads ``pid(t) - 1`` and not BLT's ``pid(t + 1) - 1``: whether byte t + 1 opens
a patch is now decided from byte t + 1 itself, so BLT's rule would let byte t read a decision
made from its own target. Under ``pid(t) - 1`` the logits at t depend on bytes <= t only
(tests/test_learned_patches.py). Gradients reach the router through the EMA (``P_j``), the
straight-through confidence (``c_t = max(p_t, 1 - p_t)``, exactly 1 forward) and the ratio loss,
which the training task adds (``bltkit.training.blt_task``).

``LearnedBoundaries.full`` is the whole-row forward; ``LearnedBoundaries.step`` continues rows
held in a ``LearnedBLTCache``: each byte steps the encoder and the router; a boundary closes the
patch before it, which is pooled, run through the global model once and folded into the EMA
state; the decoder reads the last completed patch. Both give the same logits (tested).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..data.vocab import EOS_ID
from ..nn.chunking import Routing, RoutingModule, downsample, ema_scan, ste_one
from ..nn.init import trunc_normal_
from ..nn.kv_cache import put_slots
from ..nn.masks import SlotSpanMask
from ..nn.rope import rope_angles
from .cache import BLTCache
from .hnet import HNetOutput, forced_starts  # the same output and start rule as the H-Net kind
from .masks import (byte_masks, encoder_cross_mask, first_true, masks_from_patch_ids,
                    patch_document_ids)

SLOT_MULTIPLE = 16  # patch slots a row: the batch's largest count rounded up to this (fewer shapes)


def read_slots(pid: torch.Tensor, doc_first: torch.Tensor) -> torch.Tensor:
    """The decoder slot each byte reads, (B, N): slot 0 is the null vector, slot j + 1 patch j's
    smoothed output. Byte t reads patch ``pid(t) - 1`` (slot ``pid(t)``), or the null vector when
    its own patch opens a document (``doc_first`` (B, N): per byte, of its patch)."""
    return torch.where(doc_first, torch.zeros_like(pid), pid)


class LearnedBoundaries(nn.Module):
    """The parts a BLT with learned boundaries adds: the router over encoder byte states (``q_proj``
    and ``k_proj``, De x De, identity at init) and the null vector (G) that bytes read before their
    document's first patch completes."""

    def __init__(self, encoder_dim: int, global_dim: int):
        super().__init__()
        self.router = RoutingModule(encoder_dim)
        self.null_patch = nn.Parameter(torch.empty(global_dim))
        if not self.null_patch.is_meta:
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Router projections the identity (arXiv 2507.07955 §2.2.1); the null vector trunc-normal
        with σ = 1 (the decoder's cross-attention normalises its keys, so its scale is free)."""
        self.router.reset_parameters()
        trunc_normal_(self.null_patch, 1.0)

    # ---- the whole row ---------------------------------------------------------------------------
    def full(self, blt: nn.Module, ids: torch.Tensor, valid: Optional[torch.Tensor] = None,
             attn_impl: Optional[str] = None, return_routing: bool = False):
        """Logits (B, N, V) of ``blt`` over ``ids`` (B, N), boundaries from the router (see the
        module docstring). ``valid`` (B, N): real bytes (a prefix of each row); padding opens no
        patch and belongs to none."""
        cfg = blt.config
        b, n = ids.shape
        dev = ids.device
        impl = blt.resolve_attn_impl(dev, attn_impl)
        doc_reset = cfg.global_model.doc_reset

        # 1. Byte embeddings and the encoder's byte layers (its cross step waits for the patches).
        x = blt.local_encoder.tok_embeddings(ids) + blt.encoder_hash_tok_embedding(ids)  # (B, N, De)
        byte_pos = torch.arange(n, device=dev)
        rope_enc = rope_angles(byte_pos, cfg.encoder.head_dim, cfg.encoder.rope_theta)
        form = "flex" if impl == "flex" else "dense"
        local = byte_masks(ids, cfg, form)  # the byte masks need no patches
        h = blt.local_encoder.byte_layers(x, rope_enc, local[0])  # (B, N, De)

        # 2. Boundaries: the router on the byte states; patch ids from their cumulative sum.
        starts = forced_starts(ids, True)  # (B, N) the row's first byte and each byte after an EOS
        routing = self.router(h, starts=starts, valid=valid)  # p, b (B, N)
        bound = routing.boundary
        most = int(bound.sum(dim=1).max())  # one host read: the patch slots this batch needs
        p = max(1, min(n, -(-most // SLOT_MULTIPLE) * SLOT_MULTIPLE))
        chunks = downsample(h, bound, max_chunks=p)  # first byte of each patch: start (B, P), mask (B, P)
        pid = torch.cumsum(bound.to(torch.int64), dim=1) - 1  # (B, N)
        if valid is not None:
            pid = torch.where(valid, pid, p)  # padding: patch P, which no query reads or pools
        doc_first = chunks.select(starts) & chunks.mask  # (B, P) patch j opens a document (or the row)
        first_of_byte = doc_first.gather(1, pid.clamp(max=p - 1)) if doc_reset else pid == 0
        slots = read_slots(pid.clamp(max=p - 1), first_of_byte)  # (B, N) in [0, P]
        pdoc = patch_document_ids(ids, pid.clamp(max=p - 1), p) if doc_reset else None
        masks = masks_from_patch_ids(ids, pid, slots, p, cfg, form, pdoc, n_read=p + 1, local=local)

        # 3. Patch vectors: pooling and the encoder's cross step over each patch's bytes.
        patches = blt.local_encoder.cross_step(0, h, None, masks.enc_cross, pid, p)  # (B, P*k, De)

        # 4. Global transformer over patches, then the EMA over them (reset at each document).
        g_in = patches.reshape(b, p, cfg.global_input_dim)  # (B, P, k*De)
        rope_glob = rope_angles(torch.arange(p, device=dev), cfg.global_model.head_dim, cfg.global_model.rope_theta)
        g = blt.global_transformer(g_in, rope_glob, masks.global_model)  # (B, P, G)
        gbar = ema_scan(g, chunks.select(routing.prob), doc_first if doc_reset else None)  # (B, P, G) fp32
        table = torch.cat([self.null_patch.to(g.dtype).expand(b, 1, -1), gbar.to(g.dtype)], dim=1)  # (B, P+1, G)

        # 5. Local decoder: byte t reads slot ``slots[t]``, its cross updates times STE(c_t).
        rope_dec = rope_enc if cfg.decoder.head_dim == cfg.encoder.head_dim and cfg.decoder.rope_theta == cfg.encoder.rope_theta \
            else rope_angles(byte_pos, cfg.decoder.head_dim, cfg.decoder.rope_theta)
        dec_patches = blt.local_decoder.project_patches(table)  # (B, (P+1)*k, Dd)
        gate = ste_one(routing.confidence)  # (B, N) exactly 1, gradient to c
        logits = blt.local_decoder(h, dec_patches, rope_dec, masks.dec_local, masks.dec_cross, gate=gate)  # (B, N, V)
        return HNetOutput(logits, routing, starts) if return_routing else logits

    # ---- one cached step -------------------------------------------------------------------------
    def step(self, blt: nn.Module, ids: torch.Tensor, cache: "LearnedBLTCache", valid: Optional[torch.Tensor] = None,
             global_width: Optional[int] = None, return_routing: bool = False):
        """Feed the next bytes ``ids`` (B, T) of every row; logits (B, T, V) equal to ``full``'s at
        those positions over the whole prefix. ``valid`` (B, T): the real bytes, a prefix of each
        row. ``global_width``: patches a row the global model runs on (None: as many as wait, read
        on the host; 1 for a one-byte step, where at most one patch closes: static shapes)."""
        cfg, k = blt.config, blt.config.cross_attn.k
        b, t = ids.shape
        dev, s = ids.device, cache.visible  # the byte slots this step reads (BLTCache.see)
        valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else valid.to(torch.bool)
        prev_eos = (cache.ids.gather(1, (cache.length - 1).clamp(min=0)[:, None])[:, 0] == EOS_ID) & (cache.length > 0)
        x, pos, slot, doc, eos = blt.step_inputs(ids, valid, cache)  # x (B, T, De)

        # 1. The encoder's byte layers, then the router against the last byte's state.
        rope_e = rope_angles(pos.clamp(min=0), cfg.encoder.head_dim, cfg.encoder.rope_theta)  # (B, T, hd/2)
        h = blt.local_encoder.byte_layers(x, rope_e, cache.enc.begin(pos, doc), cache)  # (B, T, De)
        starts = forced_starts(ids, True, prev_eos=prev_eos, first=cache.length == 0) & valid
        routing = self.router(h, starts=starts, prev=cache.last_h.to(h.dtype), valid=valid)
        bound = routing.boundary  # (B, T)
        put_slots(cache.byte_p, slot, routing.prob)
        put_slots(cache.byte_start, slot, starts)

        # 2. A boundary at byte t closes the patch before it, bytes [start, t - 1], C a row.
        opened = torch.where(bound, pos, -1)  # (B, T)
        before = torch.cat([opened.new_full((b, 1), -1), opened[:, :-1]], dim=1)
        start_before = torch.maximum(cache.patch_start[:, None], torch.cummax(before, dim=1).values)  # (B, T)
        closes = bound & (pos > 0)
        width = 1 if t == 1 else max(1, int(closes.sum(dim=1).max()))
        ti, ok = first_true(closes, width)  # (B, C)
        p_start, p_end = start_before.gather(1, ti), pos.gather(1, ti) - 1
        spos = torch.arange(s, device=dev)
        inside = ok[..., None] & (spos >= p_start[..., None]) & (spos <= p_end[..., None])  # (B, C, S)
        slot_pid = torch.where(inside.any(dim=1), inside.to(torch.int64).argmax(dim=1), width)  # (B, S); C = none
        cache.enc_cross.write_at(slot)
        cross = encoder_cross_mask(slot_pid, width, k)  # (B, 1, C*k, S)
        patch = blt.local_encoder.cross_step(0, h, None, cross, slot_pid, width, cache)  # (B, C*k, De)
        put_slots(cache.h, slot, h)

        # 3. Closed patches wait for the global model with their document, P_j and reset.
        own = cache.n_closed[:, None] + torch.cumsum(closes.to(torch.int64), dim=1)  # (B, T) pid of each byte
        own_start = torch.maximum(start_before, opened)  # (B, T) first byte of each byte's patch
        pslot = cache.close_patches(patch, ok, inside, closes, opened, valid, eos)  # (B, C)
        put_slots(cache.patch_p, pslot, cache.byte_p.gather(1, p_start))
        put_slots(cache.patch_first, pslot, cache.byte_start.gather(1, p_start))
        last = (valid.sum(dim=1) - 1).clamp(min=0)  # each row's last real byte
        moved = valid.any(dim=1)
        cache.last_h.copy_(torch.where(moved[:, None], h[torch.arange(b, device=dev), last].to(cache.last_h.dtype),
                                       cache.last_h))

        # 4. The global model on the waiting patches, folded into the EMA state; the decoder's
        #    new keys: the null vector (slot 0, written on a row's first step) and each ḡ_p (slot p + 1).
        if global_width is None:
            global_width = int((cache.n_closed - cache.n_global).max())
        table, dslot, dvalid = self._global_step(blt, cache, global_width, first=pos[:, 0] == 0)
        cache.dec_cross.write_at(dslot, dvalid)

        # 5. The decoder: byte t reads patch own(t) - 1, or the null vector in a document's first patch.
        first = cache.byte_start.gather(1, own_start.clamp(min=0)) if cfg.global_model.doc_reset else own == 0
        slots = torch.where(valid, read_slots(own, first), 0)  # (B, T)
        rope_d = rope_angles(pos.clamp(min=0), cfg.decoder.head_dim, cfg.decoder.rope_theta)
        mask = cache.dec.begin(pos, doc)  # (B, 1, T, S)
        dcross = SlotSpanMask(slots * k, k)  # each byte reads the k cross slots of its patch
        gate = ste_one(routing.confidence)
        logits = blt.local_decoder(h, table, rope_d, mask, dcross, cache, gate=gate)  # (B, T, V)
        return HNetOutput(logits, routing, starts) if return_routing else logits

    def _global_step(self, blt: nn.Module, cache: "LearnedBLTCache", width: int, first: torch.Tensor):
        """The global model on up to ``width`` waiting patches a row and the EMA over them; the
        projected table (B, (1 + W)*k, Dd) with its decoder slots and which of them land."""
        cfg, k = blt.config, blt.config.cross_attn.k
        b, dev = cache.batch, cache.ids.device
        p = cache.n_global[:, None] + torch.arange(width, device=dev)  # (B, W)
        ok = p < cache.n_closed[:, None]
        gslot = torch.where(ok, p, cache.patch_slots)
        dt = cache.patches.dtype
        if width > 0:
            g_in = cache.patches.gather(1, gslot[..., None].expand(-1, -1, cache.patches.shape[-1]))  # (B, W, k*De)
            gpos = torch.where(ok, p, -1)
            mask = cache.glob.begin(gpos, cache.patch_doc.gather(1, gslot))  # (B, 1, W, Q)
            rope_g = rope_angles(gpos.clamp(min=0), cfg.global_model.head_dim, cfg.global_model.rope_theta)
            g = blt.global_transformer(g_in, rope_g, mask, cache.glob)  # (B, W, G)
            reset = cache.patch_first.gather(1, gslot) if cfg.global_model.doc_reset else None
            gbar = ema_scan(g, cache.patch_p.gather(1, gslot), reset, initial=cache.gbar)  # (B, W, G)
            n_ok = ok.sum(dim=1)
            at = (n_ok - 1).clamp(min=0)
            cache.gbar.copy_(torch.where((n_ok > 0)[:, None], gbar[torch.arange(b, device=dev), at].to(cache.gbar.dtype),
                                         cache.gbar))
            cache.n_global += n_ok
            rows = gbar.to(g.dtype)
        else:
            rows = cache.gbar.new_zeros(b, 0, self.null_patch.shape[0]).to(dt)
        table = torch.cat([self.null_patch.to(rows.dtype).expand(b, 1, -1), rows], dim=1)  # (B, 1 + W, G)
        ar = torch.arange(k, device=dev)
        dslot = torch.cat([ar.expand(b, k), ((gslot + 1)[..., None] * k + ar).reshape(b, width * k)], dim=1)
        dvalid = torch.cat([first[:, None].expand(b, k), ok.repeat_interleave(k, dim=1)], dim=1)
        return blt.local_decoder.project_patches(table), dslot, dvalid


class LearnedBLTCache(BLTCache):
    """A ``BLTCache`` plus what learned boundaries carry between steps:

    | buffer        | shape      | holds                                                 |
    |---------------|------------|-------------------------------------------------------|
    | ``last_h``    | (B, De)    | the encoder state of the last byte (the router's pair) |
    | ``byte_p``    | (B, S + 1) | each byte's boundary probability p                     |
    | ``byte_start``| (B, S + 1) | each byte's forced start (row start, after an EOS)     |
    | ``patch_p``   | (B, Q + 1) | each closed patch's P_j (p at its first byte)          |
    | ``patch_first``| (B, Q + 1)| whether each closed patch opens a document             |
    | ``gbar``      | (B, G)     | the EMA state after the last patch the global model ran on |

    Decoder cross slots: slot 0 holds the null vector, slot p + 1 patch p's smoothed output.
    """

    def __init__(self, model: nn.Module, batch: int, max_bytes: int):
        super().__init__(model, batch, max_bytes)
        cfg = model.config
        w = model.local_encoder.tok_embeddings.weight
        dev, dt = w.device, w.dtype
        s, q = max_bytes, self.patch_slots
        fp = torch.promote_types(dt, torch.float32)
        self.last_h = torch.zeros(batch, cfg.encoder.dim, dtype=dt, device=dev)
        self.byte_p = torch.zeros(batch, s + 1, dtype=fp, device=dev)
        self.byte_start = torch.zeros(batch, s + 1, dtype=torch.bool, device=dev)
        self.patch_p = torch.ones(batch, q + 1, dtype=fp, device=dev)
        self.patch_first = torch.zeros(batch, q + 1, dtype=torch.bool, device=dev)
        self.gbar = torch.zeros(batch, cfg.global_model.dim, dtype=fp, device=dev)

    def snapshot(self) -> dict[str, Any]:
        raise ValueError("a BLT with learned boundaries has no speculative decoding (its router and EMA state "
                         "would need rolling back too)")


__all__ = ["LearnedBoundaries", "LearnedBLTCache", "read_slots", "SLOT_MULTIPLE"]
