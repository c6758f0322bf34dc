"""The entropy model: a small byte-level LM whose next-byte uncertainty decides where patches
start (docs/reference-semantics.md §3; BLT paper §2.3).

Axes: B batch rows, T byte positions, D model width, V vocabulary (260).

It is the reference ``LMTransformer``: ``tok_embeddings`` -> ``layers.{i}`` (the shared pre-norm
``TransformerBlock``) -> ``norm`` -> ``output`` (no bias, no weight tying). The parameter names are
the reference's, so its checkpoints import by name.

Attention is *local block-causal* (docs/reference-semantics.md §3, §8.1): query t sees keys s with ``t - window < s <= t``
in the same document, a document ending at and including EOS. RoPE positions are absolute in the
row and are not reset at documents. One layer sees ``window - 1`` positions back, so the whole
stack's output at t depends on positions ``t - receptive_field .. t`` only, with
``receptive_field = n_layers * (window - 1)`` (each layer widens the reach of the one below). A
long document therefore streams through in chunks with identical results
(``bltkit.patching.entropies``): each chunk carrying every layer's last ``window - 1`` keys from the
one before (``new_carry``, the blocked path), or, for the dense reference path, chunks overlapping
by ``receptive_field`` (an overlap of only ``window - 1`` is *not* enough for more than one layer).

Unlike the reference loader this module never switches the global dtype nor names a device
(docs/contributing.md): precision is the caller's autocast; logits come back in fp32. The loss lives outside
(the trainer computes cross-entropy on ``model(ids)``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from bltkit import config as cfgio
from bltkit import weights
from bltkit.data.vocab import EOS_ID, VOCAB_SIZE, check_ids
from bltkit.nn import RMSNorm, StackConfig, rope_angles, transformer_blocks, trunc_normal_
from bltkit.nn.kv_cache import StackCache, WindowCarry
from bltkit.nn.masks import LocalAttention, document_ids, local_self_mask, local_window_mask

PATCHER_FILE = "patcher.yaml"  # written by ``bltkit calibrate`` beside the weights


@dataclass
class EntropyModelConfig(StackConfig):
    """Sizes of the entropy model: a ``bltkit.nn.StackConfig`` (the config of every bltkit stack)
    with the LM's own fields. The reference "transformer_100m" is dim 768, 14 layers, 12 heads,
    window 512, rope_theta 10000 (its loader hard-codes the last two; docs/reference-semantics.md §3)."""

    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    rope_theta: float = 10000.0
    window: Optional[int] = 512  # None: full causal attention (HF BltPatcher behaviour, docs/reference-semantics.md §3)
    vocab_size: int = VOCAB_SIZE
    max_seqlen: int = 8192  # the reference's training row length; entropies.py chunks rows near it
    attn_impl: Literal["sdpa", "flex", "auto"] = "auto"  # auto: flex on CUDA, sdpa elsewhere
    # blocked: attention costs the window (queries in blocks, each seeing only the keys its window
    # reaches); dense: the T x T mask, the reference to check and measure against (bltkit.nn.masks).
    local_attention: LocalAttention = "blocked"

    def validate(self) -> None:
        super().validate()
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {self.n_layers}")
        if self.vocab_size != VOCAB_SIZE:
            raise ValueError(f"vocab_size must be {VOCAB_SIZE} (256 bytes + 4 specials), got {self.vocab_size}")
        if self.max_seqlen < 1:
            raise ValueError(f"max_seqlen must be >= 1, got {self.max_seqlen}")


def load_entropy_config(name_or_path: str | os.PathLike, overrides: Optional[list[str]] = None) -> EntropyModelConfig:
    """A config from a YAML path or a shipped name under ``configs/entropy/`` (tiny, small, paper)."""
    return cfgio.build_config(lambda d, s: cfgio.from_dict(EntropyModelConfig, d, source=s), name_or_path, "entropy",
                              overrides, flag="model_overrides")[0]


class EntropyModel(weights.Pretrained, nn.Module):
    config_class = EntropyModelConfig  # save_pretrained / from_pretrained: bltkit.weights.Pretrained
    kind_name = "entropy model"

    def __init__(self, config: EntropyModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = transformer_blocks(config)
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    @property
    def window(self) -> Optional[int]:
        """How far back attention reaches; the streaming entropy computation relies on it."""
        return self.config.window

    @property
    def receptive_field(self) -> Optional[int]:
        """How many positions back the output at t can depend on: ``n_layers * (window - 1)``."""
        w = self.config.window
        return None if w is None else self.config.n_layers * (w - 1)

    @property
    def max_seqlen(self) -> int:
        return self.config.max_seqlen

    def forward(self, ids: torch.Tensor, attn_impl: Optional[str] = None, validate: bool = True,
                cache: Optional[StackCache] = None, valid: Optional[torch.Tensor] = None,
                carry: Optional[WindowCarry] = None) -> torch.Tensor:
        """Next-byte logits (B, T, V) in fp32 for ``ids`` (B, T): logits[:, t] predict ids[:, t+1].

        With ``cache`` (``new_cache``), ``ids`` are the next T bytes of each row: positions and
        the mask come from the cache, which they extend; ``valid`` (B, T) marks real bytes (a
        prefix of each row; the rest is padding and leaves the cache as it was). No host sync.
        With ``carry`` (``new_carry``), ``ids`` are the next chunk of each row, attending to the
        previous chunk's last ``window - 1`` positions too (full-sequence streaming).
        """
        if cache is not None:
            return self._cached(ids, cache, valid)
        if carry is not None:
            if validate:
                check_ids(ids)
            return self._carried(ids, carry)
        if ids.dim() != 2:
            raise ValueError(f"ids must be (batch, positions), got shape {tuple(ids.shape)}")
        b, t = ids.shape
        if validate:
            check_ids(ids)
        impl = self._attn_impl(ids.device, attn_impl)
        cfg = self.config
        pos = torch.arange(t, device=ids.device)  # absolute positions in the row, never reset
        rope = rope_angles(pos, cfg.head_dim, cfg.rope_theta)  # cos, sin: (T, hd/2)
        doc = document_ids(ids) if cfg.doc_reset else torch.zeros_like(ids, dtype=torch.int32)  # (B, T)
        mask = local_self_mask(doc, cfg.window, cfg.doc_reset, impl, cfg.local_attention)  # shared by every layer
        h = self.tok_embeddings(ids)  # (B, T, D)
        for layer in self.layers:
            h = layer(h, rope, mask)
        return self.output(self.norm(h)).float()  # (B, T, V)

    def _attn_impl(self, device: torch.device, attn_impl: Optional[str] = None) -> str:
        """The attention path a forward on ``device`` takes: ``attn_impl`` or the config's, auto
        resolved (flex on CUDA, sdpa elsewhere)."""
        impl = attn_impl or self.config.attn_impl
        if impl == "auto":
            impl = "flex" if device.type == "cuda" else "sdpa"
        if impl not in ("sdpa", "flex"):
            raise ValueError(f"attn_impl must be 'sdpa', 'flex' or 'auto', got {impl!r}")
        return impl

    def new_carry(self, device: torch.device) -> Optional[WindowCarry]:
        """A carry for streaming rows chunk by chunk (``forward(ids, carry=...)``), or None where
        this model streams by overlapping chunks instead: no window, the dense reference mask, or
        FlexAttention (the CUDA default, whose block mask is built for square self-attention)."""
        cfg = self.config
        if cfg.window is None or cfg.window < 2 or cfg.local_attention != "blocked" or self._attn_impl(device) != "sdpa":
            return None
        return WindowCarry(cfg.n_layers, cfg.window, cfg.head_dim, cfg.rope_theta)

    def _carried(self, ids: torch.Tensor, carry: WindowCarry) -> torch.Tensor:
        cfg = self.config
        t = ids.shape[1]
        c = cfg.window - 1
        # The chunk's frame: carried keys at 0 .. c-1, the chunk at c .. c+T-1 (WindowCarry).
        rope = rope_angles(torch.arange(c, c + t, device=ids.device), cfg.head_dim, cfg.rope_theta)  # (T, hd/2)
        ends = ids == EOS_ID if cfg.doc_reset else torch.zeros_like(ids, dtype=torch.bool)
        doc, carried = carry.documents(ends)  # (B, T), (B, c)
        # One host sync (streaming is a host loop): inside one document, with every carried key
        # real, the band alone is the mask, one tile for all blocks (docs ids never decrease).
        one = bool((carried[:, 0] >= 0).all()) and (not cfg.doc_reset or bool((carried[:, 0] == doc[:, -1]).all()))
        mask = local_window_mask(doc, cfg.window, cfg.doc_reset, context_doc=carried, one_document=one)
        h = self.tok_embeddings(ids)  # (B, T, D)
        for i, layer in enumerate(self.layers):
            h = layer(h, rope, mask, carry.layer(i))
        return self.output(self.norm(h)).float()  # (B, T, V)

    def new_cache(self, batch: int, max_len: int) -> StackCache:
        """An empty cache for ``batch`` rows of up to ``max_len`` bytes (preallocated)."""
        return StackCache(self.layers, batch, max_len, self.config.window, self.config.doc_reset)

    def _cached(self, ids: torch.Tensor, cache: StackCache, valid: Optional[torch.Tensor]) -> torch.Tensor:
        cfg = self.config
        valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else valid
        pos, mask = cache.advance(valid, ids == EOS_ID)  # (B, T), (B, 1, T, S)
        rope = rope_angles(pos.clamp(min=0), cfg.head_dim, cfg.rope_theta)  # (B, T, hd/2)
        h = self.tok_embeddings(ids)  # (B, T, D)
        for i, layer in enumerate(self.layers):
            h = layer(h, rope, mask, cache.layer(i))
        return self.output(self.norm(h)).float()  # (B, T, V)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Trunc-normal at ±3σ (docs/reference-semantics.md §13): σ = dim^-0.5 for ``tok_embeddings`` and ``output``;
        each block's attention/FFN by its own ``reset_parameters`` (dim^-0.5, w2 hidden^-0.5);
        norm weights 1."""
        std = self.config.dim ** -0.5
        trunc_normal_(self.tok_embeddings.weight, std)
        trunc_normal_(self.output.weight, std)
        for layer in self.layers:
            layer.reset_parameters()
        self.norm.reset_parameters()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
