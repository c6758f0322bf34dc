"""The uncached reference path (``--no-cache``): what the reference generator does every byte
(blt-reference §8, pitfall 22) and the yardstick the cached path is tested against.

For every new byte and every row on its own: patch the whole prefix with ``Patcher`` (the
entropy model rerun over the prefix for entropy schemes) with ``include_next_token=True``, run
the whole model over the prefix with those patch lengths, and keep the logits of the last
position. O(T^2) a row; rows are run one at a time so no row ever sees another's padding.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..patching.config import PatcherConfig
from ..patching.patcher import Patcher


class RecomputeStepper:
    def __init__(self, model: nn.Module, patcher: Optional[PatcherConfig], entropy_model: Optional[nn.Module],
                 device: torch.device):
        self.model, self.device = model, device
        self.is_blt = patcher is not None
        if self.is_blt:
            patcher.check_ready()
            # The scorer runs in its weights' dtype, with no autocast, as the cached path does.
            self.patcher = Patcher(patcher, scorer=entropy_model if patcher.needs_scores else None, precision="fp32")

    def start(self, prompts: list[list[int]]) -> torch.Tensor:
        self.rows = [list(p) for p in prompts]
        return self._logits()

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        for row, i in zip(self.rows, ids.tolist()):
            row.append(int(i))
        return self._logits()

    def keep(self, idx: torch.Tensor) -> None:
        self.rows = [self.rows[i] for i in idx.tolist()]

    @torch.no_grad()
    def _logits(self) -> torch.Tensor:
        out = []
        for row in self.rows:
            ids = torch.tensor([row], dtype=torch.int64, device=self.device)  # (1, N)
            if self.is_blt:
                pl = self.patcher(ids.cpu(), include_next_token=True).patch_lengths.to(self.device)  # (1, P), Σ = N + 1
                out.append(self.model(ids, pl)[:, -1])
            else:
                out.append(self.model(ids)[:, -1])
        return torch.cat(out).float()  # (b, V)
