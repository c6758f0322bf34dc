"""Typed configuration of the Byte Latent Transformer, one dataclass per component.

Defaults follow the reference (facebookresearch/blt) where it and Hugging Face differ
(blt-reference §11.3); the HF behaviours are options (``window: null``, ``doc_reset: false``,
``global.attention: causal``, ``cross_attn.empty_rows: uniform``, ``cross_attn.repool_each_layer``).
Derived sizes (FFN widths, head dims, the global input width) are properties here and nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ..data.vocab import VOCAB_SIZE
from ..nn.ffn import ffn_hidden_dim


@dataclass
class HashEmbeddingConfig:
    """Hash n-gram byte embeddings (blt-reference §4.1; paper §3.2.1)."""

    group_sizes: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 7, 8])  # the n of each n-gram
    n_functions: int = 1  # hash functions, each with its own prime
    vocab: int = 500002  # rows of each table

    def validate(self) -> None:
        if any(n < 1 for n in self.group_sizes):
            raise ValueError(f"hash group_sizes must be >= 1, got {self.group_sizes}")
        if self.n_functions < 0 or self.vocab < 1:
            raise ValueError(f"hash n_functions {self.n_functions} / vocab {self.vocab} out of range")

    @property
    def n_tables(self) -> int:
        return self.n_functions * len(self.group_sizes)


@dataclass
class StackConfig:
    """A stack of transformer blocks (fields shared by the encoder, global model and decoder)."""

    dim: int = 256
    n_layers: int = 1
    n_heads: int = 4
    n_kv_heads: Optional[int] = None
    ffn_dim_multiplier: float = 1.0
    ffn_hidden: Optional[int] = None  # explicit FFN width; default from the reference rounding
    rope_theta: float = 500000.0

    def validate(self) -> None:
        if self.dim < 1 or self.n_layers < 0 or self.n_heads < 1:
            raise ValueError(f"dim {self.dim}, n_layers {self.n_layers}, n_heads {self.n_heads} out of range")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden(self) -> int:
        return self.ffn_hidden or ffn_hidden_dim(self.dim, self.ffn_dim_multiplier)


@dataclass
class LocalConfig(StackConfig):
    """A local (byte-level) stack: sliding-window attention that resets after EOS (§4.3)."""

    window: Optional[int] = 512  # keys in (q - window, q]; null = unbounded (HF)
    doc_reset: bool = True  # attention stops at EOS (reference); false = plain causal (HF)

    def validate(self) -> None:
        super().validate()
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1 or null, got {self.window}")


@dataclass
class GlobalConfig(StackConfig):
    """The latent transformer over patches (§5): no final norm."""

    dim: int = 512
    n_layers: int = 2
    n_heads: int = 8
    attention: Literal["causal", "block_causal"] = "block_causal"  # block_causal resets after EOS patches


@dataclass
class CrossAttentionConfig:
    """Cross-attention between bytes and patches (§4.4, §6)."""

    k: int = 2  # query vectors per patch (encoder) / key vectors per patch (decoder)
    n_heads: int = 4
    encoder_all_layers: bool = False  # a cross step after every encoder layer, else after the last
    decoder_all_layers: bool = True  # a cross step before every decoder layer, else before the first
    pooling: Literal["max", "mean", "min"] = "max"  # initial patch queries, pooled from byte states
    empty_rows: Literal["zero", "uniform"] = "zero"  # a patch with no bytes: 0 (reference) or mean of all keys (HF)
    repool_each_layer: bool = False  # HF re-pools at every encoder cross step; the reference pools once

    def validate(self) -> None:
        if self.k < 1 or self.n_heads < 1:
            raise ValueError(f"cross_attn k {self.k} and n_heads {self.n_heads} must be >= 1")


@dataclass
class BLTConfig:
    """The whole model. ``encoder``/``decoder`` widths must match (the decoder reads encoder states)."""

    vocab_size: int = VOCAB_SIZE
    norm_eps: float = 1e-5
    hash: HashEmbeddingConfig = field(default_factory=HashEmbeddingConfig)
    encoder: LocalConfig = field(default_factory=lambda: LocalConfig(n_layers=1))
    global_: GlobalConfig = field(default_factory=GlobalConfig)
    decoder: LocalConfig = field(default_factory=lambda: LocalConfig(n_layers=2))
    cross_attn: CrossAttentionConfig = field(default_factory=CrossAttentionConfig)
    attn_impl: Literal["sdpa", "flex", "auto"] = "auto"  # auto: flex on CUDA, sdpa elsewhere
    init_seed: int = 42

    def validate(self) -> None:
        if self.vocab_size != VOCAB_SIZE:
            raise ValueError(f"vocab_size must be {VOCAB_SIZE} (bytes + 4 specials), got {self.vocab_size}")
        if self.encoder.dim != self.decoder.dim:
            raise ValueError(
                f"encoder.dim {self.encoder.dim} != decoder.dim {self.decoder.dim}: the decoder reads the encoder's byte states"
            )
        if self.cross_attn.n_heads > self.encoder.dim:
            raise ValueError(f"cross_attn.n_heads {self.cross_attn.n_heads} exceeds encoder.dim {self.encoder.dim}")
        if self.encoder.n_layers < 1:
            raise ValueError("encoder.n_layers must be >= 1 (the cross step follows an encoder layer)")
        if self.decoder.n_layers < 1:
            raise ValueError("decoder.n_layers must be >= 1 (the cross step precedes a decoder layer)")
        if self.attn_impl == "flex" and self.cross_attn.empty_rows == "uniform":
            raise ValueError("cross_attn.empty_rows 'uniform' (HF) needs attn_impl 'sdpa'")

    # ---- derived sizes: one place -------------------------------------------------------------
    @property
    def global_input_dim(self) -> int:
        """Width of a patch entering the global model: k encoder vectors side by side (§0 step 7)."""
        return self.encoder.dim * self.cross_attn.k

    @property
    def global_projection(self) -> bool:
        """The global input projection exists only when widths differ (§5)."""
        return self.global_input_dim != self.global_.dim

    @property
    def n_encoder_cross(self) -> int:
        return self.encoder.n_layers if self.cross_attn.encoder_all_layers else 1

    @property
    def n_decoder_cross(self) -> int:
        return self.decoder.n_layers if self.cross_attn.decoder_all_layers else 1
