"""The Byte Latent Transformer (Pagnoni et al. 2024, arXiv 2412.09871), read top to bottom.

Axes
  B  batch rows              N  bytes a row (model input)
  P  patches a row           k  cross-attention vectors a patch
  De encoder width           G  global width               Dd decoder width (= De)
  V  vocabulary (260)

Data flow (docs/reference-semantics.md §1):
  ids (B, N) --byte + hash n-gram embeddings--> (B, N, De)
    --local encoder: byte self-attention, then pooling + cross-attention--> patches (B, P*k, De)
    --view (B, P, k*De), global transformer over patches--> (B, P, G)
    --local decoder: byte i cross-attends to patch pid(i+1)-1, self-attention--> logits (B, N, V)

``patch_lengths`` (B, P) follow the reference: the first patch is 1 byte and every row sums to
N + 1, the last patch holding the target of the last byte (docs/reference-semantics.md §5). The model never computes
patch lengths; patchers do (``bltkit.patching``). The loss lives outside (``bltkit.training``).

With ``boundaries: learned`` the model places its own patches instead: a router on the encoder's
byte states, and the decoder reads the last *completed* patch, ``pid(i) - 1``
(``bltkit.model.learned``; docs/patching.md, "Learned boundaries").
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from .. import config as cfgio
from .. import weights
from ..data.vocab import EOS_ID, check_ids
from ..nn.kv_cache import put_slots
from ..nn.masks import SlotSpanMask
from ..nn.rope import rope_angles
from ..patching.lengths import validate_patch_lengths
from .cache import BLTCache
from .config import BLTConfig
from .global_transformer import GlobalTransformer
from .hash_embedding import HashNgramEmbedding
from .learned import LearnedBLTCache, LearnedBoundaries
from .local_decoder import LocalDecoder
from .local_encoder import LocalEncoder
from .masks import BLTMasks, build_masks, encoder_cross_mask, first_true

class ByteLatentTransformer(weights.Pretrained, nn.Module):
    config_class = BLTConfig  # save_pretrained / from_pretrained: bltkit.weights.Pretrained
    kind_name = "BLT model"

    def __init__(self, config: BLTConfig):
        super().__init__()
        self.config = config
        self.encoder_hash_tok_embedding = HashNgramEmbedding(config.hash, config.encoder.dim)
        self.local_encoder = LocalEncoder(config.encoder, config.cross_attn, config.vocab_size)
        self.global_transformer = GlobalTransformer(config.global_model, config.global_input_dim)
        self.local_decoder = LocalDecoder(config.decoder, config.cross_attn, config.global_model.dim, config.vocab_size)
        # boundaries: learned -> the router and null patch of bltkit.model.learned (no patch_lengths).
        self.learned = LearnedBoundaries(config.encoder.dim, config.global_model.dim) \
            if config.boundaries == "learned" else None
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor, patch_lengths: Optional[torch.Tensor] = None, validate: bool = True,
                attn_impl: Optional[str] = None, *, cache: Optional[BLTCache] = None,
                starts_next: Optional[torch.Tensor] = None, valid: Optional[torch.Tensor] = None,
                global_width: Optional[int] = None, return_routing: bool = False) -> torch.Tensor:
        """Next-byte logits (B, N, V) in fp32 for ``ids`` (B, N) split by ``patch_lengths`` (B, P).

        ``validate`` checks ids and patch lengths (it syncs with the host: training loops that
        built their batches with the packer may turn it off). ``attn_impl`` overrides the config.

        With ``cache`` (``new_cache``) it is one incremental step instead (see ``step``): ``ids``
        are the next bytes of each row and ``starts_next`` says where patches close.

        With learned boundaries (``config.boundaries``) the model places its own patches
        (``bltkit.model.learned``): no ``patch_lengths`` nor ``starts_next``; ``valid`` (B, N)
        marks real bytes; ``return_routing`` adds the router's decisions (``bltkit.model.hnet.HNetOutput``).
        """
        if self.learned is not None:
            if patch_lengths is not None or starts_next is not None:
                raise ValueError("this BLT learns its patch boundaries (boundaries: learned): give no "
                                 "patch_lengths or starts_next")
            if validate and cache is None:  # a cached step stays free of host syncs (as the given-patch step)
                if ids.dim() != 2:
                    raise ValueError(f"ids must be (batch, bytes), got shape {tuple(ids.shape)}")
                check_ids(ids)
            if cache is not None:
                return self.learned.step(self, ids, cache, valid, global_width, return_routing)
            return self.learned.full(self, ids, valid, attn_impl, return_routing)
        if cache is not None:
            return self.step(ids, starts_next, cache, valid, global_width)
        if patch_lengths is None:
            raise ValueError("patch_lengths are needed (or a cache, for an incremental step)")
        if validate:
            self.check_inputs(ids, patch_lengths)
        cfg = self.config
        b, n = ids.shape
        p = patch_lengths.shape[1]
        impl = self.resolve_attn_impl(ids.device, attn_impl)
        masks: BLTMasks = build_masks(ids, patch_lengths, cfg, form="flex" if impl == "flex" else "dense")

        # 1. Byte embeddings: token + sum of hash n-gram rows, unscaled (docs/reference-semantics.md §6).
        x = self.local_encoder.tok_embeddings(ids) + self.encoder_hash_tok_embedding(ids)  # (B, N, De)

        # 2. Local encoder -> byte states and k vectors a patch.
        byte_pos = torch.arange(n, device=ids.device)
        rope_enc = rope_angles(byte_pos, cfg.encoder.head_dim, cfg.encoder.rope_theta)
        h, patches = self.local_encoder(x, rope_enc, masks.enc_local, masks.enc_cross, masks.patch_ids, p)
        # h (B, N, De); patches (B, P*k, De)

        # 3. Global transformer over patches: the k vectors of a patch side by side (docs/reference-semantics.md §9).
        g_in = patches.reshape(b, p, cfg.global_input_dim)  # (B, P, k*De)
        rope_glob = rope_angles(torch.arange(p, device=ids.device), cfg.global_model.head_dim, cfg.global_model.rope_theta)
        g = self.global_transformer(g_in, rope_glob, masks.global_model)  # (B, P, G)

        # 4. Local decoder: encoder byte states + projected patch states -> logits.
        rope_dec = rope_enc if cfg.decoder.head_dim == cfg.encoder.head_dim and cfg.decoder.rope_theta == cfg.encoder.rope_theta \
            else rope_angles(byte_pos, cfg.decoder.head_dim, cfg.decoder.rope_theta)
        dec_patches = self.local_decoder.project_patches(g)  # (B, P*k, Dd)
        return self.local_decoder(h, dec_patches, rope_dec, masks.dec_local, masks.dec_cross)  # (B, N, V)

    # ---- incremental step: the same modules, their keys and states read from a cache ------------
    def new_cache(self, batch: int, max_bytes: int) -> BLTCache:
        """An empty ``BLTCache`` (``LearnedBLTCache`` with learned boundaries) for ``batch`` rows of
        up to ``max_bytes`` bytes (preallocated)."""
        return (LearnedBLTCache if self.learned is not None else BLTCache)(self, batch, max_bytes)

    def step(self, ids: torch.Tensor, starts_next: torch.Tensor, cache: BLTCache,
             valid: Optional[torch.Tensor] = None, global_width: Optional[int] = None) -> torch.Tensor:
        """Feed the next bytes ``ids`` (B, T) of every row; logits (B, T, V) fp32, equal to the
        full forward's at those positions over the whole prefix.

        ``starts_next`` (B, T) bool: whether the position after each byte starts a patch (what
        ``Patcher(prefix, include_next_token=True)`` decides for it; patching is causal,
        docs/reference-semantics.md, "Entropy patching"). ``valid`` (B, T): the real bytes, a
        prefix of each row (padding and finished rows leave the cache unchanged).

        Why this is the full forward: the encoder is causal over bytes; a patch's vector reads
        only its own bytes, so it is computed once, when it closes; the global model is causal
        over patches, so a closed patch enters its cache once; byte i reads patch
        ``dpid(i) = pid(i + 1) - 1``, closed by the time byte i is fed (docs/reference-semantics.md,
        "Patch lengths and alignment").

        ``global_width``: how many waiting patches a row the global model runs on this step.
        None: as many as wait (the host reads the count; 0 skips the global model); an int gives
        static shapes (1 for a one-byte decode step: at most one patch closes); 0 runs no global
        step (a speculative draft: bytes then read the last patch the global model has seen).
        """
        return self.finish_step(self.encode_step(ids, starts_next, cache, valid), cache, global_width)

    # The step in two halves, so a caller may read between them whether the global model has
    # work (``bltkit.inference.stepper``: a compiled CPU step runs it only then).
    def encode_step(self, ids: torch.Tensor, starts_next: torch.Tensor, cache: BLTCache,
                    valid: Optional[torch.Tensor] = None) -> tuple:
        """The first half of ``step``: embeddings and encoder, the closing patches stored. Its
        state goes to ``finish_step``; ``cache.waiting()`` tells whether a patch closed."""
        if valid is None:
            valid = torch.ones_like(ids, dtype=torch.bool)
        return self._encode_step(ids, starts_next.to(torch.bool) & valid, valid, cache)

    def finish_step(self, state: tuple, cache: BLTCache, global_width: Optional[int] = None) -> torch.Tensor:
        """The second half of ``step``: the global model on up to ``global_width`` waiting
        patches a row (as ``step``), then the decoder; logits (B, T, V)."""
        h, pos, doc, closed_after = state
        if global_width is None:
            global_width = int((cache.n_closed - cache.n_global).max())
        patches = self._global_step(cache, global_width)  # (B, W*k, Dd)
        return self.decode_step(h, pos, doc, closed_after, cache, patches)

    def _encode_step(self, ids, close, valid, cache: BLTCache):
        """Embeddings and encoder for the new bytes; the vectors of the patches closing here are
        stored for the global model. Returns byte states (B, T, De), positions, documents and the
        patches closed after each byte (B, T)."""
        cfg, c = self.config, self.config.cross_attn
        b, t = ids.shape
        dev, s = ids.device, cache.visible  # the byte slots this step reads (BLTCache.see)
        # 1. Byte + hash n-gram embeddings; the n-grams reach back into the cached bytes.
        x, pos, slot, doc, eos = self.step_inputs(ids, valid, cache)  # x (B, T, De)

        # 2. The patches closing in this step, C a row: the patch holding each closing byte.
        opened = torch.where(close, pos + 1, -1)  # (B, T) a patch opens after this byte
        before = torch.cat([opened.new_full((b, 1), -1), opened[:, :-1]], dim=1)
        start = torch.maximum(cache.patch_start[:, None], torch.cummax(before, dim=1).values)  # (B, T)
        width = 1 if t == 1 else max(1, int(close.sum(dim=1).max()))  # a chunk (prompt) reads its count
        ti, ok = first_true(close, width)  # (B, C) byte index of each closing patch, real or padding
        p_start, p_end = start.gather(1, ti), pos.gather(1, ti)
        spos = torch.arange(s, device=dev)
        inside = ok[..., None] & (spos >= p_start[..., None]) & (spos <= p_end[..., None])  # (B, C, S)
        slot_pid = torch.where(inside.any(dim=1), inside.to(torch.int64).argmax(dim=1), width)  # (B, S); C = none

        # 3. Local encoder over the new bytes; patch vectors pool over and attend to cached bytes.
        rope_e = rope_angles(pos.clamp(min=0), cfg.encoder.head_dim, cfg.encoder.rope_theta)  # (B, T, hd/2)
        mask = cache.enc.begin(pos, doc)  # (B, 1, T, S)
        cache.enc_cross.write_at(slot)
        cross = encoder_cross_mask(slot_pid, width, c.k)  # (B, 1, C*k, S)
        h, patch = self.local_encoder(x, rope_e, mask, cross, slot_pid, width, cache)  # (B, T, De), (B, C*k, De)
        put_slots(cache.h, slot, h)

        # 4. Closed patches wait in their slots for the global model, with their document.
        closed_after = cache.n_closed[:, None] + torch.cumsum(close.to(torch.int64), dim=1)  # (B, T)
        cache.close_patches(patch, ok, inside, close, opened, valid, eos)
        return h, pos, doc, closed_after

    def step_inputs(self, ids: torch.Tensor, valid: torch.Tensor, cache: BLTCache):
        """The step's bytes written into the cache and embedded: embeddings (B, T, De), positions
        and byte slots (B, T) (-1 and the sink S for padding), documents (B, T) and EOS marks (int64)."""
        cfg = self.config
        b, t = ids.shape
        dev, s = ids.device, cache.max_bytes
        pos = torch.where(valid, cache.length[:, None] + torch.arange(t, device=dev), -1)  # (B, T); -1 padding
        slot = torch.where(valid, pos, s)  # padding writes go to the sink slot s
        cache._slot = slot
        eos = ((ids == EOS_ID) & valid).to(torch.int64)
        doc = cache.n_docs[:, None] + torch.cumsum(eos, dim=1) - eos  # (B, T) EOS ends its document
        put_slots(cache.ids, slot, ids)
        x = self.local_encoder.tok_embeddings(ids)  # (B, T, De)
        n = max(cfg.hash.group_sizes) if cfg.hash.n_tables else 1
        ctx_pos = cache.length[:, None] - (n - 1) + torch.arange(t + n - 1, device=dev)  # (B, T + n - 1)
        ctx = torch.where(ctx_pos >= 0, cache.ids.gather(1, ctx_pos.clamp(0, s)), 0)  # left pad 0
        x = x + self.encoder_hash_tok_embedding(ctx)[:, n - 1:]
        return x, pos, slot, doc, eos

    def _global_step(self, cache: BLTCache, width: int) -> torch.Tensor:
        """The global model on up to ``width`` waiting patches a row; their projections (B, W*k, Dd)
        become the decoder's new cross keys."""
        cfg, k = self.config, self.config.cross_attn.k
        b, dev = cache.batch, cache.ids.device
        if width == 0:  # nothing to run: no new cross keys for the decoder
            cache.dec_cross.write_at(torch.zeros(b, 0, dtype=torch.int64, device=dev))
            return cache.h.new_zeros(b, 0, cfg.decoder.dim)
        p = cache.n_global[:, None] + torch.arange(width, device=dev)  # (B, W)
        ok = p < cache.n_closed[:, None]
        gslot = torch.where(ok, p, cache.patch_slots)
        g_in = cache.patches.gather(1, gslot[..., None].expand(-1, -1, cache.patches.shape[-1]))  # (B, W, k*De)
        gpos = torch.where(ok, p, -1)
        mask = cache.glob.begin(gpos, cache.patch_doc.gather(1, gslot))  # (B, 1, W, Q)
        rope_g = rope_angles(gpos.clamp(min=0), cfg.global_model.head_dim, cfg.global_model.rope_theta)
        g = self.global_transformer(g_in, rope_g, mask, cache.glob)  # (B, W, G)
        dslot = (gslot[..., None] * k + torch.arange(k, device=dev)).reshape(b, width * k)  # slot p*k + j
        cache.dec_cross.write_at(dslot, ok.repeat_interleave(k, dim=1))
        cache.n_global += ok.sum(dim=1)
        return self.local_decoder.project_patches(g)  # (B, W*k, Dd)

    def decode_step(self, h: torch.Tensor, pos: torch.Tensor, doc: torch.Tensor, closed_after: torch.Tensor,
                    cache: BLTCache, patches: torch.Tensor) -> torch.Tensor:
        """The local decoder on bytes at ``pos`` (B, T) with encoder states ``h``; byte i reads
        patch ``closed_after(i) - 1``, or the newest one the global model has seen (a draft)."""
        cfg = self.config
        dpid = torch.minimum(closed_after, cache.n_global[:, None]) - 1  # (B, T)
        rope_d = rope_angles(pos.clamp(min=0), cfg.decoder.head_dim, cfg.decoder.rope_theta)
        mask = cache.dec.begin(pos, doc)  # (B, 1, T, S)
        k = cfg.cross_attn.k
        cross = SlotSpanMask(torch.where(dpid >= 0, dpid * k, -1), k)  # byte -> the k slots of patch dpid
        return self.local_decoder(h, patches, rope_d, mask, cross, cache)  # (B, T, V)

    def resolve_attn_impl(self, device: torch.device, override: Optional[str] = None) -> str:
        impl = override or self.config.attn_impl
        if impl == "auto":
            impl = "flex" if device.type == "cuda" and self.config.cross_attn.empty_rows == "zero" else "sdpa"
        if impl not in ("sdpa", "flex"):
            raise ValueError(f"attn_impl must be 'sdpa', 'flex' or 'auto', got {impl!r}")
        return impl

    def check_inputs(self, ids: torch.Tensor, patch_lengths: torch.Tensor) -> None:
        """Clear errors for the mistakes a caller makes (bad ids, shapes, patch sums)."""
        if ids.dim() != 2:
            raise ValueError(f"ids must be (batch, bytes), got shape {tuple(ids.shape)}")
        if patch_lengths.dim() != 2 or patch_lengths.shape[0] != ids.shape[0]:
            raise ValueError(
                f"batch dimensions disagree: ids {tuple(ids.shape)} vs patch_lengths {tuple(patch_lengths.shape)}"
            )
        check_ids(ids)
        validate_patch_lengths(patch_lengths, ids.shape[1], extra=1, first_one=True)

    # ---- parameters -----------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, seed: Optional[int] = None) -> None:
        """Set every initial value (docs/reference-semantics.md §13), deterministic in ``config.init_seed``:

        - byte and hash embeddings: trunc-normal ±3σ, σ = De^-1/2
        - wq, wk, wv, wo, w1, w3 (self and cross): σ = (layer width)^-1/2; w2: σ = hidden^-1/2
        - patch and global projections: σ = (input width)^-1/2; output head σ = Dd^-1/2
        - norm weights 1
        - learned boundaries: router projections the identity, null patch σ = 1 (``bltkit.model.learned``)
        The global RNG is left as it was.
        """
        dev = next(self.parameters()).device
        devices = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=dev.type if dev.type != "cpu" else "cuda"):
            torch.manual_seed(self.config.init_seed if seed is None else seed)
            self.encoder_hash_tok_embedding.reset_parameters()
            self.local_encoder.reset_parameters()
            self.global_transformer.reset_parameters()
            self.local_decoder.reset_parameters()
            if self.learned is not None:
                self.learned.reset_parameters()

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count; ``exclude_embeddings`` drops the byte and hash embedding tables."""
        skip = {id(self.encoder_hash_tok_embedding.weight), id(self.local_encoder.tok_embeddings.weight)} if exclude_embeddings else set()
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)


def load_blt_config(path: str | os.PathLike, overrides: Optional[list[str]] = None) -> BLTConfig:
    """A model config from a YAML file or a shipped name (``tiny``, ``bench-s``, ``400m``, ``1b``)."""
    return cfgio.build_config(lambda data, source: cfgio.from_dict(BLTConfig, data, source=source),
                              path, "model", overrides, flag="model_overrides")[0]
