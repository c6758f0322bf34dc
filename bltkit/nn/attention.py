"""Attention layers. Axes: B batch, H heads, T query positions, S key positions, hd head dim.

Four interchangeable mask forms reach ``attend`` (built in ``masks.py``):
- a boolean tensor broadcastable to (B, H, T, S), True = may attend: the reference path, runs
  anywhere through ``scaled_dot_product_attention``;
- a ``LocalWindowMask``: sliding-window self-attention as blocks of queries, each attending to
  the keys its window can reach, through SDPA on any device, costing T x (block + window);
- a FlexAttention ``BlockMask`` built from patch/document ids: the fast CUDA path, with no dense
  bytes x patches tensor;
- a ``SlotSpanMask``: each query sees a few consecutive key slots (a cached decoder byte and its
  patch's k cross vectors), gathered, costing T x width instead of T x S.
All give the same values (tests/test_attention.py: blocked, spans and flex equal dense;
tests/test_model.py: flex equals SDPA through the whole BLT).
"""
from __future__ import annotations

from typing import Any, Optional, Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .init import trunc_normal_
from .masks import LocalWindowMask, SlotSpanMask
from .norm import RMSNorm
from .rope import apply_rope

try:  # FlexAttention is stable API from torch 2.5
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
except ImportError:  # pragma: no cover - torch < 2.5 is not supported, kept for clarity
    BlockMask = None  # type: ignore[assignment]
    flex_attention = None  # type: ignore[assignment]

_compiled_flex = None


def flex_compiles(device: torch.device) -> bool:
    """Whether the flex path runs compiled on ``device`` (so a new sequence shape recompiles)."""
    return device.type == "cuda"


def _flex(q, k, v, block_mask, scale):
    """flex_attention: compiled on CUDA (once per process; uncompiled flex materialises full
    scores), eager elsewhere, where it serves to check the fast path's masks against SDPA."""
    global _compiled_flex
    gqa = q.shape[1] != k.shape[1]
    if not flex_compiles(q.device):
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)


def is_block_mask(mask: Any) -> bool:
    return BlockMask is not None and isinstance(mask, BlockMask)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any = None) -> torch.Tensor:
    """Scaled dot-product attention. q (B, H, T, hd), k/v (B, Hkv, S, hd) -> (B, H, T, hd).

    Every query row must see at least one key (callers handle empty rows, see ``CrossAttention``).
    """
    scale = q.shape[-1] ** -0.5
    if is_block_mask(mask):
        return _flex(q, k, v, mask, scale)
    if k.shape[1] != q.shape[1]:  # GQA: kv head j serves query heads j*rep .. j*rep+rep-1
        rep = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    if isinstance(mask, LocalWindowMask):
        return _windowed(q, k, v, mask, scale)
    if isinstance(mask, SlotSpanMask):
        return _spans(q, k, v, mask, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _windowed(q, k, v, m: LocalWindowMask, scale: float) -> torch.Tensor:
    """Sliding-window self-attention in blocks (see ``LocalWindowMask``). Axes: n query blocks
    of size c, L = c + window - 1 keys a block. q, k, v (B, H, T, hd) -> (B, H, T, hd).

    Row by row, the blocks' keys are an ``unfold`` view of the padded keys (overlapping windows,
    no copy: copying them would write L / c times the keys), the blocks taking SDPA's head axis
    and the heads its batch axis, with one mask broadcast over the heads."""
    b, h, t, d = q.shape
    carried = m.window - 1 if m.context else 0  # keys before the queries' own (a carried context)
    if k.shape[2] != t + carried or t != m.length:
        raise ValueError(f"a LocalWindowMask over {m.length} positions needs full-sequence self-attention "
                         f"over {carried} carried keys, got {t} queries and {k.shape[2]} keys")
    n, c, span = m.n_blocks, m.block, m.span
    pad = n * c - t
    if pad:
        q = F.pad(q, (0, 0, 0, pad))  # (B, H, n*c, hd)
    # (B, H, window-1 + n*c, hd): the carried keys or padding before position 0, padding past T
    if m.window - 1 - carried or pad:  # (a carried chunk of whole blocks needs no copy)
        k = F.pad(k, (0, 0, m.window - 1 - carried, pad))
        v = F.pad(v, (0, 0, m.window - 1 - carried, pad))
    bias = m.bias(q.dtype)  # (B, n, c, L), or (1, 1, c, L) for one document
    out = q.new_empty(b, h, n * c, d)
    for r in range(b):
        qb = q[r].view(h, n, c, d)
        kb = k[r].unfold(1, span, c).transpose(-1, -2)  # (H, n, L, hd), a view
        vb = v[r].unfold(1, span, c).transpose(-1, -2)
        mask_r = bias if bias.shape[0] == 1 else bias[r:r + 1]
        out[r] = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask_r, scale=scale).view(h, n * c, d)
    return out[:, :, :t]


def _spans(q, k, v, m: SlotSpanMask, scale: float) -> torch.Tensor:
    """Attention of query t over keys ``m.start[t] .. + m.width - 1`` only. Axes: w the span.
    q (B, H, T, hd), k/v (B, H, S, hd) -> (B, H, T, hd). Scores and softmax in fp32 (as SDPA's
    CPU kernels accumulate); an empty row (start < 0) reads slot 0 and is the caller's to mask.
    Products and sums, not einsum: w is a handful, and an eager step pays per ATen call."""
    rows, idx = m.index()  # (B, 1, 1), (B, T, w)
    kg = k[rows, :, idx].permute(0, 3, 1, 2, 4)  # (B, H, T, w, hd): advanced indices come first
    vg = v[rows, :, idx].permute(0, 3, 1, 2, 4)
    scores = (q[..., None, :].float() * kg.float()).sum(dim=-1) * scale  # (B, H, T, w)
    p = scores.softmax(dim=-1)
    return (p[..., None] * vg.float()).sum(dim=-2).to(q.dtype)


class KVCacheLike(Protocol):
    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's keys/values (B, Hkv, T, hd); return all keys/values to attend to."""


class SelfAttention(nn.Module):
    """Multi-head self-attention with RoPE and optional GQA; no biases (docs/reference-semantics.md §7)."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: Optional[int] = None, head_dim: Optional[int] = None):
        super().__init__()
        self.dim, self.n_heads = dim, n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.head_dim = head_dim or dim // n_heads
        if n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, D)
        rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin: (T, hd/2) or (B, T, hd/2)
        mask: Any = None,
        kv_cache: Optional[KVCacheLike] = None,
    ) -> torch.Tensor:
        q = rearrange(self.wq(x), "b t (h d) -> b h t d", d=self.head_dim)
        k = rearrange(self.wk(x), "b t (h d) -> b h t d", d=self.head_dim)
        v = rearrange(self.wv(x), "b t (h d) -> b h t d", d=self.head_dim)
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)
        out = attend(q, k, v, mask)  # (B, H, T, hd)
        return self.wo(rearrange(out, "b h t d -> b t (h d)"))

    def reset_parameters(self) -> None:
        for w in (self.wq, self.wk, self.wv, self.wo):
            trunc_normal_(w.weight, self.dim ** -0.5)


class CrossAttention(nn.Module):
    """Cross-attention between bytes and patches (docs/reference-semantics.md §9, §11).

    Returns ``x + wo(attn(norm_q(x), norm_kv(kv)))``: the residual sits *inside* the module, and
    callers add ``x`` once more, giving the reference's double residual (docs/reference-semantics.md §9). No RoPE.
    ``gate`` (B, T, 1) scales the update per query: learned boundaries pass a straight-through
    confidence, exactly 1 forward (``bltkit.nn.chunking.ste_one``), so the values are unchanged.

    ``empty_rows`` decides what a query with no visible key gets (an empty or virtual patch):
    ``"zero"`` (reference: FlexAttention returns 0 there) or ``"uniform"`` (Hugging Face: an additive
    ``finfo.min`` mask turns the row into a plain average of all keys). Both are finite (docs/reference-semantics.md §8.5).
    """

    def __init__(self, dim: int, n_heads: int, norm_eps: float = 1e-5, empty_rows: str = "zero"):
        super().__init__()
        if empty_rows not in ("zero", "uniform"):
            raise ValueError(f"empty_rows must be 'zero' or 'uniform', got {empty_rows!r}")
        # head_dim = dim // n_heads as in the reference; n_heads * head_dim may be < dim (400M: 768, 10 heads).
        self.dim, self.n_heads, self.head_dim = dim, n_heads, dim // n_heads
        inner = n_heads * self.head_dim
        self.empty_rows = empty_rows
        self.cross_attn_norm_q = RMSNorm(dim, norm_eps)
        self.cross_attn_norm_kv = RMSNorm(dim, norm_eps)
        self.wq = nn.Linear(dim, inner, bias=False)
        self.wk = nn.Linear(dim, inner, bias=False)
        self.wv = nn.Linear(dim, inner, bias=False)
        self.wo = nn.Linear(inner, dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,  # queries (B, T, D)
        kv: torch.Tensor,  # keys/values (B, S, D)
        mask: Any,  # bool (B, 1, T, S) or BlockMask
        kv_cache: Optional[KVCacheLike] = None,
        gate: Optional[torch.Tensor] = None,  # (B, T, 1): multiplies the update (a straight-through 1)
    ) -> torch.Tensor:
        q = rearrange(self.wq(self.cross_attn_norm_q(x)), "b t (h d) -> b h t d", d=self.head_dim)
        kvn = self.cross_attn_norm_kv(kv)
        k = rearrange(self.wk(kvn), "b s (h d) -> b h s d", d=self.head_dim)
        v = rearrange(self.wv(kvn), "b s (h d) -> b h s d", d=self.head_dim)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)
        if is_block_mask(mask):
            # FlexAttention already returns 0 for a row with no key; the uniform (HF) variant needs
            # the dense path and is rejected when the model config is built.
            out = attend(q, k, v, mask)
        elif isinstance(mask, SlotSpanMask):
            # Only padding has no span in a cached step (its output is never read), so both
            # ``empty_rows`` settings give it 0 here.
            out = torch.where(mask.has_key(), attend(q, k, v, mask), torch.zeros((), dtype=q.dtype, device=q.device))
        else:
            has_key = mask.any(dim=-1, keepdim=True)  # (B, 1, T, 1)
            safe = mask | ~has_key  # an empty row sees every key: finite, the plain average
            out = attend(q, k, v, safe)
            if self.empty_rows == "zero":
                out = torch.where(has_key, out, torch.zeros((), dtype=out.dtype, device=out.device))
        update = self.wo(rearrange(out, "b h t d -> b t (h d)"))
        return x + (update if gate is None else update * gate.to(update.dtype))

    def reset_parameters(self) -> None:
        for w in (self.wq, self.wk, self.wv, self.wo):
            trunc_normal_(w.weight, self.dim ** -0.5)
        self.cross_attn_norm_q.reset_parameters()
        self.cross_attn_norm_kv.reset_parameters()
