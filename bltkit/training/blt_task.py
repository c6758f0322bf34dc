"""Training task for the Byte Latent Transformer (``kind: blt``; docs/reference-semantics.md §12).

The loss is per-byte cross-entropy over real targets (docs/reference-semantics.md §12.1), the model fed packed rows whose
patch lengths come from the run's document patcher (patch_source.py). FLOPs follow flops.py per batch, so
the global model's share tracks the batch's real mean patch length. The finished run is a bundle
with ``kind: blt`` and the patcher settings; with entropy patching the entropy model directory is
copied in as ``entropy_model/``.

``patcher: {scheme: learned, target_ratio: N}`` trains a BLT that places its own boundaries
(``boundaries: learned``, bltkit.model.learned; docs/patching.md, "Learned boundaries"): rows are
fixed byte windows with no patch lengths (each batch has as many patches as the router opens),
the objective adds ``ratio_loss_weight * ratio loss`` toward N (``routing.RoutingObjective``), and
the metrics carry ``ratio_loss``, ``boundary_fraction`` and ``bytes_per_patch`` beside the loss.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .. import config as cfgio
from ..bundle import ENTROPY_SUBDIR, save_bundle
from ..patching.config import resolve_patcher
from ..patching.lengths import lengths_from_boundaries
from ..model.blt import ByteLatentTransformer, load_blt_config
from ..model.config import BLTConfig
from ..patching.documents import DocumentPatcher
from .config import TrainConfig
from .data import patched_sources
from .flops import blt_forward_flops, even_boundaries, lm_forward_flops, training_flops
from .patch_source import document_patcher
from .routing import RoutingObjective
from .task import Task, instantiate_with_state, masked_nats


class BLTTask(Task):
    kind = "blt"

    def __init__(self, cfg: TrainConfig, config_dir: Optional[Path] = None):
        super().__init__(cfg, config_dir)
        self.model_cfg: BLTConfig = load_blt_config(self.resolve_path(cfg.model), cfg.model_overrides)
        patcher = resolve_patcher(cfg.patcher, base_dir=config_dir, source="the run config's patcher")
        self._objective: Optional[RoutingObjective] = None
        self._patcher: Optional[DocumentPatcher] = None
        self._em_config = None  # the entropy model's config, read on first use (its patching FLOPs)
        if patcher.learned:
            self.model_cfg = _learned_model_config(self.model_cfg)
            self._learned = patcher
            self._objective = RoutingObjective(patcher.target_ratio, patcher.ratio_loss_weight, "patch")
            self._step: dict[str, Any] = {"flops": 0, "patches": 0}
        else:
            if self.model_cfg.boundaries == "learned":
                raise ValueError(f"the model config says boundaries: learned, which needs the run config's "
                                 f"patcher: {{scheme: learned, target_ratio: N}} (got scheme {patcher.scheme!r})")
            self._patcher = document_patcher(cfg.patcher, config_dir)  # fails early on bad settings
            self._patcher.check_sources(patched_sources(self.data))  # precomputed entropies must cover them

    def patcher(self) -> Optional[DocumentPatcher]:
        return self._patcher  # None with learned boundaries: byte rows, no patch lengths

    def build_model(self) -> nn.Module:
        model = ByteLatentTransformer(self.model_cfg)
        from .blt_init import apply_blt_init  # task.init_from / init_global_from (docs/fixed-k.md)

        apply_blt_init(model, self.cfg.task, self.resolve_path)
        return model

    def model_config_dict(self) -> dict:
        return cfgio.to_dict(self.model_cfg)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        if self._objective is not None:  # learned boundaries: CE + alpha * ratio loss (a penalty)
            valid = batch["mask"].bool()  # input t is real when its target is
            out = model(batch["ids"], validate=False, valid=valid, return_routing=True)
            nats, n = masked_nats(out.logits, batch["targets"], batch["mask"])
            return nats, n, self._objective.penalty(batch["ids"], out.routing, out.starts, valid, n)
        # Packed batches satisfy the patch conventions by construction: skip the host-syncing checks.
        logits = model(batch["ids"], batch["patch_lengths"], validate=False)  # (B, N, V) fp32
        return masked_nats(logits, batch["targets"], batch["mask"])

    def eval_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._objective is not None:
            logits = model(batch["ids"], validate=False, valid=batch["mask"].bool())
            return masked_nats(logits, batch["targets"], batch["mask"])
        return self.loss(model, batch)

    def step_stats(self) -> dict[str, float]:
        if self._objective is None:
            return {}
        stats, micro = self._objective.step_stats()
        flops = 0
        for m in micro:
            pl = lengths_from_boundaries(m["boundary"], m["valid"])
            flops += training_flops(sum(blt_forward_flops(self.model_cfg, m["ids"], pl).values()))
        self._step = {"flops": flops, "patches": sum(m["boundaries"] for m in micro)}
        return stats

    def step_metrics(self, stats: dict[str, float]) -> dict[str, Any]:
        return self._objective.step_metrics(stats) if self._objective is not None else {}

    def flops_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        if self._objective is not None:  # the patches the router chose this step (step_stats)
            return int(self._step["flops"])
        return training_flops(sum(blt_forward_flops(self.model_cfg, batch["ids"], batch["patch_lengths"]).values()))

    def planning_flops_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        """Learned boundaries: at the target, patches ``target_ratio`` bytes apart (``even_boundaries``)."""
        if self._objective is None:
            return self.flops_per_batch(batch)
        valid = batch["mask"].bool()
        pl = lengths_from_boundaries(even_boundaries(valid, self._learned.target_ratio), valid)
        return training_flops(sum(blt_forward_flops(self.model_cfg, batch["ids"], pl).values()))

    def extra_flops_per_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, int]:
        if self._patcher is None:
            return {}
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
        if self._objective is not None:
            return int(self._step["patches"])
        return int((batch["patch_lengths"] > 0).sum())

    def mean_patch_length(self, batch: dict[str, torch.Tensor]) -> Optional[float]:
        if self._objective is not None:
            return float(batch["mask"].sum()) / max(1, int(self._step["patches"]))
        pl = batch["patch_lengths"]
        return float(pl.sum()) / max(1, int((pl > 0).sum()))

    def model_from_state(self, state: dict[str, torch.Tensor]) -> nn.Module:
        return instantiate_with_state(ByteLatentTransformer, self.model_cfg, state)

    def save_bundle(self, model: nn.Module, out_dir: Path) -> None:
        # The settings the run used, resolved (a calibrated threshold included), so the bundle
        # patches as training did without reading anything else.
        if self._patcher is None:
            save_bundle(out_dir, model, "blt", patcher=self._learned.for_bundle(None))
            return
        em = self._patcher.entropy_model_dir
        patcher = self._patcher.config.for_bundle(ENTROPY_SUBDIR if em is not None else None)
        save_bundle(out_dir, model, "blt", patcher=patcher, entropy_model=em)


def _learned_model_config(cfg: BLTConfig) -> BLTConfig:
    """The model config of a ``scheme: learned`` run: ``boundaries: learned``, validated (the
    router needs the encoder's cross step after its last layer only)."""
    out = replace(cfg, boundaries="learned")
    try:
        out.validate()
    except ValueError as e:
        raise ValueError(f"patcher scheme 'learned' does not fit the model config: {e}") from None
    return out


__all__ = ["BLTTask"]
