"""Learning-rate schedules as a pure function of the step (docs/reference-semantics.md §13).

A function of the step, not a stateful scheduler object: the step counter is the whole state, so
resuming a checkpoint restores the schedule exactly. Warmup is linear and reaches the peak at
step ``warmup - 1``; the reference's ``step / warmup`` wastes step 0 at LR 0, this one does not.

- cosine: ``min + (1 - min) * (1 + cos(pi * s)) / 2`` with ``s`` the fraction of post-warmup
  steps done (reference ``lr_cosine`` with theta 1);
- wsd (warmup-stable-decay): the peak until the last ``decay_fraction`` of steps, then a linear
  decay to ``min_ratio``;
- constant: the peak after warmup.
"""
from __future__ import annotations

import math

from .config import ScheduleConfig


def lr_factor(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak LR at optimiser step ``step`` (0-based) of ``total_steps``."""
    if cfg.warmup > 0 and step < cfg.warmup:
        return (step + 1) / cfg.warmup
    if cfg.kind == "constant":
        return 1.0
    span = max(1, total_steps - cfg.warmup)
    s = min(1.0, max(0.0, (step - cfg.warmup) / span))
    if cfg.kind == "cosine":
        return cfg.min_ratio + (1.0 - cfg.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * s))
    if cfg.kind == "wsd":
        decay_steps = max(1, round(cfg.decay_fraction * total_steps))
        start = total_steps - decay_steps
        if step < start:
            return 1.0
        frac = min(1.0, (step - start + 1) / decay_steps)
        return 1.0 - (1.0 - cfg.min_ratio) * frac
    raise ValueError(f"unknown schedule kind {cfg.kind!r}")


def set_lr(optimizer, peak_lr: float, factor: float) -> float:
    """Set every group's LR to ``peak_lr * factor`` times the group's ``lr_mult`` (1 unless a
    model has per-stage factors, ``optim.parameter_groups``); returns ``peak_lr * factor``."""
    lr = peak_lr * factor
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
    return lr
