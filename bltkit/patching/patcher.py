"""One patching interface for every scheme (docs/reference-semantics.md §4): ids in, patch lengths out.

    patcher = Patcher(scheme="entropy", threshold=1.34, scorer=model)
    result = patcher(ids_or_text, include_next_token=True)   # PatchResult
    result.patch_lengths  # (B, P) int64, zero-padded; first patch 1; rows sum to S_b + 1

Conventions are the reference's (docs/reference-semantics.md §4.1, §4.5): the first patch is 1 byte (BOS alone); with
``include_next_token=True`` (generation, in-forward patching) row b sums to ``S_b + 1``, the last
patch holding the virtual next byte; with ``False`` (training documents BOS…EOS) it sums to
``S_b``. Trailing all-zero columns are trimmed. The rules are in ``boundaries.py``.

The scorer is any ``nn.Module`` mapping ids (B, T) to next-byte logits (B, T, 260) — the
``EntropyModel`` or anything else (docs/contributing.md: depend on an interface, not on one model). Scores
may also be passed in (precomputed entropies, ``entropy_model.precompute``). Rows are patched
independently: a row's patches are the same alone or in any batch.

Inputs: ids (B, T) or (T,); a list of 1-D id rows of any lengths (ragged); or ``str``/``bytes``
(or a list of them), encoded as BOS + bytes with no EOS — a prefix, as in generation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..data.vocab import check_ids, encode_tensor
from ..registry import model_class
from .boundaries import lengths_from_starts, split_long, start_mask
from .config import PatcherConfig, resolve_patcher
from .entropies import compute_entropies

Inputs = Union[str, bytes, torch.Tensor, Sequence]


@dataclass
class PatchResult:
    patch_lengths: torch.Tensor  # (B, P) int64, right-padded with zeros
    scores: Optional[torch.Tensor]  # (B, T) fp32 entropies (zero past a row's end), None without a scorer
    lengths: torch.Tensor  # (B,) int64 ids a row

    def rows(self) -> list[list[int]]:
        """Each row's patch lengths without the zero padding."""
        return [[int(v) for v in r if v > 0] for r in self.patch_lengths.tolist()]


def to_rows(inputs: Inputs) -> list[torch.Tensor]:
    """Normalise any accepted input to a list of 1-D int64 id tensors (see the module docstring)."""
    if isinstance(inputs, (str, bytes, bytearray)):
        return [encode_tensor(inputs, bos=True, eos=False)]
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() == 1:
            return [inputs.long()]
        if inputs.dim() == 2:
            return list(inputs.long().unbind(0))
        raise ValueError(f"ids must be (positions,) or (batch, positions), got shape {tuple(inputs.shape)}")
    rows = []
    for i, r in enumerate(inputs):
        if isinstance(r, (str, bytes, bytearray)):
            rows.append(encode_tensor(r, bos=True, eos=False))
            continue
        t = torch.as_tensor(r, dtype=torch.int64)
        if t.dim() != 1:
            raise ValueError(f"row {i} must be 1-D ids, got shape {tuple(t.shape)}")
        rows.append(t)
    return rows


def _flat_scores(scores, rows: list[torch.Tensor]) -> torch.Tensor:
    """Flat (N,) fp32 scores from (B, T) or a list of rows, checked against the rows' lengths."""
    if isinstance(scores, torch.Tensor) and scores.dim() == 2:
        if scores.shape[0] != len(rows) or any(scores.shape[1] < r.numel() for r in rows):
            raise ValueError(f"scores of shape {tuple(scores.shape)} do not cover rows of lengths {[r.numel() for r in rows]}")
        parts = [scores[i, : r.numel()] for i, r in enumerate(rows)]
    else:
        parts = [torch.as_tensor(s) for s in ([scores] if isinstance(scores, torch.Tensor) else scores)]
        if len(parts) != len(rows) or any(p.numel() != r.numel() for p, r in zip(parts, rows)):
            raise ValueError(f"scores of lengths {[p.numel() for p in parts]} do not match rows of lengths "
                             f"{[r.numel() for r in rows]}")
    flat = torch.cat([p.reshape(-1).float().cpu() for p in parts]) if parts else torch.zeros(0)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("scores hold NaN or infinite values")
    return flat


class Patcher:
    """Patch lengths by ``config.scheme``; see the module docstring.

    ``scorer``: module giving next-byte logits (needed by entropy/monotonic unless scores are
    passed). ``precision``, ``chunk_len``, ``batch_size`` go to ``compute_entropies``.
    Keyword overrides set ``PatcherConfig`` fields: ``Patcher(scheme="static", patch_size=6)``;
    the settings are ``resolve_patcher(config, overrides=...)``'s, unset values at their defaults.
    """

    def __init__(self, config: Optional[PatcherConfig] = None, *, scorer: Optional[nn.Module] = None,
                 precision: str = "auto", chunk_len: Optional[int] = None, batch_size: int = 16, **overrides):
        names = {f.name for f in fields(PatcherConfig)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown patcher settings {unknown}; known: {sorted(names)}")
        cfg = replace(config or PatcherConfig(), **overrides)
        cfg.validate()
        if cfg.learned:
            raise ValueError("scheme 'learned' has no patcher outside the model: the BLT's router places the "
                             "boundaries as it reads the bytes (bltkit.load(bundle).patch(text) shows them)")
        self.config = cfg.filled()
        self.scorer = scorer
        self.precision, self.chunk_len, self.batch_size = precision, chunk_len, batch_size

    @classmethod
    def from_config(cls, config: PatcherConfig, device=None, **kwargs) -> "Patcher":
        """A patcher for resolved settings (``resolve_patcher``), its entropy model loaded when the
        scheme needs one (or when one is named, for showing entropies)."""
        scorer = None
        if config.entropy_model is not None:  # the model kind sits above patching: named, not imported
            scorer = model_class("entropy").from_pretrained(config.entropy_model, device=device)
        return cls(config, scorer=scorer, **kwargs)

    @classmethod
    def from_entropy_model(cls, directory: str | os.PathLike, device=None, **overrides) -> "Patcher":
        """Entropy model and calibrated settings (``patcher.yaml``) from one directory; keyword
        overrides win over the file (``resolve_patcher``)."""
        passthrough = {k: overrides.pop(k) for k in ("precision", "chunk_len", "batch_size") if k in overrides}
        cfg = resolve_patcher(entropy_model=directory, overrides=overrides, ready=False)
        return cls.from_config(cfg, device=device, **passthrough)

    def entropies(self, rows: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-row entropies (nats) of ``rows`` under the scorer, as computed (not rounded)."""
        if self.scorer is None:
            raise ValueError(f"scheme {self.config.scheme!r} needs entropies: give the patcher a scorer "
                             "(an entropy model) or pass precomputed scores")
        return compute_entropies(self.scorer, rows, precision=self.precision, chunk_len=self.chunk_len,
                                 batch_size=self.batch_size)

    def __call__(self, inputs: Inputs, include_next_token: bool = True, scores=None) -> PatchResult:
        """Patch lengths of ``inputs``; ``scores`` (entropies, (B, T) or one a row) instead of the
        scorer's. ``result.scores`` are the entropies thresholded (float16-rounded when
        ``entropies_fp16``)."""
        cfg = self.config
        cfg.check_ready()
        rows = to_rows(inputs)
        for i, r in enumerate(rows):
            check_ids(r, name=f"row {i} ids")
        lengths = torch.tensor([int(r.numel()) for r in rows], dtype=torch.int64)
        flat_ids = torch.cat([r.cpu() for r in rows]) if rows else torch.zeros(0, dtype=torch.int64)
        flat = None
        if cfg.needs_scores:
            flat = _flat_scores(scores if scores is not None else self.entropies(rows), rows)
            if cfg.entropies_fp16:
                flat = flat.half().float()
        row, _, start = start_mask(cfg.scheme, lengths, int(include_next_token), scores=flat, ids=flat_ids,
                                   threshold=cfg.threshold, threshold_add=cfg.threshold_add,
                                   patch_size=cfg.patch_size)
        if cfg.max_patch_length is not None:
            start = split_long(start, cfg.max_patch_length)
        pl = lengths_from_starts(start, row, len(rows))  # (B, P)
        score_mat = None
        if flat is not None:
            t = int(lengths.max()) if len(rows) else 0
            score_mat = torch.zeros(len(rows), t)
            mask = torch.arange(t)[None] < lengths[:, None]  # (B, T)
            score_mat[mask] = flat
        return PatchResult(pl, score_mat, lengths)

    def document_lengths(self, ids: torch.Tensor, scores: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Lengths (P,) of one training document (BOS…EOS), summing to its length (docs/reference-semantics.md §4.5)."""
        return self(ids.reshape(1, -1), include_next_token=False,
                    scores=None if scores is None else scores.reshape(1, -1)).patch_lengths[0]
