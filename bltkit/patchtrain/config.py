"""Typed configuration of ``ByteLM``, the byte-level LM on BLT's global-transformer backbone.

The backbone's fields are BLT's ``GlobalConfig`` (``bltkit.model.config``): the same stack
config, so "the same block, RoPE, norm and init" is one implementation (patch-training.md, "What
on the same backbone means"). ``as_blt_config`` builds the BLTConfig whose ``GlobalTransformer``
ByteLM reuses: encoder width = global width and k = 1, so no input projection exists (blt-reference
§5, pitfall 20). Attention is causal; ``doc_reset`` resets it after an EOS (block-causal, §5).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, Optional

from .. import config as cfgio
from ..data.vocab import VOCAB_SIZE
from ..model.config import BLTConfig, CrossAttentionConfig, GlobalConfig, HashEmbeddingConfig, LocalConfig


@dataclass
class ByteLMConfig:
    vocab_size: int = VOCAB_SIZE
    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: Optional[int] = None
    ffn_dim_multiplier: float = 1.0
    ffn_hidden: Optional[int] = None
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5
    doc_reset: bool = True  # attention stops after EOS (block-causal); false = plain causal
    attn_impl: Literal["sdpa", "flex", "auto"] = "auto"  # auto: flex on CUDA with doc_reset, sdpa elsewhere
    init_seed: int = 42

    def validate(self) -> None:
        if self.vocab_size != VOCAB_SIZE:
            raise ValueError(f"vocab_size must be {VOCAB_SIZE} (bytes + 4 specials), got {self.vocab_size}")
        self.global_config().validate()

    def global_config(self) -> GlobalConfig:
        return GlobalConfig(dim=self.dim, n_layers=self.n_layers, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
                            ffn_dim_multiplier=self.ffn_dim_multiplier, ffn_hidden=self.ffn_hidden,
                            rope_theta=self.rope_theta,
                            attention="block_causal" if self.doc_reset else "causal")

    def as_blt_config(self) -> BLTConfig:
        """A BLTConfig whose global transformer is this backbone (and needs no input projection)."""
        local = LocalConfig(dim=self.dim, n_layers=1, n_heads=1)
        return BLTConfig(vocab_size=self.vocab_size, norm_eps=self.norm_eps, hash=HashEmbeddingConfig(),
                         encoder=local, global_=self.global_config(), decoder=local,
                         cross_attn=CrossAttentionConfig(k=1, n_heads=1), attn_impl="sdpa",
                         init_seed=self.init_seed)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden(self) -> int:
        return self.global_config().hidden


def bytelm_config_from_dict(data: dict, source: Optional[str] = None) -> ByteLMConfig:
    return cfgio.from_dict(ByteLMConfig, data, source=source)  # validates


def load_bytelm_config(name_or_path: str | os.PathLike, overrides: Optional[list[str]] = None) -> ByteLMConfig:
    """A ByteLM config from a YAML path or a shipped name under ``configs/bytelm/`` (``tiny``)."""
    data, p = cfgio.read_config(name_or_path, "bytelm", overrides)
    return bytelm_config_from_dict(data, source=str(p))
