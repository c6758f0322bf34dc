"""Typed configuration of the Byte Latent Transformer, one dataclass per component.

The three stacks (``encoder``, ``global_model``: the latent global transformer, ``decoder``) are
``bltkit.nn.StackConfig``s, the config every stack in bltkit shares (the entropy model and the
byte LM extend it); the rest is the BLT's own: hash n-grams, cross-attention, the vocabulary.
Defaults follow the reference (facebookresearch/blt) where it and Hugging Face differ
(docs/architecture.md, "Reference vs Hugging Face"); the HF behaviours are options
(``window: null``, ``doc_reset: false``, ``global_model.doc_reset: false``,
``cross_attn.empty_rows: uniform``, ``cross_attn.repool_each_layer``). Derived sizes (FFN widths,
head dims, the global input width) are properties here and in ``StackConfig``, nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..data.vocab import VOCAB_SIZE
from ..nn.stack import StackConfig
from ..nn.masks import LocalAttention


@dataclass
class HashEmbeddingConfig:
    """Hash n-gram byte embeddings (docs/reference-semantics.md §6; paper §3.2.1)."""

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
class CrossAttentionConfig:
    """Cross-attention between bytes and patches (docs/reference-semantics.md §9, §11)."""

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

    def encoder_steps(self, encoder_layers: int) -> int:
        """Cross steps in the encoder: one after every layer, or one after the last."""
        return encoder_layers if self.encoder_all_layers else 1

    def decoder_steps(self, decoder_layers: int) -> int:
        """Cross steps in the decoder: one before every layer, or one before the first."""
        return decoder_layers if self.decoder_all_layers else 1


def _local_stack(n_layers: int) -> StackConfig:
    return StackConfig(dim=256, n_layers=n_layers, n_heads=4, window=512, doc_reset=True)


@dataclass
class BLTConfig:
    """The whole model. ``encoder``/``decoder`` widths must match (the decoder reads encoder states).

    ``encoder`` and ``decoder``: byte-level stacks, sliding-window attention that resets after EOS
    (a YAML stack that leaves out ``window`` has none: the shipped configs say 512).
    ``global_model``: the latent transformer over patches; no window, no final norm, block-causal
    (``doc_reset``) or causal."""

    # Keys of earlier bltkit versions, named in the error a stale config file gets.
    RENAMED: ClassVar[dict[str, str]] = {
        "global": "'global_model' (with 'attention: block_causal|causal' as 'doc_reset: true|false')",
        "global_": "'global_model'",
        "norm_eps": "a field of each stack: 'encoder.norm_eps', 'global_model.norm_eps', 'decoder.norm_eps'",
    }

    vocab_size: int = VOCAB_SIZE
    hash: HashEmbeddingConfig = field(default_factory=HashEmbeddingConfig)
    encoder: StackConfig = field(default_factory=lambda: _local_stack(1))
    global_model: StackConfig = field(default_factory=lambda: StackConfig(dim=512, n_layers=2, n_heads=8))
    decoder: StackConfig = field(default_factory=lambda: _local_stack(2))
    cross_attn: CrossAttentionConfig = field(default_factory=CrossAttentionConfig)
    attn_impl: Literal["sdpa", "flex", "auto"] = "auto"  # auto: flex on CUDA, sdpa elsewhere
    # Byte-level self-attention: "blocked" costs the window on every path; "dense" is the N x N
    # mask, the reference kept to check and measure against (bltkit.nn.masks).
    local_attention: LocalAttention = "blocked"
    # Where patch boundaries come from: "given" (patch_lengths from a patcher outside the model,
    # bltkit.patching) or "learned" (the model's own router after the encoder's byte layers,
    # trained end to end: bltkit.model.learned, docs/patching.md "Learned boundaries").
    boundaries: Literal["given", "learned"] = "given"
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
        if self.global_model.window is not None:
            raise ValueError(f"global_model.window must be null, got {self.global_model.window}: the global "
                             f"model attends to every earlier patch")
        for part in (self.hash, self.encoder, self.global_model, self.decoder, self.cross_attn):
            part.validate()
        if self.attn_impl == "flex" and self.cross_attn.empty_rows == "uniform":
            raise ValueError("cross_attn.empty_rows 'uniform' (HF) needs attn_impl 'sdpa'")
        if self.boundaries == "learned" and self.cross_attn.encoder_all_layers:
            raise ValueError("boundaries 'learned' needs cross_attn.encoder_all_layers: false: the router reads the "
                             "encoder's byte states after its last layer, so the patches exist only then, after "
                             "the cross step an all-layers encoder would take after its first layer")

    # ---- derived sizes: one place -------------------------------------------------------------
    @property
    def global_input_dim(self) -> int:
        """Width of a patch entering the global model: k encoder vectors side by side (docs/reference-semantics.md §1)."""
        return self.encoder.dim * self.cross_attn.k

    @property
    def global_projection(self) -> bool:
        """The global input projection exists only when widths differ (docs/reference-semantics.md §10)."""
        return self.global_input_dim != self.global_model.dim

    @property
    def n_encoder_cross(self) -> int:
        return self.cross_attn.encoder_steps(self.encoder.n_layers)

    @property
    def n_decoder_cross(self) -> int:
        return self.cross_attn.decoder_steps(self.decoder.n_layers)
