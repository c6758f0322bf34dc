"""Global latent transformer over patches (docs/reference-semantics.md §10; BLT paper §3.1).

Axes: B batch, P patches, G global width. No final norm: the raw residual stream goes to the
decoder (docs/reference-semantics.md §10). RoPE positions count patches.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..nn import StackConfig, transformer_blocks, trunc_normal_
from ..nn.kv_cache import KVCache


class GlobalTransformer(nn.Module):
    """The stack ``cfg`` over ``input_dim``-wide patch vectors (k*De in the BLT, the byte LM's own
    width in ``ByteLM``)."""

    def __init__(self, cfg: StackConfig, input_dim: int):
        super().__init__()
        self.cfg, self.input_dim = cfg, input_dim
        # input_dim -> G only when the widths differ, as in the reference (docs/architecture.md,
        # "Data flow"), so converted checkpoints have exactly its tensors.
        self.token_embedding_projection: Optional[nn.Linear] = (
            nn.Linear(input_dim, cfg.dim, bias=False) if input_dim != cfg.dim else None
        )
        self.layers = transformer_blocks(cfg)

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
            trunc_normal_(self.token_embedding_projection.weight, self.input_dim ** -0.5)
        for layer in self.layers:
            layer.reset_parameters()
