"""The incremental state of an ``HNet``: what ``model(ids, cache=...)`` reads and extends.
Axes: B rows, S slots (bytes; chunks never outnumber bytes), D0 byte width.

| buffer    | shape          | holds                                                         |
|-----------|----------------|---------------------------------------------------------------|
| ``enc``   | ``StackCache`` | encoder self-attention K/V, by byte                           |
| ``main``  | ``StackCache`` | main-network self-attention K/V, by chunk                     |
| ``dec``   | ``StackCache`` | decoder self-attention K/V, by byte                           |
| ``last_h``| (B, D0)        | the encoder's output at the last byte (the router's earlier state) |
| ``zbar``  | (B, D0) fp32   | the smoothed main output of the open chunk (the EMA's state)  |

Counters, (B,) each: ``length`` bytes fed, ``n_docs`` EOS fed, ``n_chunks`` chunks opened,
``prev_eos`` whether the last byte was an EOS (the next one then opens a chunk). Every buffer is
preallocated for ``max_bytes``, so a step changes no shape and holds no host sync.
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn.kv_cache import StackCache


class HNetCache:
    def __init__(self, model: nn.Module, batch: int, max_bytes: int):
        if max_bytes < 1:
            raise ValueError(f"an H-Net cache needs room for >= 1 byte, got max_bytes {max_bytes}")
        cfg = model.config
        w = model.tok_embeddings.weight
        dev, dt = w.device, w.dtype
        self.max_bytes = max_bytes
        self.enc = StackCache(model.encoder.layers, batch, max_bytes, cfg.encoder.window, cfg.doc_reset) \
            if len(model.encoder.layers) else _NoLayers(batch, dev)
        self.main = StackCache(model.main.layers, batch, max_bytes, None, cfg.doc_reset) \
            if len(model.main.layers) else _NoLayers(batch, dev)
        self.dec = StackCache(model.decoder.layers, batch, max_bytes, cfg.decoder.window, cfg.doc_reset) \
            if len(model.decoder.layers) else _NoLayers(batch, dev)
        self.last_h = torch.zeros(batch, cfg.encoder.dim, dtype=dt, device=dev)
        self.zbar = torch.zeros(batch, cfg.encoder.dim, dtype=torch.float32, device=dev)
        self.length = torch.zeros(batch, dtype=torch.int64, device=dev)
        self.n_docs = torch.zeros(batch, dtype=torch.int64, device=dev)
        self.n_chunks = torch.zeros(batch, dtype=torch.int64, device=dev)
        self.prev_eos = torch.zeros(batch, dtype=torch.bool, device=dev)

    @property
    def batch(self) -> int:
        return self.length.shape[0]

    def advance(self, valid: torch.Tensor, eos: torch.Tensor, h: torch.Tensor, zbar: torch.Tensor,
                new_chunks: torch.Tensor) -> None:
        """After a step over ``valid`` (B, T) bytes (a prefix of each row; ``eos`` among them):
        keep the last real byte's encoder state ``h`` (B, T, D0), the last new chunk's smoothed
        state ``zbar`` (B, T, D0) and move the counters."""
        n = valid.sum(dim=1)  # (B,)
        rows = torch.arange(valid.shape[0], device=valid.device)
        last = (n - 1).clamp(min=0)
        moved = (n > 0)[:, None]
        self.last_h.copy_(torch.where(moved, h[rows, last].to(self.last_h.dtype), self.last_h))
        self.prev_eos.copy_(torch.where(n > 0, eos[rows, last], self.prev_eos))
        opened = (new_chunks > 0)[:, None]
        self.zbar.copy_(torch.where(opened, zbar[rows, (new_chunks - 1).clamp(min=0)].float(), self.zbar))
        self.length += n
        self.n_docs += eos.sum(dim=1)
        self.n_chunks += new_chunks


class _NoLayers:
    """The cache of an empty stack: nothing to store, and attention is never called."""

    def __init__(self, batch: int, device: torch.device):
        self.batch = batch

    def begin(self, pos: torch.Tensor, doc: torch.Tensor) -> None:
        return None

    def layer(self, i: int):  # pragma: no cover - an empty stack has no layer i
        raise IndexError(i)


__all__ = ["HNetCache"]
