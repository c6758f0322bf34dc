"""Training task for the Byte Latent Transformer (``kind: blt``; docs/reference-semantics.md §12).

The loss is per-byte cross-entropy over real targets (docs/reference-semantics.md §12.1), the model fed packed rows whose
patch lengths come from the run's document patcher (patch_source.py). FLOPs follow flops.py per batch, so
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
from ..bundle import ENTROPY_SUBDIR, save_bundle
from ..model.blt import ByteLatentTransformer, load_blt_config
from ..model.config import BLTConfig
from ..patching.documents import DocumentPatcher
from .config import TrainConfig
from .data import patched_sources
from .flops import blt_forward_flops, lm_forward_flops, training_flops
from .patch_source import document_patcher
from .task import Task, instantiate_with_state, masked_nats


class BLTTask(Task):
    kind = "blt"

    def __init__(self, cfg: TrainConfig, config_dir: Optional[Path] = None):
        super().__init__(cfg, config_dir)
        self.model_cfg: BLTConfig = load_blt_config(self.resolve_path(cfg.model), cfg.model_overrides)
        self._patcher = document_patcher(cfg.patcher, config_dir)  # fails early on bad settings
        self._patcher.check_sources(patched_sources(self.data))  # precomputed entropies must cover them
        self._em_config = None  # the entropy model's config, read on first use (its patching FLOPs)

    def patcher(self) -> DocumentPatcher:
        return self._patcher

    def build_model(self) -> nn.Module:
        model = ByteLatentTransformer(self.model_cfg)
        from .blt_init import apply_blt_init  # task.init_from / init_global_from (docs/fixed-k.md)

        apply_blt_init(model, self.cfg.task, self.resolve_path)
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
        em = self._patcher.entropy_model_dir
        if em is None:  # no entropy model, no patching cost
            return {}
        if self._em_config is None:
            from entropy_model.model import EntropyModelConfig

            from ..weights import CONFIG_FILE

            self._em_config = cfgio.from_dict(EntropyModelConfig, cfgio.read_yaml(em / CONFIG_FILE), source=str(em))
        c = self._em_config  # the entropy model's forward, once a byte (paid offline when precomputed)
        return {"entropy_flops": int(lm_forward_flops(batch["ids"], c.dim, c.n_layers, c.n_heads, c.n_kv_heads,
                                                      c.head_dim, c.hidden, c.vocab_size, c.window, c.doc_reset))}

    def n_patches(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["patch_lengths"] > 0).sum())

    def mean_patch_length(self, batch: dict[str, torch.Tensor]) -> Optional[float]:
        pl = batch["patch_lengths"]
        return float(pl.sum()) / max(1, int((pl > 0).sum()))

    def model_from_state(self, state: dict[str, torch.Tensor]) -> nn.Module:
        return instantiate_with_state(ByteLatentTransformer, self.model_cfg, state)

    def save_bundle(self, model: nn.Module, out_dir: Path) -> None:
        # The settings the run used, resolved (a calibrated threshold included), so the bundle
        # patches as training did without reading anything else.
        em = self._patcher.entropy_model_dir
        patcher = self._patcher.config.for_bundle(ENTROPY_SUBDIR if em is not None else None)
        save_bundle(out_dir, model, "blt", patcher=patcher, entropy_model=em)


__all__ = ["BLTTask"]
