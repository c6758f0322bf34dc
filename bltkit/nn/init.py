"""Initialisation helpers: truncated normal at ±3σ (docs/reference-semantics.md §13)."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def trunc_normal_(t: torch.Tensor, std: float) -> torch.Tensor:
    return nn.init.trunc_normal_(t, mean=0.0, std=std, a=-3 * std, b=3 * std)
