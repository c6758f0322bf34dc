"""A plain byte LM run incrementally: the entropy model (to decide patch boundaries while
generating) and the byte-level ``ByteLM`` (K = 1) share this.

Axes: B rows held, b rows in a step, T new bytes a row, V vocabulary (260).

The entropy model attends locally (window 512, reset after EOS; blt-reference §2, pitfall 8) with
absolute RoPE positions, so its KV cache is a ring of ``window`` slots per layer (``cache.py``);
``H_n`` (nats, fp32 from the logits, as ``entropy_model.entropies.entropy``) comes out of the
step that feeds byte n. ``compute_entropies`` restarts positions at 0 in its streaming chunks,
which changes nothing because RoPE scores depend on position differences only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..data.vocab import EOS_ID
from ..nn.rope import rope_angles
from .cache import StackCache


@dataclass
class LMParts:
    """What a cached byte LM needs: its modules and attention settings."""

    embed: nn.Module
    project: Optional[nn.Module]  # input projection before the layers (ByteLM's backbone), or None
    layers: nn.ModuleList
    norm: nn.Module
    output: nn.Module
    head_dim: int
    rope_theta: float
    window: Optional[int]
    doc_reset: bool


def lm_parts(model: nn.Module) -> LMParts:
    """``LMParts`` of an ``EntropyModel`` or a ``ByteLM``."""
    cfg = model.config
    if hasattr(model, "layers"):  # EntropyModel
        return LMParts(model.tok_embeddings, None, model.layers, model.norm, model.output, cfg.head_dim,
                       cfg.rope_theta, cfg.window, cfg.doc_reset)
    if hasattr(model, "global_transformer"):  # ByteLM on BLT's global backbone: no window (§5)
        g = model.global_transformer
        return LMParts(model.tok_embeddings, g.token_embedding_projection, g.layers, model.norm, model.output,
                       cfg.head_dim, cfg.rope_theta, None, cfg.doc_reset)
    raise ValueError(f"{type(model).__name__} is not a byte LM this generator knows (EntropyModel, ByteLM)")


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats, fp32, over the last axis (``entropy_model.entropies.entropy``)."""
    from entropy_model.entropies import entropy

    return entropy(logits)


class LMCache:
    """KV caches and positions of a batch of rows of one byte LM."""

    def __init__(self, model: nn.Module, batch: int, max_bytes: int, device: torch.device):
        self.parts = lm_parts(model)
        p = self.parts
        self.stack = StackCache(len(p.layers), batch, max_bytes, p.window, p.doc_reset, device)
        self.length = torch.zeros(batch, dtype=torch.int64, device=device)
        self.n_docs = torch.zeros(batch, dtype=torch.int64, device=device)
        self.max_bytes, self.device = max_bytes, device

    def keep(self, idx: torch.Tensor) -> None:
        self.stack.keep(idx)
        self.length, self.n_docs = self.length[idx], self.n_docs[idx]

    @torch.no_grad()
    def advance(self, ids: torch.Tensor, rows: Optional[torch.Tensor] = None, all_logits: bool = False) -> torch.Tensor:
        """Feed ``ids`` (b, T); logits (b, T, V) fp32 when ``all_logits``, else those after the
        last byte (b, V)."""
        p, dev = self.parts, self.device
        b, t = ids.shape
        row_idx = rows if rows is not None else torch.arange(self.length.shape[0], device=dev)
        qpos = self.length[row_idx, None] + torch.arange(t, device=dev)  # (b, T)
        if int(qpos.max()) >= self.max_bytes:
            raise ValueError(f"sequence longer than the {self.max_bytes} bytes this generation was set up for")
        is_eos = (ids == EOS_ID).to(torch.int64)
        qdoc = self.n_docs[row_idx, None] + torch.cumsum(is_eos, dim=1) - is_eos  # (b, T)
        mask, views = self.stack.step(qpos, qdoc, rows)
        rope = rope_angles(qpos, p.head_dim, p.rope_theta)  # (b, T, hd/2)
        h = p.embed(ids)  # (b, T, D)
        if p.project is not None:
            h = p.project(h)
        for i, layer in enumerate(p.layers):
            h = layer(h, rope, mask, views[i])
        self.length[row_idx] += t
        self.n_docs[row_idx] += is_eos.sum(dim=1)
        if not all_logits:
            h = h[:, -1]
        return p.output(p.norm(h)).float()
