"""SwiGLU feed-forward: ``w2(silu(w1 x) * w3 x)`` (docs/reference-semantics.md §7)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .init import trunc_normal_


def ffn_hidden_dim(dim: int, multiplier: float = 1.0, multiple_of: int = 256) -> int:
    """The reference's rounding: ``multiple_of * ceil(int(mult * int(2*4*dim/3)) / multiple_of)``.

    768 -> 2048, 1024 -> 2816, 2048 -> 5632, 256 -> 768, 512 -> 1536.
    """
    hidden = int(2 * 4 * dim / 3)
    hidden = int(multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w1(x), self.w3(x)  # (..., hidden)
        if torch.is_grad_enabled() or gate.dtype != up.dtype:
            return self.w2(F.silu(gate) * up)
        # No graph to keep: the products overwrite w1's output instead of allocating two more
        # hidden-wide tensors, the same values (1.07x the small entropy model on 16 KB rows,
        # docs/benchmarks.md, "RoPE as one complex product, SwiGLU in place").
        return self.w2(F.silu(gate, inplace=True).mul_(up))

    def reset_parameters(self) -> None:
        trunc_normal_(self.w1.weight, self.dim ** -0.5)
        trunc_normal_(self.w3.weight, self.dim ** -0.5)
        trunc_normal_(self.w2.weight, self.hidden ** -0.5)
