"""The run's document patcher, from its ``patcher:`` settings (docs/patching.md).

``document_patcher(cfg.patcher, config_dir)`` resolves the settings with the one resolution
(``bltkit.patching.resolve_patcher``: the entropy model's calibrated ``patcher.yaml`` under the
run's values; relative paths also beside the run config) and returns a
``bltkit.patching.DocumentPatcher``. With ``precomputed: DIR`` the entropies come from
``bltkit precompute`` shards (precomputed.py) instead of running the entropy model; the shards
must match the model and the run's data. Entropies are rounded to float16 before thresholding
unless ``entropies_fp16: false``, as the shards store them, so on-the-fly and precomputed patching
give the same batches bit for bit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..patching.config import PatcherConfig, resolve_patcher
from ..patching.documents import DocumentPatcher


def document_patcher(patcher: PatcherConfig | dict, config_dir: Optional[Path] = None) -> DocumentPatcher:
    """The document patcher of the run's ``patcher`` settings (a config or its mapping)."""
    from .. import config as cfgio

    cfg = resolve_patcher(patcher, base_dir=config_dir, source="the run config's patcher")
    shards = None
    if cfg.precomputed:
        from .precomputed import PrecomputedEntropies

        shards = PrecomputedEntropies(cfgio.resolve_path(cfg.precomputed, config_dir), cfg.entropy_model)
    return DocumentPatcher.from_config(cfg, scores=shards)


__all__ = ["document_patcher"]
