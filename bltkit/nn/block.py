"""The pre-norm transformer block every bltkit stack uses (docs/reference-semantics.md §7):
``h = x + attention(attention_norm(x))``; ``out = h + feed_forward(ffn_norm(h))``.
Parameter names follow the reference so its checkpoints import by name."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .attention import KVCacheLike, SelfAttention
from .ffn import SwiGLU
from .norm import RMSNorm


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, ffn_hidden: int, n_kv_heads: Optional[int] = None,
                 head_dim: Optional[int] = None, norm_eps: float = 1e-5):
        super().__init__()
        self.attention_norm = RMSNorm(dim, norm_eps)
        self.attention = SelfAttention(dim, n_heads, n_kv_heads, head_dim)
        self.ffn_norm = RMSNorm(dim, norm_eps)
        self.feed_forward = SwiGLU(dim, ffn_hidden)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: Any = None,
                kv_cache: Optional[KVCacheLike] = None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, mask, kv_cache)
        return h + self.feed_forward(self.ffn_norm(h))

    def reset_parameters(self) -> None:
        self.attention_norm.reset_parameters()
        self.ffn_norm.reset_parameters()
        self.attention.reset_parameters()
        self.feed_forward.reset_parameters()
