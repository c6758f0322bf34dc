"""The BLT run incrementally: every part cached, patch boundaries decided byte by byte.

Axes: B rows held, b rows in a step, T new bytes a row, M patches closing in a step, L bytes of
the longest closing patch, k cross vectors a patch, De / G / Dd encoder, global, decoder widths.

Why this equals the full forward on the whole prefix (blt-reference §3.6, §8, pitfall 22):

- Byte embeddings and the local encoder are causal over bytes (windowed, reset after EOS), so
  each byte's states are computed once, with a KV cache per encoder layer.
- A patch's encoder vector reads only its own bytes (pooling and the encoder cross mask are
  ``pid == patch``), so it is computed once, when the patch *closes*: when the byte after its
  last byte is known to start a new patch. That decision for position n+1 is made after byte n
  (entropy ``H_n`` in entropy patching; the bytes themselves otherwise), exactly as
  ``patcher.patch(prefix, include_next_token=True)`` makes it for the last position.
- The global transformer is causal over patches: a closed patch enters its KV cache once. The
  still-open patch (and the virtual next-token patch) is never read by the decoder, because byte
  i reads patch ``dpid(i) = pid(i+1) - 1``, which is always closed by the time byte i is fed.
- The local decoder is causal over bytes; byte i's cross-attention reads the k projected global
  vectors of patch ``dpid(i)`` only, stored per patch when the patch closes.

So one step (byte n fed) is: encoder on byte n; if position n+1 starts a patch, close the patch
holding n (encoder cross -> global -> projected decoder keys); decoder on byte n, reading the
just-closed patch when n+1 starts a patch and the previous closed patch otherwise. A prompt is
the same step with T bytes at once.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..data.vocab import EOS_ID
from ..nn.rope import rope_angles
from .cache import StackCache


class BLTCache:
    """All incremental state of a batch of rows of one ``ByteLatentTransformer``."""

    def __init__(self, model, batch: int, max_bytes: int, device: torch.device):
        cfg = model.config
        self.model, self.cfg, self.device = model, cfg, device
        self.max_bytes = max_bytes
        e, d = cfg.encoder, cfg.decoder
        self.enc = StackCache(e.n_layers, batch, max_bytes, e.window, e.doc_reset, device)
        self.dec = StackCache(d.n_layers, batch, max_bytes, d.window, d.doc_reset, device)
        self.glob = StackCache(cfg.global_.n_layers, batch, max_bytes + 1, None,
                               cfg.global_.attention == "block_causal", device)
        z = lambda dt=torch.int64: torch.zeros(batch, dtype=dt, device=device)  # noqa: E731
        self.ids = torch.zeros(batch, max_bytes, dtype=torch.int64, device=device)  # (B, Nmax) bytes fed
        self.length = z()  # bytes fed a row
        self.n_docs = z()  # EOS fed so far (document id of the next byte)
        self.patch_start = z()  # first byte of the open patch
        self.n_closed = z()  # closed patches
        self.n_eos_patches = z()  # closed patches holding an EOS (global document id)
        # Encoder byte states after each layer that has a cross step (its patch vectors read them).
        c = cfg.cross_attn
        self.cross_layers = [i for i in range(e.n_layers) if c.encoder_all_layers or i == e.n_layers - 1]
        self.enc_states: dict[int, Optional[torch.Tensor]] = {i: None for i in self.cross_layers}  # (B, Nmax, De)
        self.dec_patches: Optional[torch.Tensor] = None  # (B, Pmax, k, Dd) projected global states
        self.max_ngram = max(cfg.hash.group_sizes) if cfg.hash.n_tables else 0

    @property
    def batch(self) -> int:
        return self.ids.shape[0]

    def keep(self, idx: torch.Tensor) -> None:
        """Keep rows ``idx`` only (finished rows leave)."""
        for cache in (self.enc, self.dec, self.glob):
            cache.keep(idx)
        for name in ("ids", "length", "n_docs", "patch_start", "n_closed", "n_eos_patches", "dec_patches"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t[idx])
        self.enc_states = {i: None if t is None else t[idx] for i, t in self.enc_states.items()}

    # ---- one step -------------------------------------------------------------------------------
    @torch.no_grad()
    def advance(self, ids: torch.Tensor, starts_next: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Feed ``ids`` (b, T) to ``rows`` (all when None); ``starts_next[r, t]`` says whether the
        position after byte t starts a patch. Returns the logits after the last byte, (b, V) fp32."""
        cfg, model = self.cfg, self.model
        dev = self.device
        b, t = ids.shape
        row_idx = rows if rows is not None else torch.arange(self.batch, device=dev)
        qpos = self.length[row_idx, None] + torch.arange(t, device=dev)  # (b, T)
        if int(qpos.max()) >= self.max_bytes:
            raise ValueError(f"sequence longer than the {self.max_bytes} bytes this generation was set up for")
        is_eos = (ids == EOS_ID).to(torch.int64)
        qdoc = self.n_docs[row_idx, None] + torch.cumsum(is_eos, dim=1) - is_eos  # (b, T) EOS ends its document
        self.ids[row_idx[:, None], qpos] = ids

        # 1. Byte + hash n-gram embeddings; the n-gram windows reach back into earlier bytes.
        x = model.local_encoder.tok_embeddings(ids)  # (b, T, De)
        if self.max_ngram:
            ctx_pos = qpos[:, :1] - (self.max_ngram - 1) + torch.arange(t + self.max_ngram - 1, device=dev)  # (b, T+n-1)
            ctx = torch.where(ctx_pos >= 0, self.ids[row_idx[:, None], ctx_pos.clamp(min=0)], 0)  # left pad 0 (§4.1)
            x = x + model.encoder_hash_tok_embedding(ctx)[:, self.max_ngram - 1:]

        # 2. Local encoder layers with their KV caches; keep the states the patch vectors read.
        rope_e = rope_angles(qpos, cfg.encoder.head_dim, cfg.encoder.rope_theta)  # (b, T, hd/2)
        mask, views = self.enc.step(qpos, qdoc, rows)
        h = x
        for i, layer in enumerate(model.local_encoder.layers):
            h = layer(h, rope_e, mask, views[i])  # (b, T, De)
            if i in self.enc_states:
                if self.enc_states[i] is None:
                    self.enc_states[i] = h.new_zeros(self.batch, self.max_bytes, h.shape[-1])
                self.enc_states[i][row_idx[:, None], qpos] = h

        # 3. Close the patches that end in this chunk: encoder cross -> global -> decoder keys.
        starts_next = starts_next.to(torch.bool)
        if bool(((qpos == 0) & ~starts_next).any()):
            raise ValueError("position 1 always starts a patch (BOS is a patch of its own, blt-reference §3.2)")
        closes_before = torch.cumsum(starts_next.to(torch.int64), dim=1) - starts_next.to(torch.int64)  # (b, T)
        if bool(starts_next.any()):
            self._close_patches(row_idx, qpos, starts_next, closes_before)

        # 4. Local decoder: byte n reads patch dpid(n) = (patches closed after n) - 1.
        dpid = self.n_closed[row_idx, None] - 1 + closes_before + starts_next.to(torch.int64)  # (b, T)
        self.n_closed[row_idx] += starts_next.sum(dim=1)
        self.length[row_idx] += t
        self.n_docs[row_idx] += is_eos.sum(dim=1)

        c = cfg.cross_attn
        kv = self.dec_patches[row_idx[:, None], dpid]  # (b, T, k, Dd)
        kv = kv.reshape(b * t, c.k, -1)  # one query a byte, its own k keys
        cross_mask = torch.ones(b * t, 1, 1, c.k, dtype=torch.bool, device=dev)
        rope_d = rope_angles(qpos, cfg.decoder.head_dim, cfg.decoder.rope_theta)
        mask, views = self.dec.step(qpos, qdoc, rows)
        dec = model.local_decoder
        for i, layer in enumerate(dec.layers):
            if i == 0 or c.decoder_all_layers:
                hq = h.reshape(b * t, 1, -1)
                h = (hq + dec.cross_attn_layers[i](hq, kv, cross_mask)).reshape(b, t, -1)  # 2h + wo(attn)
            h = layer(h, rope_d, mask, views[i])
        return dec.output(dec.norm(h[:, -1])).float()  # (b, V)

    def _close_patches(self, row_idx, qpos, starts_next, closes_before) -> None:
        cfg, model, dev = self.cfg, self.model, self.device
        c = cfg.cross_attn
        b, t = qpos.shape
        # Start of the patch holding each chunk byte: the open patch's start, or the latest start
        # opened inside the chunk before it.
        opened = torch.where(starts_next, qpos + 1, -1)  # (b, T)
        prev_open = torch.cummax(torch.cat([torch.full_like(opened[:, :1], -1), opened[:, :-1]], 1), dim=1).values
        start = torch.maximum(self.patch_start[row_idx, None], prev_open)  # (b, T)
        ri, ti = starts_next.nonzero(as_tuple=True)  # M closing patches, row-major order
        rows_m = row_idx[ri]  # (M,)
        p_start, p_end = start[ri, ti], qpos[ri, ti]
        lengths = p_end - p_start + 1
        width = int(lengths.max())
        offs = torch.arange(width, device=dev)
        valid = offs[None] < lengths[:, None]  # (M, L)
        gidx = torch.minimum(p_start[:, None] + offs, p_end[:, None])  # (M, L)
        has_eos = ((self.ids[rows_m[:, None], gidx] == EOS_ID) & valid).any(dim=1)  # (M,)

        # Encoder patch vectors: pool once (or each step), project to k queries, cross-attend to the
        # patch's own bytes, accumulate (§4.4, pitfalls 4-5), exactly LocalEncoder.forward per patch.
        enc = model.local_encoder
        patch = None
        cross_mask = valid[:, None, None, :].expand(-1, 1, c.k, -1)  # (M, 1, k, L)
        for j, layer_i in enumerate(self.cross_layers):
            states = self.enc_states[layer_i][rows_m[:, None], gidx]  # (M, L, De)
            if patch is None or c.repool_each_layer:
                pooled = _pool(states, valid, c.pooling)  # (M, De)
                patch = enc.patch_embedding_projection(pooled).reshape(-1, c.k, states.shape[-1])  # (M, k, De)
            patch = patch + enc.cross_attn_layers[j if c.encoder_all_layers else 0](patch, states, cross_mask)

        # Global transformer: each row's closing patches as consecutive new positions (padded).
        count = starts_next.sum(dim=1)  # (b,)
        grows = (count > 0).nonzero(as_tuple=True)[0]  # rows of this step with a closing patch
        cmax = int(count.max())
        slot = closes_before[ri, ti]  # (M,) index among the row's closing patches
        where = torch.full((b, cmax), -1, dtype=torch.int64, device=dev)
        where[ri, slot] = torch.arange(ri.numel(), device=dev)
        where = where[grows]  # (b', C) item index or -1
        gvalid = where >= 0
        g_in = patch.reshape(patch.shape[0], -1)[where.clamp(min=0)]  # (b', C, k*De)
        gpos = torch.where(gvalid, self.n_closed[row_idx[grows], None] + torch.arange(cmax, device=dev), -1)
        eos_item = has_eos.to(torch.int64)[where.clamp(min=0)] * gvalid  # (b', C)
        gdoc = self.n_eos_patches[row_idx[grows], None] + torch.cumsum(eos_item, 1) - eos_item
        rope_g = rope_angles(gpos.clamp(min=0), cfg.global_.head_dim, cfg.global_.rope_theta)
        grow_rows = row_idx[grows]
        everyone = grow_rows.numel() == self.batch and torch.equal(grow_rows, torch.arange(self.batch, device=dev))
        mask, views = self.glob.step(gpos, gdoc, None if everyone else grow_rows)
        g = model.global_transformer(g_in, rope_g, mask, views)  # (b', C, G)
        dp = model.local_decoder.project_patches(g).reshape(g.shape[0], cmax, c.k, -1)  # (b', C, k, Dd)
        if self.dec_patches is None:
            self.dec_patches = dp.new_zeros(self.batch, self.max_bytes + 1, c.k, dp.shape[-1])
        gb, gc = gvalid.nonzero(as_tuple=True)
        self.dec_patches[grow_rows[gb], gpos[gb, gc]] = dp[gb, gc]

        # Bookkeeping: the last patch opened in the chunk is the open one.
        last_open = torch.where(starts_next, qpos + 1, -1).max(dim=1).values  # (b,)
        self.patch_start[row_idx] = torch.maximum(self.patch_start[row_idx], last_open)
        self.n_eos_patches[grow_rows] += eos_item.sum(dim=1)


def _pool(states: torch.Tensor, valid: torch.Tensor, mode: str) -> torch.Tensor:
    """(M, L, D) over the valid bytes -> (M, D); the same reduction as ``pool_patches``."""
    v = valid[..., None]
    if mode == "max":
        return states.masked_fill(~v, float("-inf")).amax(dim=1)
    if mode == "min":
        return states.masked_fill(~v, float("inf")).amin(dim=1)
    return (states * v).sum(dim=1) / v.sum(dim=1).to(states.dtype)


__all__ = ["BLTCache"]
