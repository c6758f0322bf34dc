"""The trainer's ``Task`` for kind ``bytelm`` (``bltkit.training.task``): one loop for every kind.

``task:`` settings of a run config (``ByteLMTaskSettings``, unknown keys rejected):

- ``patch_size`` K: 1 trains next-byte (rows of ``data.seq_len`` = T bytes); K > 1 is the patch
  phase (rows of K*T bytes read as T mean-pooled patches, each position's targets the K bytes of
  the next patch: the one data pipeline with ``target_shift=K``; the bag-of-K loss, loss.py);
- ``init_from``: a bundle or model directory whose weights start the run (the phase transition:
  weights only, a fresh optimiser and schedule, docs/fixed-k.md "The method");
- ``patch_row_bytes``: bytes a patch-phase row (default K*T); must be a multiple of K.

Held-out batches are always byte-level rows of ``data.seq_len`` (the same rows the BLT task
scores), so held-out bits per byte compare across phases and kinds. Training FLOPs count the
backbone over the row's T positions (mean pooling and look-ups are free, docs/measurement.md §2), so a
patch-phase row costs what a byte-phase row costs while consuming K times the bytes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .. import config as cfgio
from ..bundle import save_bundle, weights_file
from ..data.vocab import EOS_ID
from ..weights import load_weights_into
from ..training.config import TrainConfig
from ..training.data import DataLoader
from ..training.flops import lm_forward_flops, training_flops
from ..training.task import Task, instantiate_with_state, masked_nats
from .config import ByteLMConfig, load_bytelm_config
from .loss import patch_nats
from .model import ByteLM, check_patch_size


@dataclass
class ByteLMTaskSettings:
    patch_size: int = 1
    init_from: Optional[str] = None
    patch_row_bytes: Optional[int] = None

    def validate(self) -> None:
        if self.patch_size < 1:
            raise ValueError(f"task.patch_size K must be >= 1, got {self.patch_size}")
        if self.patch_row_bytes is not None and (self.patch_row_bytes < self.patch_size
                                                 or self.patch_row_bytes % self.patch_size):
            raise ValueError(f"task.patch_row_bytes {self.patch_row_bytes} is not a positive multiple of the "
                             f"patch size K={self.patch_size}")


class ByteLMTask(Task):
    kind = "bytelm"

    def __init__(self, cfg: TrainConfig, config_dir: Optional[Path] = None):
        super().__init__(cfg, config_dir)
        self.settings = cfgio.from_dict(ByteLMTaskSettings, cfg.task, source="the run config's task:", prefix="task")
        self.model_cfg: ByteLMConfig = load_bytelm_config(self.resolve_path(cfg.model), cfg.model_overrides)
        k = self.settings.patch_size
        self.patch_size = k
        self.n_positions = (self.settings.patch_row_bytes // k) if self.settings.patch_row_bytes else cfg.data.seq_len
        if self.settings.init_from is not None:
            self._init_path = weights_file(self.resolve_path(self.settings.init_from))  # fails early

    # ---- model ----------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        model = ByteLM(self.model_cfg)
        if self.settings.init_from is not None:
            load_weights_into(model, self._init_path)  # weights only: optimiser and schedule start afresh
        return model

    def model_config_dict(self) -> dict:
        return cfgio.to_dict(self.model_cfg)

    def model_from_state(self, state: dict[str, torch.Tensor]) -> nn.Module:
        return instantiate_with_state(ByteLM, self.model_cfg, state)

    def save_bundle(self, model: nn.Module, out_dir: Path) -> None:
        save_bundle(out_dir, model, "bytelm", patcher={})

    # ---- data -----------------------------------------------------------------------------------
    def train_batches(self, rank: int, world_size: int) -> DataLoader:
        """Rows of K*T bytes whose targets are K bytes ahead (K = 1: the byte rows every kind reads);
        held-out batches stay the byte rows of ``data.seq_len`` (``Task.eval_batches``)."""
        data = dataclasses.replace(self.data, seq_len=self.patch_size * self.n_positions)
        return DataLoader(data, seed=self.cfg.seed, rank=rank, world_size=world_size, target_shift=self.patch_size)

    # ---- objective and accounting -----------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.patch_size
        check_patch_size(k, batch["ids"].shape[1])
        logits = model(batch["ids"], patch_size=k, validate=False)  # (B, T, V) fp32
        if k == 1:
            return masked_nats(logits, batch["targets"], batch["mask"])
        return patch_nats(logits, batch["targets"], batch["mask"])

    def eval_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch["ids"], patch_size=1, validate=False)  # (B, N, V): next-byte, both phases
        return masked_nats(logits, batch["targets"], batch["mask"])

    def flops_per_batch(self, batch: dict[str, torch.Tensor]) -> int:
        return training_flops(bytelm_forward_flops(self.model_cfg, batch["ids"], self.patch_size))

    def n_patches(self, batch: dict[str, torch.Tensor]) -> int:
        if self.patch_size == 1:
            return 0
        b, n = batch["mask"].shape
        return int(batch["mask"].view(b, n // self.patch_size, self.patch_size).any(-1).sum())

    def mean_patch_length(self, batch: dict[str, torch.Tensor]) -> Optional[float]:
        return float(self.patch_size) if self.patch_size > 1 else None


def bytelm_forward_flops(cfg: ByteLMConfig, ids: torch.Tensor, patch_size: int = 1) -> int:
    """Forward FLOPs of ByteLM over ``ids`` (B, K*T) read as T positions (training.flops conventions):
    the backbone's blocks over T positions with the (block-)causal prefix, and the head."""
    ids = ids.detach().cpu()
    b, n = ids.shape
    check_patch_size(patch_size, n)
    if patch_size > 1:  # one stand-in id a patch: EOS where the patch holds one, so documents match
        has_eos = (ids == EOS_ID).view(b, n // patch_size, patch_size).any(-1)
        ids = torch.where(has_eos, torch.full_like(has_eos, EOS_ID, dtype=torch.int64), torch.full_like(has_eos, 5, dtype=torch.int64))
    return lm_forward_flops(ids, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.hidden,
                            cfg.vocab_size, None, cfg.doc_reset)


__all__ = ["ByteLMTask", "ByteLMTaskSettings", "bytelm_forward_flops"]
