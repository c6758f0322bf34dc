"""Patch lengths for training documents, from the run's ``patcher:`` settings (blt-reference §3).

An adapter between the trainer and the patching package (``bltkit.patching``): it turns
``patcher: {scheme: ...}`` into a function ``document ids (T,) -> lengths (P,)`` summing to T
(``include_next_token=False``, §3.5), the form the packer needs, with an optional batched form
``batch(docs)`` and, for entropy patching, ``flops(ids)`` (the entropy model's cost, reported
apart from training FLOPs) and the entropy model directory (copied into the final bundle).

- ``static`` / ``space`` / ``byte``: ``bltkit.patching.Patcher`` with those settings;
- ``entropy`` / ``monotonic``: the entropy model named by ``entropy_model`` (a model directory,
  or a ``train-entropy`` run / bundle directory, whose ``model/`` is used) and its calibrated
  ``patcher.yaml`` (``bltkit.patching.entropy.document_patch_fn``). Two training-only settings:

  - ``precomputed: DIR`` -- entropies read from ``bltkit precompute`` shards (precomputed.py)
    instead of running the model; the shards must match the model and the run's data;
  - ``entropies_fp16: true`` (default) -- entropies are rounded to float16 before thresholding,
    as the reference stores its training entropies (§2; pitfall 13) and as the shards hold
    them, so on-the-fly and precomputed patching give the same batches bit for bit. ``false``
    thresholds the float32 entropies (boundaries within a float16 step of θ can move).
    Precomputed entropies are float16 either way.

  Neither goes into the finished bundle's patcher settings (inference computes its entropies).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from .. import config as cfgio
from .batches import PatchFn


def resolve_entropy_model_dir(path: str, config_dir: Optional[Path]) -> Path:
    """The directory holding the entropy model's weights (a run or bundle directory: its ``model/``)."""
    p = Path(path)
    if not p.is_absolute() and not p.exists() and config_dir is not None and (config_dir / p).exists():
        p = config_dir / p
    if not p.is_dir():
        raise FileNotFoundError(f"entropy model directory not found: {p}")
    if not (p / "model.safetensors").is_file() and (p / "model" / "model.safetensors").is_file():
        p = p / "model"
    return p


TRAINING_ONLY = ("precomputed", "entropies_fp16")  # patcher keys the trainer reads, not PatcherConfig


class EntropyDocumentPatchFn:
    """Entropy-scheme document patching with float16-rounded (or stored) entropies.

    Wraps the patching package's ``DocumentPatchFn`` (``.patcher``: settings and scorer): the
    entropies come from ``precomputed`` when given, else from the scorer, and are thresholded by
    the same patcher either way.
    """

    names_documents = True  # batch(docs, where) takes document names for its errors (batches.py)

    def __init__(self, inner, model_dir: Path, fp16: bool = True, precomputed=None):
        self.inner, self.patcher, self.model_dir = inner, inner.patcher, model_dir
        self.fp16, self.precomputed = fp16, precomputed

    def scores(self, docs: list[torch.Tensor], where: Optional[list[str]] = None) -> list[torch.Tensor]:
        """Per-document fp32 entropies (T_d,) of ``docs`` (float16 values unless fp16 is off)."""
        if self.precomputed is not None:
            names = where or [f"document {i}" for i in range(len(docs))]
            return [self.precomputed.entropies(d, w) for d, w in zip(docs, names)]
        ents = self.patcher.entropies(docs)
        return [e.cpu().to(torch.float16).float() if self.fp16 else e.cpu().float() for e in ents]

    def batch(self, docs: list[torch.Tensor], where: Optional[list[str]] = None) -> list[torch.Tensor]:
        """Lengths of several documents (each summing to its length), one scorer pass."""
        if not docs:
            return []
        res = self.patcher(docs, include_next_token=False, scores=self.scores(docs, where))
        return [torch.tensor(r, dtype=torch.int64) for r in res.rows()]

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return self.batch([ids.reshape(-1)])[0]

    def keyed(self, ids: torch.Tensor, key) -> torch.Tensor:
        """The streaming loader's ``keyed_patch_fn``: errors name the source and document."""
        return self.batch([ids.reshape(-1)], [f"source {key.source!r} document {key.index}"])[0]

    def flops(self, ids: torch.Tensor) -> int:
        """The entropy model's forward FLOPs over ``ids`` (B, T): the patching cost, paid offline
        when precomputed (measurement.md reports it apart either way)."""
        return self.inner.flops(ids)

    def check_sources(self, run_sources) -> None:
        """With precomputed entropies: every (spec, role) the run patches must be in the shards."""
        if self.precomputed is not None:
            self.precomputed.check_sources(run_sources)


def make_patch_fn(patcher: dict[str, Any], config_dir: Optional[Path] = None) -> PatchFn:
    """The document patch function of ``patcher`` (a ``scheme`` plus its settings)."""
    from ..patching.config import PatcherConfig
    from ..patching.entropy import DocumentPatchFn, document_patch_fn
    from ..patching.patcher import Patcher

    settings = dict(patcher)
    scheme = settings.get("scheme")
    if scheme in ("entropy", "monotonic"):
        if not settings.get("entropy_model"):
            raise ValueError(f"patcher.scheme {scheme!r} needs patcher.entropy_model: the directory of a trained "
                             "entropy model (bltkit train-entropy)")
        fp16 = settings.pop("entropies_fp16", True)
        if not isinstance(fp16, bool):
            raise ValueError(f"patcher.entropies_fp16 must be true or false, got {fp16!r}")
        shards_dir = settings.pop("precomputed", None)
        em_dir = resolve_entropy_model_dir(str(settings["entropy_model"]), config_dir)
        inner = document_patch_fn(dict(settings, entropy_model=str(em_dir)))
        shards = None
        if shards_dir:
            from .precomputed import PrecomputedEntropies

            shards = PrecomputedEntropies(_beside(str(shards_dir), config_dir), em_dir)
        return EntropyDocumentPatchFn(inner, em_dir, fp16=fp16, precomputed=shards)
    if scheme not in ("static", "space", "byte"):
        raise ValueError(f"patcher.scheme must be one of static, space, byte, entropy, monotonic; got {scheme!r}")
    given = sorted(k for k in TRAINING_ONLY if k in settings)
    if given:
        raise ValueError(f"patcher.{given[0]} only applies to scheme entropy or monotonic, not {scheme!r}")
    cfg = cfgio.from_dict(PatcherConfig, settings, source="the run config's patcher:", prefix="patcher")
    return DocumentPatchFn(Patcher(cfg))


def _beside(path: str, config_dir: Optional[Path]) -> Path:
    """A relative path as given when it exists, else beside the run config."""
    p = Path(path)
    if not p.is_absolute() and not p.exists() and config_dir is not None and (config_dir / p).exists():
        return config_dir / p
    return p


def bundle_patcher_settings(patcher: dict[str, Any]) -> dict[str, Any]:
    """The run's patcher settings without the training-only keys (for ``bundle.yaml``)."""
    return {k: v for k, v in patcher.items() if k not in TRAINING_ONLY}
