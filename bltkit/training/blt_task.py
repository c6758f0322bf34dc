"""Training task for the Byte Latent Transformer (``kind: blt``; blt-reference §7).

The loss is per-byte cross-entropy over real targets (§7.1), the model fed packed rows whose
patch lengths come from the run's patcher (patch_source.py). FLOPs follow flops.py per batch, so
the global model's share tracks the batch's real mean patch length. The finished run is a bundle
with ``kind: blt`` and the patcher settings; with entropy patching the entropy model directory is
copied in as ``entropy_model/``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .. import config as cfgio
from ..bundle import save_bundle
from ..model.blt import ByteLatentTransformer, load_blt_config
from ..model.config import BLTConfig
from .batches import PatchFn
from .config import TrainConfig
from .flops import blt_forward_flops, training_flops
from .packed_task import PackedDataTask
from .patch_source import bundle_patcher_settings, make_patch_fn
from .task import instantiate_with_state, masked_nats


class BLTTask(PackedDataTask):
    kind = "blt"

    def __init__(self, cfg: TrainConfig, config_dir: Optional[Path] = None):
        super().__init__(cfg, config_dir)
        self.model_cfg: BLTConfig = load_blt_config(self._model_path(cfg.model), cfg.model_overrides)
        self._patch_fn = make_patch_fn(cfg.patcher, config_dir)  # fails early on bad settings
        check = getattr(self._patch_fn, "check_sources", None)
        if check is not None:  # precomputed entropies must cover every source the run patches
            check(self.patched_sources())

    def _model_path(self, name: str) -> str:
        p = Path(name)
        if self.config_dir is not None and not p.is_absolute() and not p.exists() and (self.config_dir / p).is_file():
            return str(self.config_dir / p)
        return name

    def patch_fn(self) -> PatchFn:
        return self._patch_fn

    def build_model(self) -> nn.Module:
        model = ByteLatentTransformer(self.model_cfg)
        from ..patchtrain.blt_init import apply_blt_init  # task.init_from / init_global_from (patch training)

        apply_blt_init(model, self.cfg.task, self._resolve)
        return model

    def model_config_dict(self) -> dict:
        return cfgio.to_dict(self.model_cfg)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # Packed batches satisfy the patch conventions by construction: skip the host-syncing checks.
        logits = model(batch["ids"], batch["patch_lengths"], validate=False)  # (B, N, V) fp32
        return masked_nats(logits, batch["targets"], batch["mask"])

    def flops_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        return training_flops(sum(blt_forward_flops(self.model_cfg, batch["ids"], batch["patch_lengths"]).values()))

    def extra_flops_per_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, int]:
        if getattr(self._patch_fn, "model_dir", None) is None:  # no entropy model, no patching cost
            return {}
        return {"entropy_flops": int(self._patch_fn.flops(batch["ids"]))}  # once a byte, forward only

    def n_patches(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["patch_lengths"] > 0).sum())

    def mean_patch_length(self, batch: dict[str, torch.Tensor]) -> Optional[float]:
        pl = batch["patch_lengths"]
        return float(pl.sum()) / max(1, int((pl > 0).sum()))

    def model_from_state(self, state: dict[str, torch.Tensor]) -> nn.Module:
        return instantiate_with_state(ByteLatentTransformer, self.model_cfg, state)

    def save_bundle(self, model: nn.Module, out_dir: Path) -> None:
        patcher = bundle_patcher_settings(self.cfg.patcher)  # no training-only keys (precomputed...)
        em = None
        if patcher.get("scheme") == "entropy":
            em = getattr(self._patch_fn, "model_dir", None) or patcher["entropy_model"]
            patcher["entropy_model"] = "entropy_model"  # inside the bundle
            inner = getattr(getattr(self._patch_fn, "patcher", None), "config", None)
            if inner is not None and getattr(inner, "threshold", None) is not None:
                patcher["threshold"] = inner.threshold  # the one used, maybe from patcher.yaml
        save_bundle(out_dir, model, "blt", patcher=patcher, entropy_model=em)


__all__ = ["BLTTask"]
