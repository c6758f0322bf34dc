"""Typed training configuration: one dataclass per concern, loaded from ``configs/train/*.yaml``.

A run's YAML names the model kind (``blt``, ``entropy``, ``bytelm``, ``hnet``), the model config (a shipped
name or a path, loaded by the kind's task), the data, the patcher, the optimiser
(docs/reference-semantics.md §13: AdamW 0.9/0.95, eps 1e-8, weight decay on every parameter by default), the schedule, and the
logging / checkpoint cadence. Unknown keys are errors naming the key and the file
(``bltkit.config.from_dict``). The resolved config is written beside every checkpoint.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional

from .. import config as cfgio
from ..patching.config import PatcherConfig
from .data import DataConfig


@dataclass
class OptimConfig:
    """AdamW (docs/reference-semantics.md §13; BLT paper appendix: lr 4e-4, betas 0.9/0.95, wd 0.1, clip 1.0)."""

    lr: float = 4e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    # The reference decays every parameter; true moves norms, biases and embedding tables to a
    # group without decay (the nanoGPT / torchtitan habit).
    no_decay_norms_embeddings: bool = False
    clip: float = 1.0  # global gradient-norm clip; 0 disables

    def validate(self) -> None:
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        for name, value, ok, rule in (("lr", self.lr, self.lr > 0, "> 0"), ("eps", self.eps, self.eps > 0, "> 0"),
                                      ("weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0"),
                                      ("clip", self.clip, self.clip >= 0, ">= 0 (0 disables clipping)")):
            if not (ok and math.isfinite(value)):
                raise ValueError(f"optim.{name} must be a finite number {rule}, got {value}")


@dataclass
class ScheduleConfig:
    """Learning-rate multiplier over steps (docs/reference-semantics.md §13): warmup, then cosine / WSD / constant."""

    kind: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup: int = 0  # linear warmup steps
    min_ratio: float = 0.1  # final LR / peak LR (cosine, wsd)
    decay_fraction: float = 0.2  # wsd: the last fraction of steps that decays to min_ratio

    def validate(self) -> None:
        if self.warmup < 0:
            raise ValueError(f"schedule.warmup must be >= 0, got {self.warmup}")
        if not 0 <= self.min_ratio <= 1:
            raise ValueError(f"schedule.min_ratio must be in [0, 1], got {self.min_ratio}")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"schedule.decay_fraction must be in (0, 1], got {self.decay_fraction}")


@dataclass
class TrainConfig:
    """A whole run. ``model`` is a shipped config name of the kind (``tiny``) or a YAML path;
    ``model_overrides`` are ``key=value`` strings applied to it."""

    RENAMED: ClassVar[dict[str, str]] = {
        "stream": "'data' (the one data pipeline: stream.sources -> data.train, stream.heldout_fraction -> "
                  "data.eval_fraction, the other keys as they were)"}

    kind: Literal["blt", "entropy", "bytelm", "hnet"] = "blt"
    model: str = "tiny"
    model_overrides: list[str] = field(default_factory=list)
    # BLT only: the patching scheme and its settings; unset values come from the entropy model's
    # calibrated patcher.yaml (bltkit.patching.resolve_patcher), else their defaults.
    patcher: PatcherConfig = field(default_factory=lambda: PatcherConfig(scheme="static", patch_size=4))
    task: dict[str, Any] = field(default_factory=dict)  # kind-specific settings (read by the task)
    data: DataConfig = field(default_factory=DataConfig)  # sources, held-out split, packing (data.py)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    steps: int = 100
    grad_accum: int = 1  # micro-batches an optimiser step (per rank)
    seed: int = 777  # the initial weights and the data order (mixture draws, row shuffle)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile each transformer block
    parallel: Literal["auto", "none", "ddp", "fsdp"] = "auto"  # auto: ddp under torchrun
    device: str = "auto"  # auto: cuda if available, else cpu
    cpu_threads: Optional[int] = None  # torch intra-op threads for this run (null: torch's default)
    log_every: int = 1
    eval_every: int = 50  # held-out bits per byte every N steps (and at the last step); 0 = only at the end
    checkpoint_every: int = 50  # 0 = only at the end
    keep_checkpoints: int = 2
    tensorboard: bool = False
    progress: bool = True

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.seed < 2**63:  # torch and numpy both take it, with the rank added
            raise ValueError(f"seed must be an integer from 0 to 2**63 - 1, got {self.seed}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.log_every < 1 or self.eval_every < 0 or self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            raise ValueError(
                f"log_every {self.log_every} (>= 1), eval_every {self.eval_every} (>= 0), "
                f"checkpoint_every {self.checkpoint_every} (>= 0), keep_checkpoints {self.keep_checkpoints} (>= 1) out of range"
            )


def load_train_config(name_or_path: str | os.PathLike, overrides: Optional[list[str]] = None) -> TrainConfig:
    """A run config from a YAML path or a shipped name under ``configs/train/``, with overrides."""
    return cfgio.build_config(train_config_from_dict, name_or_path, "train", overrides)[0]


def train_config_from_dict(data: dict, source: Optional[str] = None) -> TrainConfig:
    return cfgio.from_dict(TrainConfig, data, source=source)
