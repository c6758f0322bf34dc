"""Patch lengths of training documents: the one "document -> patch lengths" type the data
pipeline calls (docs/reference-semantics.md, "Patch lengths and alignment").

A training document is BOS + bytes + EOS; its lengths sum to its length
(``include_next_token=False``). ``DocumentPatcher`` wraps a ``Patcher`` built from resolved
settings (``resolve_patcher``) and patches many documents in one scorer pass. Entropies come from
the patcher's entropy model, or from a ``scores`` source (precomputed shards: any object with
``entropies(ids, where) -> (T,)`` and ``check_sources(run_sources)``), and go through the same
rule either way, so the batches are equal.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol, Sequence

import torch

from .config import PatcherConfig
from .patcher import Patcher


class ScoreSource(Protocol):
    def entropies(self, ids: torch.Tensor, where: str = ...) -> torch.Tensor: ...

    def check_sources(self, run_sources: Sequence[tuple[str, str]]) -> None: ...


class DocumentPatcher:
    """``lengths(docs, names)``: each document's patch lengths (P_d,), summing to its length;
    ``names`` (one a document) go into errors. ``patcher``: the settings (``.config``) and scorer."""

    def __init__(self, patcher: Patcher, scores: Optional[ScoreSource] = None):
        self.patcher, self.scores = patcher, scores

    @classmethod
    def from_config(cls, config: PatcherConfig, scores: Optional[ScoreSource] = None, device=None) -> "DocumentPatcher":
        """From resolved settings; the entropy model is not loaded when ``scores`` provides entropies."""
        if scores is not None or not config.needs_scores:
            return cls(Patcher(config), scores)
        return cls(Patcher.from_config(config, device=device))

    @property
    def config(self) -> PatcherConfig:
        return self.patcher.config

    @property
    def entropy_model_dir(self) -> Optional[Path]:
        """The entropy model the patches depend on (None for schemes that need none)."""
        c = self.config
        return Path(c.entropy_model) if c.needs_scores and c.entropy_model else None

    def _scores(self, docs: list[torch.Tensor], names: list[str]) -> Optional[list[torch.Tensor]]:
        if not self.config.needs_scores:
            return None
        if self.scores is not None:
            return [self.scores.entropies(d, w) for d, w in zip(docs, names)]
        return self.patcher.entropies(docs)

    def lengths(self, docs: Sequence[torch.Tensor], names: Optional[Sequence[str]] = None) -> list[torch.Tensor]:
        docs = [d.reshape(-1) for d in docs]
        if not docs:
            return []
        names = list(names) if names is not None else [f"document {i}" for i in range(len(docs))]
        res = self.patcher(docs, include_next_token=False, scores=self._scores(docs, names))
        return [torch.tensor(r, dtype=torch.int64) for r in res.rows()]

    def __call__(self, ids: torch.Tensor, name: str = "a document") -> torch.Tensor:
        return self.lengths([ids], [name])[0]

    def check_sources(self, run_sources: Sequence[tuple[str, str]]) -> None:
        """With a score source (precomputed entropies): every (spec, role) the run patches must be in it."""
        if self.scores is not None:
            self.scores.check_sources(run_sources)


__all__ = ["DocumentPatcher", "ScoreSource"]
