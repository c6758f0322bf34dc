"""Patch lengths for training documents, from the run's ``patcher:`` settings (blt-reference §3).

An adapter between the trainer and the patching package (``bltkit.patching``): it turns
``patcher: {scheme: ...}`` into a function ``document ids (T,) -> lengths (P,)`` summing to T
(``include_next_token=False``, §3.5), the form the packer needs, with an optional batched form
``batch(docs)`` and, for entropy patching, ``flops(ids)`` (the entropy model's cost, reported
apart from training FLOPs) and the entropy model directory (copied into the final bundle).

- ``static`` / ``space`` / ``byte``: ``bltkit.patching.Patcher`` with those settings;
- ``entropy`` / ``monotonic``: ``bltkit.patching.entropy.document_patch_fn``, which loads the
  entropy model named by ``entropy_model`` (a model directory, or a ``train-entropy`` run /
  bundle directory, whose ``model/`` is used) and its calibrated ``patcher.yaml``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

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
        em_dir = resolve_entropy_model_dir(str(settings["entropy_model"]), config_dir)
        fn = document_patch_fn(dict(settings, entropy_model=str(em_dir)))
        fn.model_dir = em_dir
        return fn
    if scheme not in ("static", "space", "byte"):
        raise ValueError(f"patcher.scheme must be one of static, space, byte, entropy, monotonic; got {scheme!r}")
    cfg = cfgio.from_dict(PatcherConfig, settings, source="the run config's patcher:", prefix="patcher")
    return DocumentPatchFn(Patcher(cfg))
