"""Global latent transformer over patches (blt-reference §5; BLT paper §3.1).

Axes: B batch, P patches, G global width. No final norm: the raw residual stream goes to the
decoder (pitfall 11). RoPE positions count patches.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..nn import TransformerBlock, trunc_normal_
from ..nn.kv_cache import KVCache
from .config import BLTConfig


class GlobalTransformer(nn.Module):
    def __init__(self, cfg: BLTConfig):
        super().__init__()
        g = cfg.global_
        self.cfg = cfg
        # k*De -> G only when the widths differ (§5; pitfall 20).
        self.token_embedding_projection: Optional[nn.Linear] = (
            nn.Linear(cfg.global_input_dim, g.dim, bias=False) if cfg.global_projection else None
        )
        self.layers = nn.ModuleList(
            TransformerBlock(g.dim, g.n_heads, g.hidden, g.n_kv_heads, g.head_dim, cfg.norm_eps) for _ in range(g.n_layers)
        )

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: Any,
                cache: Optional[KVCache] = None) -> torch.Tensor:
        """(B, P, k*De) patches -> (B, P, G). With ``cache`` (a ``StackCache`` over patch slots)
        ``x`` holds only new patches and attention reads the cached ones too."""
        h = self.token_embedding_projection(x) if self.token_embedding_projection is not None else x  # (B, P, G)
        for i, layer in enumerate(self.layers):
            h = layer(h, rope, mask, cache.layer(i) if cache is not None else None)
        return h

    def reset_parameters(self) -> None:
        if self.token_embedding_projection is not None:
            trunc_normal_(self.token_embedding_projection.weight, self.cfg.global_input_dim ** -0.5)
        for layer in self.layers:
            layer.reset_parameters()
