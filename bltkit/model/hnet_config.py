"""Typed configuration of the ``hnet`` model kind: a 1-stage H-Net on bltkit's stacks (docs/hnet.md).

Three ``bltkit.nn.StackConfig``s (the config every bltkit stack shares): ``encoder`` and
``decoder`` over bytes (width D0; a sliding window is allowed), ``main`` over chunks (width D1 >=
D0, no window). ``chunking`` holds the ratio loss's target (bytes a chunk, N > 1) and weight
(alpha). ``lr_multipliers`` are the per-stage learning-rate factors ``[outer, main]``: the outer
one for the embedding, encoder, router, residual projection, decoder and head, the main one for
the main network and the width padding it reads; left out, they come from H-Net's rule
(arXiv 2507.07955, Eq. 11) at the target N: ``[sqrt(4.6 * D1 / D0), sqrt(4.6 / N)]``.

Derived values (the multipliers, the padding width) are properties here, nowhere else.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal, Optional

from .. import config as cfgio
from ..data.vocab import VOCAB_SIZE
from ..nn.masks import LocalAttention
from ..nn.stack import StackConfig

# Bytes a token of GPT-2's tokenizer on FineWeb-Edu: the reference point of H-Net's LR rule (Eq. 11).
GPT_BYTES_PER_TOKEN = 4.6


@dataclass
class ChunkingConfig:
    """The ratio loss (arXiv 2507.07955 §2.2.3): ``target_ratio`` N bytes a chunk, weight alpha."""

    target_ratio: float = 4.0
    ratio_loss_weight: float = 0.03

    def validate(self) -> None:
        if not (math.isfinite(self.target_ratio) and self.target_ratio > 1):
            raise ValueError(f"chunking.target_ratio must be a number of bytes a chunk > 1 (the ratio loss aims at "
                             f"1/N of the bytes opening a chunk), got {self.target_ratio}")
        if not (math.isfinite(self.ratio_loss_weight) and self.ratio_loss_weight >= 0):
            raise ValueError(f"chunking.ratio_loss_weight must be a finite number >= 0, got {self.ratio_loss_weight}")


def _byte_stack(n_layers: int) -> StackConfig:
    return StackConfig(dim=64, n_layers=n_layers, n_heads=4, window=512, doc_reset=True)


@dataclass
class HNetConfig:
    vocab_size: int = VOCAB_SIZE
    encoder: StackConfig = field(default_factory=lambda: _byte_stack(2))
    main: StackConfig = field(default_factory=lambda: StackConfig(dim=128, n_layers=2, n_heads=4))
    decoder: StackConfig = field(default_factory=lambda: _byte_stack(2))
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    lr_multipliers: Optional[list[float]] = None  # [outer, main]; None: H-Net's rule (module docstring)
    attn_impl: Literal["sdpa", "flex", "auto"] = "auto"  # auto: flex on CUDA, sdpa elsewhere
    local_attention: LocalAttention = "blocked"  # byte-level attention (bltkit.nn.masks)
    init_seed: int = 42

    def validate(self) -> None:
        if self.vocab_size != VOCAB_SIZE:
            raise ValueError(f"vocab_size must be {VOCAB_SIZE} (256 bytes + 4 specials), got {self.vocab_size}")
        for part in (self.encoder, self.main, self.decoder, self.chunking):
            part.validate()
        if self.encoder.dim != self.decoder.dim:
            raise ValueError(f"encoder.dim {self.encoder.dim} != decoder.dim {self.decoder.dim}: the decoder reads "
                             f"the encoder's byte states through the residual path")
        if self.main.dim < self.encoder.dim:
            raise ValueError(f"main.dim {self.main.dim} < encoder.dim {self.encoder.dim}: chunks are widened by "
                             f"padding into the main network and cut back, so it cannot be narrower")
        if self.main.window is not None:
            raise ValueError(f"main.window must be null, got {self.main.window}: the main network attends to every "
                             f"earlier chunk")
        resets = {self.encoder.doc_reset, self.main.doc_reset, self.decoder.doc_reset}
        if len(resets) != 1:
            raise ValueError(f"encoder.doc_reset {self.encoder.doc_reset}, main.doc_reset {self.main.doc_reset} and "
                             f"decoder.doc_reset {self.decoder.doc_reset} must agree: documents either reset all "
                             f"of attention, chunking and smoothing, or none of them")
        if self.lr_multipliers is not None and (len(self.lr_multipliers) != 2 or not all(
                math.isfinite(m) and m > 0 for m in self.lr_multipliers)):
            raise ValueError(f"lr_multipliers must be two positive numbers [outer, main] (or null for H-Net's rule), "
                             f"got {self.lr_multipliers}")

    @property
    def doc_reset(self) -> bool:
        return self.encoder.doc_reset

    @property
    def pad_dim(self) -> int:
        """Width of the shared learned vector appended to every chunk: D1 - D0."""
        return self.main.dim - self.encoder.dim

    @property
    def stage_lr_multipliers(self) -> tuple[float, float]:
        """(outer, main) learning-rate factors: the configured ones, else H-Net's Eq. 11."""
        if self.lr_multipliers is not None:
            return float(self.lr_multipliers[0]), float(self.lr_multipliers[1])
        n = self.chunking.target_ratio
        return (math.sqrt(GPT_BYTES_PER_TOKEN * self.main.dim / self.encoder.dim),
                math.sqrt(GPT_BYTES_PER_TOKEN / n))


def hnet_config_from_dict(data: dict, source: Optional[str] = None) -> HNetConfig:
    return cfgio.from_dict(HNetConfig, data, source=source)  # validates


def load_hnet_config(name_or_path: str | os.PathLike, overrides: Optional[list[str]] = None) -> HNetConfig:
    """An H-Net config from a YAML path or a shipped name under ``configs/hnet/`` (``tiny``, ``bench-s``)."""
    return cfgio.build_config(hnet_config_from_dict, name_or_path, "hnet", overrides, flag="model_overrides")[0]


__all__ = ["ChunkingConfig", "HNetConfig", "hnet_config_from_dict", "load_hnet_config", "GPT_BYTES_PER_TOKEN"]
