"""Choosing the next byte from logits: greedy, or temperature / top-k / top-p sampling.

Randomness is per row and lives on the CPU: every row owns a ``torch.Generator`` seeded with its
seed, and draws one uniform number a step, which picks a byte by inverting the cumulative
distribution. So a row's bytes depend only on its own seed and its own logits, never on the batch
it sits in, the device, or the other rows (a batch gives the same bytes as its prompts one at a
time with the same seed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy (argmax), as the reference generator does by default (docs/reference-semantics.md §14)
    top_k: Optional[int] = None  # keep the k most likely bytes; None or 0 = all
    top_p: Optional[float] = None  # keep the smallest set with mass >= top_p; None or 1 = all

    def validate(self) -> None:
        if (isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float))
                or not math.isfinite(self.temperature) or self.temperature < 0):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0):
            raise ValueError(f"top_k must be a whole number >= 0 (0 or None = no limit), got {self.top_k!r}")
        if self.top_p is not None and (not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


def check_seed(seed, name: str = "seed") -> None:
    """A seed is an integer torch can take; anything else is a ``ValueError`` naming it."""
    lo, hi = SEED_RANGE
    if isinstance(seed, bool) or not isinstance(seed, int) or not lo <= seed <= hi:
        raise ValueError(f"{name} must be an integer from {lo} to {hi} (2**64 - 1), got {seed!r}")


def row_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    gens = []
    for s in seeds:
        check_seed(s)
        g = torch.Generator(device="cpu")
        g.manual_seed(s)
        gens.append(g)
    return gens


def filtered_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Probabilities (b, V) in fp32 after temperature, top-k and top-p."""
    x = logits.float() / params.temperature
    v = x.shape[-1]
    if params.top_k and params.top_k < v:
        kth = torch.topk(x, params.top_k, dim=-1).values[:, -1:]  # (b, 1)
        x = x.masked_fill(x < kth, float("-inf"))
    probs = torch.softmax(x, dim=-1)
    if params.top_p is not None and params.top_p < 1:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass strictly before each entry
        drop_sorted = before >= params.top_p  # the first entry is always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample(logits: torch.Tensor, params: SamplingParams, generators: Optional[list[torch.Generator]] = None) -> torch.Tensor:
    """Next ids (b,) int64 from logits (b, V); ``generators[i]`` drives row i."""
    if params.greedy:
        return logits.argmax(dim=-1)
    if generators is None or len(generators) != logits.shape[0]:
        raise ValueError("sampling needs one generator a row")
    probs = filtered_probs(logits, params)
    u = torch.cat([torch.rand(1, generator=g) for g in generators]).to(probs.device)  # (b,)
    cdf = torch.cumsum(probs, dim=-1)  # (b, V)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    # Never land on a zero-probability id (u * total can round onto the last step of the cdf).
    idx = idx.clamp(max=probs.shape[-1] - 1)
    bad = probs.gather(1, idx[:, None])[:, 0] <= 0
    if bool(bad.any()):
        idx = torch.where(bad, probs.argmax(dim=-1), idx)
    return idx
