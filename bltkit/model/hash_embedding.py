"""Hash n-gram byte embeddings (docs/reference-semantics.md §6; BLT paper §3.2.1).

For every position i and every (hash function f, n-gram size n), the n ids ending at i
(left-padded with 0) are hashed with a rolling polynomial in int64 with two's-complement
wraparound (the overflow is intended), the oldest id taking power 0; floor-mod by the table size
picks a row. All tables live in one fused embedding (row ``table_index * vocab + hash``), so the
lookup is one gather; tables are ordered function-major, as the reference's ModuleList is.
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn.init import trunc_normal_
from .config import HashEmbeddingConfig

PRIMES = [1000000007, 5915587277, 1500450271, 3267000013, 5754853343, 4093082899,
          9576890767, 3628273133, 2860486313, 5463458053, 3367900313]


def byte_group_hash(ids: torch.Tensor, n: int, prime: int, vocab: int) -> torch.Tensor:
    """Row index in [0, vocab) of the n-gram ending at each position. ids (B, T) -> (B, T) int64.

    ``sum_j w[j] * prime^j`` over the window ``w = ids[i-n+1 .. i]``; torch int64 multiply and add
    wrap like C, which is exactly the reference's arithmetic. ``%`` on a positive divisor is floor-mod.
    """
    ids = ids.to(torch.int64)
    pad = ids.new_zeros(ids.shape[0], n - 1)
    windows = torch.cat([pad, ids], dim=1).unfold(1, n, 1)  # (B, T, n), oldest first
    h = torch.zeros_like(ids)
    p = 1  # prime^j in int64 with wraparound, computed in Python with the same wrap
    for j in range(n):
        h = h + windows[..., j] * _wrap(p)
        p = p * prime
    return torch.remainder(h, vocab)


def _wrap(x: int) -> int:
    """Python int -> the signed int64 with the same low 64 bits."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >= (1 << 63) else x


def hash_table_ids(ids: torch.Tensor, cfg: HashEmbeddingConfig) -> torch.Tensor:
    """Rows of the fused table for every (function, n): (B, T, n_tables) int64."""
    out = []
    for f in range(cfg.n_functions):
        prime = PRIMES[f % len(PRIMES)]
        for n in cfg.group_sizes:
            out.append(byte_group_hash(ids, n, prime, cfg.vocab) + len(out) * cfg.vocab)
    return torch.stack(out, dim=-1)


class HashNgramEmbedding(nn.Module):
    """Sum over all hash tables of the rows picked by each position's n-grams. (B, T) -> (B, T, D)."""

    def __init__(self, cfg: HashEmbeddingConfig, dim: int):
        super().__init__()
        self.cfg, self.dim = cfg, dim
        self.weight = nn.Parameter(torch.empty(cfg.n_tables * cfg.vocab, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.cfg.n_tables == 0:
            return self.weight.new_zeros(*ids.shape, self.dim)
        rows = hash_table_ids(ids, self.cfg)  # (B, T, n_tables)
        # embedding_bag(sum) gathers and sums the tables in one kernel, with no (B, T, n_tables, D) buffer.
        flat = rows.reshape(-1, rows.shape[-1])
        summed = nn.functional.embedding_bag(flat, self.weight, mode="sum")  # (B*T, D)
        return summed.view(*ids.shape, self.dim)

    def reset_parameters(self) -> None:
        trunc_normal_(self.weight, self.dim ** -0.5)
