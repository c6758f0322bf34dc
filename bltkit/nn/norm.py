"""RMSNorm computed in fp32 and cast back before the weight (as HF BLT does, docs/reference-semantics.md §16.8);
identical to ``torch.nn.RMSNorm`` in fp32, steadier in bf16."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # the same arithmetic in one ATen call (bit-identical in fp32: tests/test_nn.py)
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # fp32 at least (fp64 stays fp64)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
