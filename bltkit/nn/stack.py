"""The one config of a stack of pre-norm transformer blocks, and the blocks it builds.

Every stack in bltkit is described by ``StackConfig``: the BLT's local encoder, latent global
transformer and local decoder (``bltkit.model.config.BLTConfig.encoder / global_model /
decoder``), the entropy model (``EntropyModelConfig`` extends it) and the byte-level LM
(``ByteLMConfig`` extends it). So width, depth, heads, FFN width, the attention window, the reset
at EOS and RoPE mean the same thing, with the same checks, everywhere; "the same backbone" is the
same config as well as the same code.

- ``window``: a query at position q sees keys in ``(q - window, q]``; None is unbounded. The BLT's
  local stacks and the entropy model use 512 (the reference); the global model has none.
- ``doc_reset``: attention stops after an EOS. Over bytes a byte after an EOS sees nothing before
  it; over patches (the global model: block-causal) a patch after one holding an EOS does not
  see earlier patches. False is plain causal attention (Hugging Face's BLT).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from torch import nn

from .block import TransformerBlock
from .ffn import ffn_hidden_dim


@dataclass
class StackConfig:
    # Keys of earlier bltkit versions, named in the error a stale config file gets.
    RENAMED: ClassVar[dict[str, str]] = {"attention": "'doc_reset' (true for block_causal, false for causal)"}

    dim: int = 256
    n_layers: int = 1
    n_heads: int = 4
    n_kv_heads: Optional[int] = None  # grouped-query attention; None: one K/V head a query head
    ffn_dim_multiplier: float = 1.0
    ffn_hidden: Optional[int] = None  # explicit FFN width; None: the reference rounding of dim
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    window: Optional[int] = None  # keys in (q - window, q]; None: unbounded
    doc_reset: bool = True  # attention stops after EOS (block-causal over patches); false: plain causal

    def validate(self) -> None:
        if self.dim < 1 or self.n_layers < 0 or self.n_heads < 1:
            raise ValueError(f"dim {self.dim}, n_layers {self.n_layers}, n_heads {self.n_heads} out of range")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} (dim / n_heads) must be even for RoPE")
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.ffn_hidden is not None and self.ffn_hidden < 1:
            raise ValueError(f"ffn_hidden must be >= 1 or null, got {self.ffn_hidden}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1 or null, got {self.window}")
        if not self.ffn_dim_multiplier > 0 or not self.norm_eps > 0 or not self.rope_theta > 0:
            raise ValueError(f"ffn_dim_multiplier {self.ffn_dim_multiplier}, norm_eps {self.norm_eps} and "
                             f"rope_theta {self.rope_theta} must be positive")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden(self) -> int:
        """The SwiGLU width: ``ffn_hidden``, else the reference's rounding (512 -> 1536, 768 -> 2048)."""
        return self.ffn_hidden or ffn_hidden_dim(self.dim, self.ffn_dim_multiplier)


def transformer_blocks(cfg: StackConfig) -> nn.ModuleList:
    """``cfg.n_layers`` pre-norm blocks of the stack's sizes (parameter names ``{i}.attention.wq`` ...)."""
    return nn.ModuleList(
        TransformerBlock(cfg.dim, cfg.n_heads, cfg.hidden, cfg.n_kv_heads, cfg.head_dim, cfg.norm_eps)
        for _ in range(cfg.n_layers)
    )
