"""The uncached reference loop (``use_cache=False``, ``--no-cache``): what the reference generator
does every byte, and the yardstick the cached path is tested and benchmarked against.

For every new byte and every row on its own: patch the whole prefix with ``Patcher`` (the
entropy model rerun over the prefix for entropy schemes) with ``include_next_token=True``, run
the whole model over the prefix with those patch lengths, and keep the logits of the last
position. O(T^2) a row; rows run one at a time so no row ever sees another's padding.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch
from torch import nn

from ..patching.config import PatcherConfig
from ..patching.patcher import Patcher
from ..runtime import scorer_precision


class RecomputeStepper:
    def __init__(self, model: nn.Module, patcher: Optional[PatcherConfig], entropy_model: Optional[nn.Module],
                 device: torch.device, amp: Optional[torch.dtype] = None, attn_impl: Optional[str] = None):
        """``amp``: an autocast dtype for the model (the bench's bf16 on CUDA); None runs as loaded.
        ``attn_impl``: override the model's (the bench's ``sdpa``: a prefix one byte longer each
        step would recompile compiled FlexAttention every time)."""
        self.model, self.device, self.amp, self.attn_impl = model, torch.device(device), amp, attn_impl
        self.is_blt = patcher is not None
        if self.is_blt:
            patcher.check_ready()
            # The scorer runs in its weights' dtype (or the autocast dtype), as the cached path does.
            self.patcher = Patcher(patcher, scorer=entropy_model if patcher.needs_scores else None,
                                   precision=scorer_precision(amp))

    def start(self, prompts: list[list[int]]) -> torch.Tensor:
        self.rows = [list(p) for p in prompts]
        return self._logits([True] * len(self.rows))

    def step(self, ids: torch.Tensor, live: Optional[torch.Tensor] = None) -> torch.Tensor:
        live_l = [True] * len(self.rows) if live is None else live.tolist()
        for row, i, on in zip(self.rows, ids.tolist(), live_l):
            if on:
                row.append(int(i))
        return self._logits(live_l)

    @torch.no_grad()
    def _logits(self, live: list[bool]) -> torch.Tensor:
        out = []
        amp = torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else nullcontext()
        for row, on in zip(self.rows, live):
            if not on:  # a finished row: nothing to compute, its logits are never read
                out.append(None)
                continue
            ids = torch.tensor([row], dtype=torch.int64, device=self.device)  # (1, N)
            with amp:
                if self.is_blt:
                    pl = self.patcher(ids, include_next_token=True).patch_lengths.to(self.device)  # (1, P), Σ = N + 1
                    out.append(self.model(ids, pl, validate=False, attn_impl=self.attn_impl)[:, -1].float())
                else:
                    out.append(self.model(ids, validate=False, attn_impl=self.attn_impl)[:, -1].float())
        v = next(o for o in out if o is not None).shape[-1]
        return torch.cat([o if o is not None else torch.zeros(1, v, device=self.device) for o in out])  # (B, V)
