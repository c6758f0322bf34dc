"""Local encoder: bytes -> byte states and patch vectors (docs/reference-semantics.md §9; BLT paper §3.2).

Axes: B batch, N bytes, P patches, k vectors a patch, D encoder width.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..nn import CrossAttention, StackConfig, transformer_blocks, trunc_normal_
from .config import CrossAttentionConfig


def pool_patches(h: torch.Tensor, patch_ids: torch.Tensor, n_patches: int, mode: str) -> torch.Tensor:
    """Reduce byte states into their patches. (B, N, D) -> (B, P, D); an empty patch gives 0.

    ``scatter_reduce`` onto zeros with ``include_self=False`` leaves untouched rows at 0, never
    -inf (docs/reference-semantics.md, "Cross-attention and pooling"). A byte with id ``P`` (a
    cached step's byte of no patch asked for) pools into an extra row that is dropped.
    """
    b, _, d = h.shape
    if n_patches == 1:  # a decode step's closing patch: a masked reduction over the byte slots
        return _pool_one(h, patch_ids == 0, mode)
    reduce = {"max": "amax", "min": "amin", "mean": "mean"}[mode]
    out = h.new_zeros(b, n_patches + 1, d)
    out = out.scatter_reduce(1, patch_ids[..., None].expand(-1, -1, d), h, reduce=reduce, include_self=False)
    return out[:, :n_patches]


def _pool_one(h: torch.Tensor, inside: torch.Tensor, mode: str) -> torch.Tensor:
    """``pool_patches`` for one patch, its bytes ``inside`` (B, N): (B, N, D) -> (B, 1, D), 0 when
    empty. The same values as the scatter; compiled, it is one fused reduction, where inductor
    runs ``scatter_reduce`` as an eager call that first fills its target with a scatter."""
    m = inside[..., None]  # (B, N, 1)
    if mode == "mean":
        total = torch.where(m, h, 0).sum(dim=1, keepdim=True)
        return total / m.sum(dim=1, keepdim=True).clamp(min=1).to(h.dtype)
    fill = float("-inf") if mode == "max" else float("inf")
    red = torch.where(m, h, fill)
    red = red.amax(dim=1, keepdim=True) if mode == "max" else red.amin(dim=1, keepdim=True)
    return torch.where(m.any(dim=1, keepdim=True), red, 0)


class LocalEncoder(nn.Module):
    """The byte stack ``cfg`` with its byte embedding and the cross steps of ``cross``."""

    def __init__(self, cfg: StackConfig, cross: CrossAttentionConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.cross = cfg, cross
        self.tok_embeddings = nn.Embedding(vocab_size, cfg.dim)
        self.layers = transformer_blocks(cfg)
        # Pooled patch vectors are projected to k query vectors a patch (docs/reference-semantics.md §9).
        self.patch_embedding_projection = nn.Linear(cfg.dim, cfg.dim * cross.k, bias=False)
        self.cross_attn_layers = nn.ModuleList(
            CrossAttention(cfg.dim, cross.n_heads, cfg.norm_eps, cross.empty_rows)
            for _ in range(cross.encoder_steps(cfg.n_layers))
        )

    def forward(
        self,
        x: torch.Tensor,  # (B, N, D) byte + hash embeddings
        rope: tuple[torch.Tensor, torch.Tensor],
        local_mask: Any,
        cross_mask: Any,
        patch_ids: torch.Tensor,  # (B, N): the patch of each byte (cached: of each byte slot, S)
        n_patches: int,
        cache: Any = None,  # a ``BLTCache`` (bltkit.model.cache) when stepping incrementally
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Byte states (B, N, D) and patch vectors (B, P*k, D).

        With ``cache``, ``x`` holds only the step's new bytes: self-attention reads the cached keys
        (``cache.enc``), pooling reads every cached byte state (``cache.byte_states``) and the
        cross step attends over the cached byte keys (``cache.enc_cross``); the patches asked for
        are the step's closing ones, over the cache's byte slots.
        """
        c = self.cross
        h, patch = x, None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h, rope, local_mask, cache.enc.layer(i) if cache is not None else None)  # (B, N, D)
            if not (c.encoder_all_layers or i == last):
                continue
            j = i if c.encoder_all_layers else 0
            patch = self.cross_step(j, h, patch, cross_mask, patch_ids, n_patches, cache)
        return h, patch

    def byte_layers(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], local_mask: Any,
                    cache: Any = None) -> torch.Tensor:
        """The byte layers alone, (B, N, D) -> (B, N, D): for a model that places its patches
        after them (learned boundaries; its cross step is one, ``cross_step(0, ...)``)."""
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h, rope, local_mask, cache.enc.layer(i) if cache is not None else None)
        return h

    def cross_step(self, j: int, h: torch.Tensor, patch: Any, cross_mask: Any, patch_ids: torch.Tensor,
                   n_patches: int, cache: Any = None) -> torch.Tensor:
        """Cross step j after its layer: patch vectors (B, P*k, D) attend to the byte states ``h``.

        Queries are pooled once (reference) or at every step (HF, repool_each_layer), then
        accumulate (docs/reference-semantics.md, "Cross-attention and pooling"); ``patch`` is the
        previous step's vectors (None before the first).
        """
        c = self.cross
        if patch is None or c.repool_each_layer:
            states = h if cache is None else cache.byte_states(j, h)  # (B, N | S, D)
            pooled = pool_patches(states, patch_ids, n_patches, c.pooling)  # (B, P, D)
            patch = self.patch_embedding_projection(pooled).reshape(h.shape[0], n_patches * c.k, -1)  # (B, P*k, D)
        kv_cache = cache.enc_cross.layer(j) if cache is not None else None
        return patch + self.cross_attn_layers[j](patch, h, cross_mask, kv_cache)  # 2*patch + wo(attn)

    def reset_parameters(self) -> None:
        d = self.cfg.dim
        trunc_normal_(self.tok_embeddings.weight, d ** -0.5)
        trunc_normal_(self.patch_embedding_projection.weight, d ** -0.5)
        for m in [*self.layers, *self.cross_attn_layers]:
            m.reset_parameters()
