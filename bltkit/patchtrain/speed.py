"""Training speed of both phases in one process: the patch phase's bytes/s over the byte phase's.

For ``bltkit bench`` (the GPU figure in the issue: patch phase >= 3.3x byte-phase bytes/s at
K=4; the paper measured 3.5x). Both phases run the same ByteLM, the same T positions a row and
the same rows a step, so a patch step consumes K times the bytes at nearly the same cost; the
ratio shows how close the implementation gets to K. Synthetic random bytes (no data needed);
full optimiser steps (forward, backward, AdamW) after ``warmup`` untimed steps; bf16 autocast on
CUDA. Axes: B rows, T positions, K bytes a patch.
"""
from __future__ import annotations

import time
from typing import Optional

import torch

from ..data.vocab import OFFSET, VOCAB_SIZE
from ..runtime import autocast, autocast_dtype, resolve_device, synchronize
from .config import ByteLMConfig, load_bytelm_config
from .loss import patch_nats
from .model import ByteLM


def phase_bytes_per_s(model: ByteLM, opt: torch.optim.Optimizer, patch_size: int, n_positions: int, batch_size: int,
                      steps: int, warmup: int, device: torch.device, amp: Optional[torch.dtype]) -> float:
    """Training bytes/s of one phase: rows of K*(T+1) random bytes, K*T consumed a row."""
    g = torch.Generator().manual_seed(0)
    k, t = patch_size, n_positions
    rows = torch.randint(OFFSET, VOCAB_SIZE, (batch_size, k * (t + 1)), generator=g).to(device)
    ids, targets, mask = rows[:, :-k], rows[:, k:], torch.ones(batch_size, k * t, dtype=torch.int64, device=device)

    def step() -> None:
        with autocast(device, amp):
            logits = model(ids, patch_size=k, validate=False)  # (B, T, V)
            nats, n = patch_nats(logits, targets, mask)
        (nats / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps * batch_size * k * t / (time.perf_counter() - t0)


def patchtrain_phase_speed(model: str | ByteLMConfig = "tiny", patch_size: int = 4, n_positions: int = 256,
                           batch_size: int = 8, steps: int = 5, warmup: int = 2,
                           device: Optional[str | torch.device] = None, compile: bool = False) -> dict[str, float]:
    """``{"patch_bytes_per_s", "byte_bytes_per_s", "ratio", "patch_size"}`` measured in this process.

    ``model`` is a ByteLM config (a shipped name under ``configs/bytelm/``, a path or a config).
    """
    if patch_size < 1:
        raise ValueError(f"patch_size K must be >= 1, got {patch_size}")
    cfg = model if isinstance(model, ByteLMConfig) else load_bytelm_config(model)
    dev = resolve_device(device)
    amp = autocast_dtype("auto", dev)
    net = ByteLM(cfg).to(dev)
    if compile:
        for layer in net.global_transformer.layers:
            layer.compile()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True if dev.type == "cuda" else None)
    byte = phase_bytes_per_s(net, opt, 1, n_positions, batch_size, steps, warmup, dev, amp)
    patch = phase_bytes_per_s(net, opt, patch_size, n_positions, batch_size, steps, warmup, dev, amp)
    return {"patch_bytes_per_s": patch, "byte_bytes_per_s": byte, "ratio": patch / byte, "patch_size": float(patch_size)}
