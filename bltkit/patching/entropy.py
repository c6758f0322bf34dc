"""Entropy patching for training documents: the bridge the trainer's ``patcher: {scheme: entropy}``
goes through (``bltkit.training.patch_source``; blt-reference §3.5, §7.3 step 2).

``document_patch_fn(settings)`` loads the entropy model named by ``settings["entropy_model"]``
once, fills unset settings from its calibrated ``patcher.yaml``, and returns a callable
``ids (T,) -> lengths (P,)`` with ``include_next_token=False`` (lengths sum to T). It also reports
the entropy model's forward FLOPs over a batch (``flops``), which measurement.md keeps separate.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

import torch

from .. import config as cfgio
from .config import PatcherConfig, load_patcher_settings
from .patcher import Patcher


class DocumentPatchFn:
    def __init__(self, patcher: Patcher):
        self.patcher = patcher

    def __call__(self, ids: torch.Tensor, scores: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.patcher.document_lengths(ids, scores)

    def batch(self, docs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Lengths of several documents in one scorer pass (faster than one call each)."""
        res = self.patcher(docs, include_next_token=False)
        return [torch.tensor(r, dtype=torch.int64) for r in res.rows()]

    def flops(self, ids: torch.Tensor) -> int:
        """Forward FLOPs of the entropy model over ``ids`` (B, T)."""
        from ..training.flops import lm_forward_flops

        c = self.patcher.scorer.config
        return lm_forward_flops(ids, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.hidden,
                                c.vocab_size, c.window, c.doc_reset)


def document_patch_fn(settings: dict[str, Any], device=None) -> DocumentPatchFn:
    """A document patch function from trainer ``patcher:`` settings (``entropy_model`` required;
    other ``PatcherConfig`` keys override the model's ``patcher.yaml``)."""
    data = dict(settings)
    data.setdefault("scheme", "entropy")
    em_dir = data.get("entropy_model")
    if not em_dir:
        raise ValueError("entropy patching needs entropy_model: the directory of a trained entropy model")
    base = load_patcher_settings(em_dir) or PatcherConfig()
    given = cfgio.from_dict(PatcherConfig, data, source="patcher settings")
    merged = replace(base, **{k: getattr(given, k) for k in data})
    patcher = Patcher.from_entropy_model(em_dir, device=device, **{k: getattr(merged, k) for k in
                                                                   ("scheme", "threshold", "threshold_add",
                                                                    "patch_size", "max_patch_length")})
    patcher.config.check_ready()
    return DocumentPatchFn(patcher)
