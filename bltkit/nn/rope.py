"""Rotary position embedding on **adjacent** pairs (x_{2i}, x_{2i+1}) (docs/reference-semantics.md §7).

Angles are computed from explicit positions, so a KV cache can rotate new keys at their absolute
positions without a precomputed table (and no table length caps the sequence).
"""
from __future__ import annotations

import torch


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of ``pos * theta^(-2i/d)``, fp32, shape ``positions.shape + (head_dim // 2,)``."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    ang = positions.to(torch.float32)[..., None] * inv_freq
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape (B, H, T, hd) by angles of shape (T, hd/2) or (B, T, hd/2); fp32 math.

    Eager, each pair is one complex number times ``cos + i sin``: one kernel instead of six, with
    the same products and sums (``(a + ib)(c + is) = (ac - bs) + i(as + bc)``), equal to the real
    form up to the rounding of a fused multiply-add in the vectorised kernel, an ulp or two
    (tests/test_nn.py). Compiled, the real form: inductor fuses it into one kernel but has no
    code generation for complex operators."""
    if cos.dim() == 3:  # per-row positions (B, T, hd/2) -> broadcast over heads
        cos, sin = cos[:, None], sin[:, None]
    xf = x.to(torch.promote_types(x.dtype, torch.float32)).unflatten(-1, (-1, 2))  # (B, H, T, hd/2, 2)
    if xf.dtype == torch.float32 and not torch.compiler.is_compiling():
        return _rotate_complex(xf, cos, sin).to(x.dtype)
    return _rotate_real(xf, cos, sin).to(x.dtype)


def _rotate_real(xf: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    a, b = xf[..., 0], xf[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


def _rotate_complex(xf: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    if xf.stride(-1) != 1 or xf.storage_offset() % 2 or any(s % 2 for s in xf.stride()[:-1]):
        xf = xf.clone(memory_format=torch.contiguous_format)  # a complex view needs whole, aligned pairs
    return torch.view_as_real(torch.view_as_complex(xf) * torch.complex(cos, sin)).flatten(-2)
