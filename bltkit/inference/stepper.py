"""Cached steppers: the objects the generation loop (``generate.py``) drives when caches are on.

``BLTStepper`` couples three incremental pieces for every row: the entropy model's KV cache
(``lm_cached.LMCache``, only for entropy schemes), the byte-by-byte boundary rule
(``boundaries.OnlineBoundaries``) and the BLT's caches (``blt_cached.BLTCache``). Per fed byte n:
entropy H_n -> does n + 1 start a patch? -> BLT step (closing the patch when it does) -> logits.

Prompts of equal length are fed together as one chunk (rows of different lengths in separate
chunks, into the same batched caches), so a ragged batch costs one prompt pass per distinct
length and then one batched step a byte; finished rows are dropped from every cache (``keep``).

``LMStepper`` does the same for a plain byte LM (an entropy-model bundle, a ``ByteLM``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..patching.config import PatcherConfig
from .blt_cached import BLTCache
from .boundaries import OnlineBoundaries
from .lm_cached import LMCache, entropy_of


def _groups(prompts: list[list[int]]) -> list[list[int]]:
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    return list(by_len.values())


class BLTStepper:
    def __init__(self, model: nn.Module, patcher: PatcherConfig, entropy_model: Optional[nn.Module],
                 max_bytes: int, device: torch.device):
        patcher.check_ready()
        if patcher.needs_scores and entropy_model is None:
            raise ValueError(f"patcher scheme {patcher.scheme!r} needs an entropy model, and none was loaded")
        self.model, self.patcher, self.em = model, patcher, entropy_model if patcher.needs_scores else None
        self.max_bytes, self.device = max_bytes, device

    def start(self, prompts: list[list[int]]) -> torch.Tensor:
        b, dev = len(prompts), self.device
        self.blt = BLTCache(self.model, b, self.max_bytes, dev)
        self.bounds = OnlineBoundaries(self.patcher, b, dev)
        self.ent = LMCache(self.em, b, self.max_bytes, dev) if self.em is not None else None
        logits = None
        for rows in _groups(prompts):
            idx = torch.tensor(rows, dtype=torch.int64, device=dev)
            ids = torch.tensor([prompts[r] for r in rows], dtype=torch.int64, device=dev)  # (g, T)
            out = self._feed(ids, idx if len(rows) != b else None)  # (g, V)
            if logits is None:
                logits = out.new_zeros(b, out.shape[-1])
            logits[idx] = out
        return logits

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        return self._feed(ids[:, None].to(self.device), None)

    def keep(self, idx: torch.Tensor) -> None:
        idx = idx.to(self.device)
        self.blt.keep(idx)
        self.bounds.keep(idx)
        if self.ent is not None:
            self.ent.keep(idx)

    def _feed(self, ids: torch.Tensor, rows: Optional[torch.Tensor]) -> torch.Tensor:
        row_idx = rows if rows is not None else torch.arange(self.blt.batch, device=self.device)
        pos = self.blt.length[row_idx, None] + torch.arange(ids.shape[1], device=self.device)  # (b, T)
        h = entropy_of(self.ent.advance(ids, rows, all_logits=True)) if self.ent is not None else None  # (b, T)
        starts_next = self.bounds.decide(ids, pos, h, rows)  # (b, T)
        return self.blt.advance(ids, starts_next, rows)


class LMStepper:
    def __init__(self, model: nn.Module, max_bytes: int, device: torch.device):
        self.model, self.max_bytes, self.device = model, max_bytes, device

    def start(self, prompts: list[list[int]]) -> torch.Tensor:
        b, dev = len(prompts), self.device
        self.cache = LMCache(self.model, b, self.max_bytes, dev)
        logits = None
        for rows in _groups(prompts):
            idx = torch.tensor(rows, dtype=torch.int64, device=dev)
            ids = torch.tensor([prompts[r] for r in rows], dtype=torch.int64, device=dev)
            out = self.cache.advance(ids, idx if len(rows) != b else None)
            if logits is None:
                logits = out.new_zeros(b, out.shape[-1])
            logits[idx] = out
        return logits

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        return self.cache.advance(ids[:, None].to(self.device))

    def keep(self, idx: torch.Tensor) -> None:
        self.cache.keep(idx.to(self.device))
