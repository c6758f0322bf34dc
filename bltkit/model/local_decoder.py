"""Local decoder: byte states + patch states -> next-byte logits (docs/reference-semantics.md §11).

Axes: B batch, N bytes, P patches, k vectors a patch, D decoder width, G global width.
Its input is the encoder's final byte states (no embedding of its own). Cross-attention comes
*before* each block (the encoder's comes after); byte i reads the patch before its target's patch
through the decoder cross mask (docs/reference-semantics.md §5).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..nn import CrossAttention, RMSNorm, StackConfig, transformer_blocks, trunc_normal_
from .config import CrossAttentionConfig


class LocalDecoder(nn.Module):
    """The byte stack ``cfg`` reading ``global_dim``-wide patch states through the cross steps of
    ``cross``, then the final norm and the ``vocab_size`` head."""

    def __init__(self, cfg: StackConfig, cross: CrossAttentionConfig, global_dim: int, vocab_size: int):
        super().__init__()
        self.cfg, self.cross, self.global_dim = cfg, cross, global_dim
        self.patch_embedding_projection = nn.Linear(global_dim, cfg.dim * cross.k, bias=False)  # G -> k*D
        self.cross_attn_layers = nn.ModuleList(
            CrossAttention(cfg.dim, cross.n_heads, cfg.norm_eps, cross.empty_rows)
            for _ in range(cross.decoder_steps(cfg.n_layers))
        )
        self.layers = transformer_blocks(cfg)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, vocab_size, bias=False)

    def project_patches(self, g: torch.Tensor) -> torch.Tensor:
        """(B, P, G) -> (B, P*k, D): row p*k+j is slice j of patch p (docs/reference-semantics.md §9)."""
        b, p, _ = g.shape
        return self.patch_embedding_projection(g).reshape(b, p * self.cross.k, -1)

    def forward(
        self,
        h: torch.Tensor,  # (B, N, D) encoder byte states
        patches: torch.Tensor,  # (B, P*k, D) projected global states
        rope: tuple[torch.Tensor, torch.Tensor],
        local_mask: Any,
        cross_mask: Any,
        cache: Any = None,  # a ``BLTCache`` (bltkit.model.cache) when stepping incrementally
        gate: Optional[torch.Tensor] = None,  # (B, N): scales every cross update (learned boundaries)
    ) -> torch.Tensor:
        """Logits (B, N, V) fp32. With ``cache``, ``h`` holds the step's bytes and ``patches``
        only the patches new to the global model this step: their keys join the cached ones
        (``cache.dec_cross``), which ``cross_mask`` indexes by patch slot. ``gate``: a per-byte
        factor on what the cross steps add (a straight-through confidence, 1 forward)."""
        g = gate[..., None] if gate is not None else None  # (B, N, 1)
        for i, layer in enumerate(self.layers):
            if i == 0 or self.cross.decoder_all_layers:
                kv_cache = cache.dec_cross.layer(i) if cache is not None else None
                h = h + self.cross_attn_layers[i](h, patches, cross_mask, kv_cache, g)  # 2h + gate * wo(attn)
            h = layer(h, rope, local_mask, cache.dec.layer(i) if cache is not None else None)
        out = self.output(self.norm(h))
        return out.to(torch.promote_types(out.dtype, torch.float32))  # (B, N, V) fp32 logits (fp64 stays)

    def reset_parameters(self) -> None:
        trunc_normal_(self.patch_embedding_projection.weight, self.global_dim ** -0.5)
        trunc_normal_(self.output.weight, self.cfg.dim ** -0.5)
        self.norm.reset_parameters()
        for m in [*self.cross_attn_layers, *self.layers]:
            m.reset_parameters()
