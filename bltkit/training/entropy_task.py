"""Training task for the entropy model (``kind: entropy``; docs/reference-semantics.md §3, §12.2).

The entropy model is a plain byte LM, ``model(ids) -> logits``, trained with the same loop as
BLT on the same packed rows (no patch lengths). Unlike the reference's BYTES packing, the final
target of a row is a real next byte by default (``data.final_target: next``), never a masked pad
(docs/reference-semantics.md §12.2; data.py). FLOPs are a
plain LM's: blocks with the local window cut at documents, plus the head (flops.py). The finished
run directory is a bundle of kind ``entropy`` whose ``model/`` (config.yaml + model.safetensors)
loads with ``EntropyModel.from_pretrained``; ``model:`` names a config under ``configs/entropy/``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .. import config as cfgio
from ..bundle import save_bundle
from .config import TrainConfig
from .flops import lm_forward_flops, training_flops
from .task import Task, instantiate_with_state, masked_nats


class EntropyTask(Task):
    kind = "entropy"

    def __init__(self, cfg: TrainConfig, config_dir: Optional[Path] = None):
        from entropy_model.model import load_entropy_config

        super().__init__(cfg, config_dir)
        self.model_cfg = load_entropy_config(self.resolve_path(cfg.model), cfg.model_overrides)

    def build_model(self) -> nn.Module:
        from entropy_model.model import EntropyModel

        return EntropyModel(self.model_cfg)

    def model_config_dict(self) -> dict:
        return cfgio.to_dict(self.model_cfg)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch["ids"], validate=False)  # (B, N, V) fp32
        return masked_nats(logits, batch["targets"], batch["mask"])

    def flops_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        c = self.model_cfg
        return training_flops(lm_forward_flops(batch["ids"], c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim,
                                               c.hidden, c.vocab_size, c.window, c.doc_reset))

    def model_from_state(self, state: dict[str, torch.Tensor]) -> nn.Module:
        from entropy_model.model import EntropyModel

        return instantiate_with_state(EntropyModel, self.model_cfg, state)

    def save_bundle(self, model: nn.Module, out_dir: Path) -> None:
        save_bundle(out_dir, model, "entropy", patcher={})
