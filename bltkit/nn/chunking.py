"""Dynamic chunking: learned boundaries, selection of boundary states, and their way back to bytes.

The mechanism of H-Net (Hwang, Wang, Gu, arXiv 2507.07955, §2.2), as small pieces that any
model can assemble: the ``hnet`` model kind (``bltkit.model.hnet``) uses all of them; a BLT
patcher that learns its boundaries can reuse the router, the smoothing, the straight-through
confidence and the ratio loss with its own pooling. docs/hnet.md describes each rule.

Axes: B rows, L positions (bytes), M chunks (slots; some may be padding), D width.

- ``RoutingModule``: the boundary probability ``p_t`` of position t from the cosine similarity of
  the projected states at t - 1 and t, ``p_t = (1 - cos(W_q x_{t-1}, W_k x_t)) / 2`` clamped to
  [0, 1]; ``W_q``, ``W_k`` start as the identity. Position 0 and every forced start (a document's
  first byte) get ``p = 1`` (a constant, no gradient). A boundary is ``p > 0.5``, strictly: a
  tie is not a boundary. Computed in fp32 whatever the autocast, so that a boundary does not
  depend on the precision it is decided in.
- ``downsample``: the state of each chunk's *first* position, compacted in order into M slots
  (gather, no parameters; M fixed by the caller for static shapes, padding slots masked).
- ``ema_scan``: the smoothing over chunks ``z̄_j = P_j ẑ_j + (1 - P_j) z̄_{j-1}``, ``z̄_{-1} = 0``
  (or a carried state), ``P_j`` clamped to [1e-4, 1 - 1e-4], one scalar a chunk, fp32; a reset
  drops the carried state exactly (a new document).
- ``upsample``: each position reads the chunk it belongs to, ``j(t) = cumsum(b)_t - 1`` (no shift).
- ``ste_one``: the confidence straight-through estimator, forward exactly 1, gradient passed to
  the confidence unchanged; ``confidence`` is ``max(p, 1 - p)``.
- ``ResidualProjection``: the skip path's linear map, fp32, weight zero at init (bias: PyTorch's
  default init).
- ``ratio_loss``: ``N/(N-1) * ((N-1) F G + (1-F)(1-G))`` with F the fraction of boundaries (no
  gradient) and G the mean probability; 1 at ``F = G = 1/N``.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

THRESHOLD = 0.5  # a boundary is p > THRESHOLD (strict)
EMA_CLAMP = 1e-4  # P_j in [EMA_CLAMP, 1 - EMA_CLAMP]


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fp32 at least (an fp64 tensor stays fp64, for gradient checks)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


@contextmanager
def full_precision(x: torch.Tensor) -> Iterator[None]:
    """No autocast around the block (on ``x``'s device type): its matmuls run in fp32."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        yield


# ---- routing ---------------------------------------------------------------------------------
def cosine_boundary_prob(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``clamp((1 - cos(q, k)) / 2, 0, 1)`` over the last axis: q of the earlier position, k of
    the later one, both (..., D); fp32 (...)."""
    qn = F.normalize(upcast(q), dim=-1, eps=1e-12)
    kn = F.normalize(upcast(k), dim=-1, eps=1e-12)
    return ((1.0 - (qn * kn).sum(-1)) / 2.0).clamp(0.0, 1.0)


def is_boundary(p: torch.Tensor) -> torch.Tensor:
    """``p > 0.5``: strict, so p = 0.5 is no boundary."""
    return p > THRESHOLD


def confidence(p: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How sure the router is of its decision: p at a boundary, 1 - p elsewhere (``max(p, 1-p)``)."""
    return torch.where(b, p, 1.0 - p)


@dataclass
class Routing:
    """The router's output over (B, L) positions."""

    prob: torch.Tensor  # (B, L) fp32 p_t, 1 at forced starts
    boundary: torch.Tensor  # (B, L) bool b_t: position t opens a chunk (False on padding)

    @property
    def confidence(self) -> torch.Tensor:
        """(B, L) fp32 ``max(p, 1 - p)``."""
        return confidence(self.prob, self.boundary)


class RoutingModule(nn.Module):
    """Boundary probabilities from adjacent states (module docstring). Parameters ``q_proj`` and
    ``k_proj`` (D x D, no bias), identity at init; ``q_proj`` reads the earlier state."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        if not self.q_proj.weight.is_meta:
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for w in (self.q_proj.weight, self.k_proj.weight):
            w.copy_(torch.eye(self.dim, dtype=w.dtype, device=w.device))

    def forward(self, h: torch.Tensor, starts: Optional[torch.Tensor] = None, prev: Optional[torch.Tensor] = None,
                valid: Optional[torch.Tensor] = None) -> Routing:
        """Route ``h`` (B, L, D).

        ``starts`` (B, L) bool: positions that must open a chunk (p = 1). ``prev`` (B, D): the
        state before position 0 (a continued sequence, cached decoding); without it position 0
        is a start. ``valid`` (B, L) bool: real positions; padding is never a boundary.
        """
        b, n, _ = h.shape
        with full_precision(h):
            hf = upcast(h)
            wq, wk = self.q_proj.weight.to(hf.dtype), self.k_proj.weight.to(hf.dtype)
            before = hf[:, :-1] if prev is None else torch.cat([prev.to(hf.dtype)[:, None], hf[:, :-1]], dim=1)
            q = F.linear(before, wq)  # (B, L-1 | L, D): the earlier state of each pair
            k = F.linear(hf if prev is not None else hf[:, 1:], wk)
            p = cosine_boundary_prob(q, k)  # (B, L-1 | L)
        if prev is None:
            p = torch.cat([torch.ones(b, 1, dtype=p.dtype, device=p.device), p], dim=1)  # p_0 = 1
        if starts is not None:
            p = torch.where(starts, torch.ones((), dtype=p.dtype, device=p.device), p)
        bound = is_boundary(p)
        if valid is not None:
            bound = bound & valid
        return Routing(p, bound)


# ---- selection and the way back ----------------------------------------------------------------
def chunk_index(b: torch.Tensor) -> torch.Tensor:
    """(B, L) int64 ``j(t) = cumsum(b)_t - 1``: the chunk position t belongs to (-1 before the
    first boundary, which only a continued sequence has)."""
    return torch.cumsum(b.to(torch.int64), dim=-1) - 1


@dataclass
class Chunks:
    """Chunk slots of a batch: the first ``counts[r]`` slots of row r are real, in order."""

    states: torch.Tensor  # (B, M, D) the state at each chunk's first position (padding: position 0's)
    start: torch.Tensor  # (B, M) int64 each chunk's first position (0 in padding slots)
    mask: torch.Tensor  # (B, M) bool real slots
    counts: torch.Tensor  # (B,) int64 chunks a row

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Per-position values (B, L) or (B, L, E) read at each chunk's first position."""
        if x.dim() == 2:
            return x.gather(1, self.start)
        return x.gather(1, self.start[..., None].expand(-1, -1, x.shape[-1]))


def downsample(h: torch.Tensor, b: torch.Tensor, max_chunks: Optional[int] = None) -> Chunks:
    """The states of the boundary positions of ``h`` (B, L, D), compacted in order into M slots.

    ``max_chunks`` M fixes the number of slots (static shapes; a row with more boundaries is an
    error the caller must prevent, M = L always suffices); None uses the batch's largest count,
    which reads it on the host.
    """
    bsz, n, _ = h.shape
    counts = b.sum(dim=1)  # (B,)
    m = int(counts.max()) if max_chunks is None else max_chunks
    m = max(m, 1)
    idx = chunk_index(b)
    slot = torch.where(b & (idx < m), idx, m)  # non-boundaries (and any past M) go to a sink slot
    pos = torch.arange(n, device=h.device).expand(bsz, n)
    start = torch.zeros(bsz, m + 1, dtype=torch.int64, device=h.device).scatter_(1, slot, pos)[:, :m]
    mask = torch.arange(m, device=h.device)[None] < counts[:, None]
    start = torch.where(mask, start, 0)
    states = h.gather(1, start[..., None].expand(-1, -1, h.shape[-1]))  # (B, M, D)
    return Chunks(states, start, mask, counts)


def ema_scan(z: torch.Tensor, p: torch.Tensor, reset: Optional[torch.Tensor] = None,
             initial: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``z̄_j = P_j z_j + (1 - P_j) z̄_{j-1}`` over the chunk axis of ``z`` (B, M, D), fp32.

    ``p`` (B, M): each chunk's boundary probability; ``P = clamp(p, 1e-4, 1 - 1e-4)``.
    ``reset`` (B, M) bool: the chunk ignores the state before it (a new document). ``initial``
    (B, D): ``z̄_{-1}`` (a carried state), zero when None. A parallel (Hillis-Steele) scan of the
    affine maps ``s -> a s + x`` with ``a = 1 - P`` and ``x = P z``: log2(M) elementwise steps,
    each product formed directly (no logarithms), so values match the sequential recurrence to
    fp32 rounding.
    """
    dt = torch.promote_types(torch.promote_types(z.dtype, p.dtype), torch.float32)
    P = p.to(dt).clamp(EMA_CLAMP, 1.0 - EMA_CLAMP)  # (B, M)
    a = 1.0 - P
    if reset is not None:
        a = torch.where(reset, torch.zeros((), dtype=a.dtype, device=a.device), a)
    x = z.to(dt) * P[..., None]  # (B, M, D)
    if initial is not None:
        x = torch.cat([x[:, :1] + a[:, :1, None] * initial.to(dt)[:, None], x[:, 1:]], dim=1)
    m = x.shape[1]
    s = 1
    while s < m:
        x = torch.cat([x[:, :s], x[:, s:] + a[:, s:, None] * x[:, :-s]], dim=1)
        a = torch.cat([a[:, :s], a[:, s:] * a[:, :-s]], dim=1)
        s *= 2
    return x


def ema_reference(z: torch.Tensor, p: torch.Tensor, reset: Optional[torch.Tensor] = None,
                  initial: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``ema_scan`` as the plain sequential loop (for tests and as the definition)."""
    P = p.float().clamp(EMA_CLAMP, 1.0 - EMA_CLAMP)
    state = torch.zeros_like(z[:, 0], dtype=torch.float32) if initial is None else initial.float()
    out = []
    for j in range(z.shape[1]):
        keep = 1.0 - P[:, j, None]
        if reset is not None:
            keep = torch.where(reset[:, j, None], torch.zeros_like(keep), keep)
        state = P[:, j, None] * z[:, j].float() + keep * state
        out.append(state)
    return torch.stack(out, dim=1)


def upsample(z: torch.Tensor, b: torch.Tensor, initial: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Position t reads chunk ``j(t)`` of ``z`` (B, M, D) -> (B, L, D); positions before the
    first boundary (a continued sequence) read ``initial`` (B, D), zero when None."""
    j = chunk_index(b)  # (B, L)
    out = z.gather(1, j.clamp(min=0)[..., None].expand(-1, -1, z.shape[-1]))
    if initial is None:
        initial = torch.zeros((), dtype=z.dtype, device=z.device)
    else:
        initial = initial.to(z.dtype)[:, None]
    return torch.where((j >= 0)[..., None], out, initial)


def ste_one(c: torch.Tensor) -> torch.Tensor:
    """Forward exactly 1 (``c - c`` is exactly 0 for finite c), gradient 1 to ``c``."""
    return (c - c.detach()) + 1.0


class ResidualProjection(nn.Module):
    """The skip path ``r = W x + b`` (D -> D), computed in fp32; ``W = 0`` at init, ``b`` keeps
    PyTorch's default uniform init."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        if not self.proj.weight.is_meta:
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.proj.reset_parameters()  # the default init of the bias (and of the weight, zeroed next)
        self.proj.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x):
            xf = upcast(x)
            return F.linear(xf, self.proj.weight.to(xf.dtype), self.proj.bias.to(xf.dtype))  # (..., D) fp32


def combine(z_up: torch.Tensor, conf: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """The decoder's input ``z̃ * STE(c) + r`` in fp32: z_up (B, L, D), conf (B, L), residual (B, L, D)."""
    return upcast(z_up) * ste_one(upcast(conf))[..., None] + upcast(residual)


# ---- the ratio loss ----------------------------------------------------------------------------
def ratio_loss(b: torch.Tensor, p: torch.Tensor, target: float, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``N/(N-1) * ((N-1) F G + (1-F)(1-G))``, fp32 scalar: F the fraction of boundaries (no
    gradient), G the mean of ``p``, both over ``valid`` positions (all when None), N = ``target``
    (> 1). Its minimum 1 is at F = G = 1/N; it can be below 1 when F != G, so watch F."""
    if not target > 1:
        raise ValueError(f"the ratio loss needs a target compression N > 1, got {target}")
    pf = upcast(p)
    bf = b.to(pf.dtype)
    if valid is None:
        f, g = bf.mean(), pf.mean()
    else:
        w = valid.to(pf.dtype)
        n = w.sum().clamp(min=1.0)
        f, g = (bf * w).sum() / n, (pf * w).sum() / n
    n_ = float(target)
    return n_ / (n_ - 1.0) * ((n_ - 1.0) * f.detach() * g + (1.0 - f.detach()) * (1.0 - g))


__all__ = [
    "THRESHOLD", "EMA_CLAMP", "Routing", "RoutingModule", "Chunks", "ResidualProjection", "chunk_index",
    "combine", "confidence", "cosine_boundary_prob", "downsample", "ema_reference", "ema_scan", "full_precision", "upcast",
    "is_boundary", "ratio_loss", "ste_one", "upsample",
]
