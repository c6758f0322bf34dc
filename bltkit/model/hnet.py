"""HNet: a 1-stage H-Net (arXiv 2507.07955) on bltkit's own transformer stacks (docs/hnet.md).

Axes: B rows, N bytes, M chunk slots, D0 byte width (encoder, decoder), D1 main width, V 260.

    ids (B, N) --tok_embeddings--> (B, N, D0) --encoder (+ final norm)--> x̂ (B, N, D0)
      router(x̂) -> p, b (B, N)          residual(x̂) -> r (B, N, D0) fp32
      downsample: x̂ at each chunk's first byte -> (B, M, D0), + shared pad -> (B, M, D1)
      main (over chunks, + final norm) -> (B, M, D1)[..., :D0] -> EMA over chunks (B, M, D0)
      upsample: byte t reads its own chunk j(t) -> z̃ (B, N, D0);  y = z̃ * STE(c) + r
      --decoder (+ final norm)--> (B, N, D0) --output--> logits (B, N, V) fp32

The primitives (router, selection, EMA, STE, residual projection, ratio loss) are
``bltkit.nn.chunking``; the stacks are ``bltkit.nn.StackConfig`` blocks. H-Net's reference uses
Mamba-2 layers in the encoder and decoder; bltkit has no Mamba, so they are attention blocks
(sliding-window allowed). Byte positions (RoPE) count bytes in the row; the main network's
positions count chunks in the row. With ``doc_reset`` a document (ending at and including an
EOS) is separate everywhere: attention resets after EOS (over bytes, and over chunks by the
document of each chunk's first byte), the byte after an EOS is a forced chunk start (p = 1),
and the smoothing starts afresh there.

Causal byte by byte: the logits at t depend on bytes <= t only (every step reads the past).

``forward(ids, cache=...)`` continues rows held in an ``HNetCache`` (``new_cache``): the encoder
and decoder step their K/V caches, the router compares with the last byte's state, the main
network steps only for the new chunks, and the smoothing continues from its carried state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from .. import config as cfgio, weights
from ..data.vocab import EOS_ID, check_ids
from ..nn import RMSNorm, StackConfig, rope_angles, transformer_blocks, trunc_normal_
from ..nn.chunking import ResidualProjection, Routing, RoutingModule, combine, downsample, ema_scan, upcast, upsample
from ..nn.masks import document_ids, local_causal_mask, local_self_mask
from .hnet_cache import HNetCache
from .hnet_config import HNetConfig

SLOT_MULTIPLE = 16  # chunk slots a row are the batch's largest count rounded up to this (fewer shapes)


class HNetStack(nn.Module):
    """Pre-norm blocks of one ``StackConfig``, then a final RMSNorm (each H-Net stage ends in one)."""

    def __init__(self, cfg: StackConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = transformer_blocks(cfg)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: Any, cache=None) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, mask, cache.layer(i) if cache is not None else None)
        return self.norm(x)

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()
        self.norm.reset_parameters()


@dataclass
class HNetOutput:
    """``forward(..., return_routing=True)``: the logits and what the router decided."""

    logits: torch.Tensor  # (B, N, V) fp32
    routing: Routing  # p (B, N) fp32, b (B, N) bool
    starts: torch.Tensor  # (B, N) bool: forced chunk starts (position 0, each document's first byte)


def forced_starts(ids: torch.Tensor, doc_reset: bool, prev_eos: Optional[torch.Tensor] = None,
                  first: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, T) bool positions that must open a chunk: the row's first byte and, with ``doc_reset``,
    every byte after an EOS. For a continued row, ``prev_eos`` (B,) says whether the byte before
    position 0 was an EOS and ``first`` (B,) whether position 0 is the row's first byte."""
    b, t = ids.shape
    eos = ids == EOS_ID
    before = torch.zeros(b, 1, dtype=torch.bool, device=ids.device) if prev_eos is None else prev_eos[:, None]
    after_eos = torch.cat([before, eos[:, :-1]], dim=1)  # (B, T)
    s = after_eos if doc_reset else torch.zeros_like(after_eos)
    head = torch.ones(b, dtype=torch.bool, device=ids.device) if first is None else first
    return torch.cat([s[:, :1] | head[:, None], s[:, 1:]], dim=1)


class HNet(weights.Pretrained, nn.Module):
    config_class = HNetConfig  # save_pretrained / from_pretrained: bltkit.weights.Pretrained
    kind_name = "H-Net model"

    def __init__(self, config: HNetConfig):
        super().__init__()
        config.validate()
        self.config = config
        d0 = config.encoder.dim
        self.tok_embeddings = nn.Embedding(config.vocab_size, d0)
        self.encoder = HNetStack(config.encoder)
        self.router = RoutingModule(d0)
        self.residual = ResidualProjection(d0)
        self.main_pad = nn.Parameter(torch.zeros(config.pad_dim)) if config.pad_dim else None
        self.main = HNetStack(config.main)
        self.decoder = HNetStack(config.decoder)
        self.output = nn.Linear(d0, config.vocab_size, bias=False)
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor, validate: bool = True, attn_impl: Optional[str] = None,
                cache: Optional[HNetCache] = None, valid: Optional[torch.Tensor] = None,
                return_routing: bool = False) -> torch.Tensor | HNetOutput:
        """Next-byte logits (B, N, V) fp32 of ``ids`` (B, N); ``return_routing`` adds the router's
        decisions (``HNetOutput``). ``valid`` (B, N) marks real bytes: padding opens no chunk.

        With ``cache`` (``new_cache``), ``ids`` are the next T bytes of each row and ``valid`` a
        prefix of each row (padding leaves the cache as it was). No host sync on that path.
        """
        if cache is not None:
            return self._cached(ids, cache, valid, return_routing)
        if validate:
            if ids.dim() != 2:
                raise ValueError(f"ids must be (batch, bytes), got shape {tuple(ids.shape)}")
            check_ids(ids)
        cfg = self.config
        b, n = ids.shape
        impl = self._impl(ids, attn_impl)
        doc = document_ids(ids) if cfg.doc_reset else torch.zeros_like(ids, dtype=torch.int32)  # (B, N)
        rope = rope_angles(torch.arange(n, device=ids.device), cfg.encoder.head_dim, cfg.encoder.rope_theta)
        mask_e = local_self_mask(doc, cfg.encoder.window, cfg.doc_reset, impl, cfg.local_attention)
        x = self.encoder(self.tok_embeddings(ids), rope, mask_e)  # x̂ (B, N, D0)
        starts = forced_starts(ids, cfg.doc_reset)
        routing = self.router(x, starts=starts, valid=valid)
        # Slots: the largest count (one host read), rounded up so that few shapes occur.
        m = min(n, -(-int(routing.boundary.sum(dim=1).max()) // SLOT_MULTIPLE) * SLOT_MULTIPLE)
        chunks = downsample(x, routing.boundary, max_chunks=max(m, 1))
        cdoc = chunks.select(doc)  # (B, M): a chunk is in its first byte's document
        mpos = torch.arange(chunks.start.shape[1], device=ids.device)
        # A dense chunk mask through SDPA on every device: M changes from batch to batch, and
        # each new length would recompile the FlexAttention kernel.
        mask_m = local_causal_mask(cdoc, cdoc, mpos, mpos, None, cfg.doc_reset)  # (B, 1, M, M)
        rope_m = rope_angles(mpos, cfg.main.head_dim, cfg.main.rope_theta)
        z = self.main(self._widen(chunks.states), rope_m, mask_m)[..., :cfg.encoder.dim]  # (B, M, D0)
        reset = chunks.select(starts) if cfg.doc_reset else None
        zbar = ema_scan(z, chunks.select(routing.prob), reset)  # (B, M, D0) fp32
        y = combine(upsample(zbar, routing.boundary), routing.confidence, self.residual(x))  # (B, N, D0) fp32
        mask_d = mask_e if cfg.decoder.window == cfg.encoder.window else local_self_mask(
            doc, cfg.decoder.window, cfg.doc_reset, impl, cfg.local_attention)
        h = self.decoder(y.to(x.dtype), rope, mask_d)
        logits = upcast(self.output(h))  # (B, N, V) fp32 (fp64 in an fp64 model)
        return HNetOutput(logits, routing, starts) if return_routing else logits

    def _impl(self, ids: torch.Tensor, attn_impl: Optional[str]) -> str:
        impl = attn_impl or self.config.attn_impl
        if impl == "auto":
            impl = "flex" if ids.device.type == "cuda" else "sdpa"
        if impl not in ("sdpa", "flex"):
            raise ValueError(f"attn_impl must be 'sdpa', 'flex' or 'auto', got {impl!r}")
        return impl

    def _widen(self, u: torch.Tensor) -> torch.Tensor:
        """(B, M, D0) -> (B, M, D1): the shared learned vector appended to every chunk."""
        if self.main_pad is None:
            return u
        pad = self.main_pad.to(u.dtype).expand(*u.shape[:-1], -1)
        return torch.cat([u, pad], dim=-1)

    # ---- cached continuation --------------------------------------------------------------------
    def new_cache(self, batch: int, max_len: int) -> HNetCache:
        """An empty cache for ``batch`` rows of up to ``max_len`` bytes (preallocated)."""
        return HNetCache(self, batch, max_len)

    def _cached(self, ids: torch.Tensor, cache: HNetCache, valid: Optional[torch.Tensor],
                return_routing: bool) -> torch.Tensor | HNetOutput:
        cfg = self.config
        bsz, t = ids.shape
        valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else valid
        eos = (ids == EOS_ID) & valid
        steps = torch.arange(t, device=ids.device)
        pos = torch.where(valid, cache.length[:, None] + steps, -1)  # (B, T) byte positions
        e = eos.to(torch.int64)
        doc = cache.n_docs[:, None] + torch.cumsum(e, dim=1) - e  # (B, T)
        rope = rope_angles(pos.clamp(min=0), cfg.encoder.head_dim, cfg.encoder.rope_theta)
        x = self.encoder(self.tok_embeddings(ids), rope, cache.enc.begin(pos, doc), cache.enc)  # (B, T, D0)
        starts = forced_starts(ids, cfg.doc_reset, prev_eos=cache.prev_eos, first=cache.length == 0)
        routing = self.router(x, starts=starts, prev=cache.last_h.to(x.dtype), valid=valid)
        chunks = downsample(x, routing.boundary, max_chunks=t)  # the new chunks, (B, T, D0) slots
        cpos = torch.where(chunks.mask, cache.n_chunks[:, None] + steps, -1)  # chunk positions
        cdoc = chunks.select(doc)
        rope_m = rope_angles(cpos.clamp(min=0), cfg.main.head_dim, cfg.main.rope_theta)
        z = self.main(self._widen(chunks.states), rope_m, cache.main.begin(cpos, cdoc), cache.main)
        z = z[..., :cfg.encoder.dim]  # (B, T, D0)
        reset = chunks.select(starts) if cfg.doc_reset else None
        zbar = ema_scan(z, chunks.select(routing.prob), reset, initial=cache.zbar)  # (B, T, D0) fp32
        y = combine(upsample(zbar, routing.boundary, initial=cache.zbar), routing.confidence, self.residual(x))
        h = self.decoder(y.to(x.dtype), rope, cache.dec.begin(pos, doc), cache.dec)
        logits = upcast(self.output(h))  # (B, T, V)
        cache.advance(valid, eos, x, zbar, chunks.counts)
        return HNetOutput(logits, routing, starts) if return_routing else logits

    # ---- parameters -----------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, seed: Optional[int] = None) -> None:
        """bltkit's stack init (trunc-normal sigma = dim^-1/2 for the embedding, head and every
        block, as ``ByteLM``), plus H-Net's rules for the chunking parts: router projections the
        identity, residual weight zero (bias: PyTorch's default), width padding zero.
        Deterministic in ``init_seed``; the global RNG is left as it was."""
        dev = next(self.parameters()).device
        devices = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=dev.type if dev.type != "cpu" else "cuda"):
            torch.manual_seed(self.config.init_seed if seed is None else seed)
            d0 = self.config.encoder.dim
            trunc_normal_(self.tok_embeddings.weight, d0 ** -0.5)
            self.encoder.reset_parameters()
            self.router.reset_parameters()
            self.residual.reset_parameters()
            if self.main_pad is not None:
                self.main_pad.zero_()
            self.main.reset_parameters()
            self.decoder.reset_parameters()
            trunc_normal_(self.output.weight, d0 ** -0.5)

    def lr_multiplier(self, name: str) -> float:
        """The learning-rate factor of parameter ``name``: the main network and its padding get
        the main stage's, every other parameter the outer stage's (``HNetConfig``)."""
        outer, main = self.config.stage_lr_multipliers
        return main if name.startswith(("main.", "main_pad")) else outer

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count; ``exclude_embeddings`` drops the byte embedding table (as the other kinds)."""
        skip = {id(self.tok_embeddings.weight)} if exclude_embeddings else set()
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)


__all__ = ["HNet", "HNetOutput", "HNetStack", "forced_starts"]
