"""Training task for the H-Net (``kind: hnet``; docs/hnet.md, arXiv 2507.07955 §2.2.3).

The same packed byte rows as the entropy model and the byte LM (no patch lengths: the model
chooses its chunks). The objective is ``cross-entropy + alpha * ratio loss``: the cross-entropy
is what the loop logs as ``loss`` and what held-out bits per byte measure; the ratio loss enters
the gradient as a penalty (``Task.loss``'s third value) and is logged beside it, per optimiser
step, with the achieved compression:

- ``ratio_loss``: the mean over the step's micro-batches (each computed over its real bytes);
- ``boundary_fraction`` F (the fraction of real bytes that open a chunk) and ``bytes_per_chunk``
  (1/F, the achieved compression; also the loop's ``mean_patch_length``);
- ``warning``, when compression collapses: rows whose every byte opens a chunk, or rows with no
  chunk beyond the forced starts (the row's first byte and each document's). The run goes on;
  the record says so instead of a silent NaN.

The objective and these figures are ``routing.RoutingObjective``'s, shared with the BLT's learned
patches.

Training FLOPs count the chunks the router chose in each micro-batch (``flops.hnet_forward_flops``);
a budget is planned at the target compression (``planning_flops_per_batch``).
The finished run directory is a bundle of kind ``hnet``; ``model:`` names a config under
``configs/hnet/``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .. import config as cfgio
from ..bundle import save_bundle
from .config import TrainConfig
from .flops import even_boundaries, hnet_forward_flops, training_flops
from .routing import RoutingObjective
from .task import Task, instantiate_with_state, masked_nats


class HNetTask(Task):
    kind = "hnet"

    def __init__(self, cfg: TrainConfig, config_dir: Optional[Path] = None):
        from ..model.hnet_config import load_hnet_config

        super().__init__(cfg, config_dir)
        if cfg.task:
            raise ValueError(f"the run config's task: is not read by kind 'hnet' (got keys {sorted(cfg.task)}); "
                             f"the chunking settings live in the model config (chunking.target_ratio, "
                             f"chunking.ratio_loss_weight)")
        self.model_cfg = load_hnet_config(self.resolve_path(cfg.model), cfg.model_overrides)
        ch = self.model_cfg.chunking
        self._objective = RoutingObjective(ch.target_ratio, ch.ratio_loss_weight, "chunk")
        self._step: dict[str, Any] = {"flops": 0, "chunks": 0}

    # ---- model ----------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from ..model.hnet import HNet

        return HNet(self.model_cfg)

    def model_config_dict(self) -> dict:
        return cfgio.to_dict(self.model_cfg)

    def model_from_state(self, state: dict[str, torch.Tensor]) -> nn.Module:
        from ..model.hnet import HNet

        return instantiate_with_state(HNet, self.model_cfg, state)

    def save_bundle(self, model: nn.Module, out_dir: Path) -> None:
        save_bundle(out_dir, model, "hnet", patcher={})

    # ---- objective ------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        valid = batch["mask"].bool()  # input t is real when its target is
        out = model(batch["ids"], validate=False, valid=valid, return_routing=True)
        nats, n = masked_nats(out.logits, batch["targets"], batch["mask"])
        return nats, n, self._objective.penalty(batch["ids"], out.routing, out.starts, valid, n)

    def eval_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch["ids"], validate=False, valid=batch["mask"].bool())
        return masked_nats(logits, batch["targets"], batch["mask"])

    # ---- accounting -----------------------------------------------------------------------------
    def step_stats(self) -> dict[str, float]:
        stats, micro = self._objective.step_stats()
        flops = sum(training_flops(sum(hnet_forward_flops(self.model_cfg, m["ids"], m["boundary"]).values()))
                    for m in micro)
        self._step = {"flops": flops, "chunks": sum(m["boundaries"] for m in micro)}
        return stats

    def step_metrics(self, stats: dict[str, float]) -> dict[str, Any]:
        return self._objective.step_metrics(stats)

    def flops_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        return int(self._step["flops"])

    def planning_flops_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        """At the target compression: chunks ``chunking.target_ratio`` bytes apart (``even_boundaries``)."""
        bnd = even_boundaries(batch["mask"].bool(), self.model_cfg.chunking.target_ratio)
        return training_flops(sum(hnet_forward_flops(self.model_cfg, batch["ids"], bnd).values()))

    def n_patches(self, batch: dict[str, torch.Tensor]) -> int:
        return int(self._step["chunks"])


__all__ = ["HNetTask"]
