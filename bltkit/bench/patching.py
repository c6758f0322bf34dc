"""The entropy-patching figure: entropies + boundaries for B x N bytes (measurement.md: bytes a
second through the entropy model): bltkit's ``Patcher`` (``entropy_model.entropies`` +
``bltkit.patching.boundaries``; bf16 autocast on CUDA, the patcher's ``precision``)
beside HF's ``model.model.patcher`` called as the anchor calls it (``patch_size=4``, the
threshold in nats). Axes: B rows, N bytes, P patches.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .entropy import entropy_patcher
from .timing import peak_memory, time_steps
from .train_step import autocast


def bltkit_patch_figure(entropy_model: nn.Module, ids: torch.Tensor, threshold: float, *, device: torch.device,
                        amp: Optional[torch.dtype], steps: int, warmup: int) -> dict:
    x = ids.to(device)  # (B, N)
    precision = "bf16" if amp == torch.bfloat16 else "fp32"
    patcher = entropy_patcher(entropy_model, threshold, precision)
    out: dict[str, Any] = {}

    def step() -> torch.Tensor:
        pl = patcher(x, include_next_token=True).patch_lengths  # (B, P), first 1, Σ = N + 1
        out["pl"] = pl
        return pl

    dt = time_steps(step, steps, warmup, device, desc="bltkit patch")
    mem, kind = peak_memory(device)
    pl = out["pl"]
    return dict(ms=dt * 1e3, bytes_per_s=x.numel() / dt, peak_mem_gib=mem, peak_mem_kind=kind,
                mean_patch=x.shape[1] / float(((pl > 0).sum(dim=1) - 1).clamp(min=1).double().mean()),
                precision=precision, patcher_params_m=sum(p.numel() for p in entropy_model.parameters()) / 1e6)


def hf_patch_figure(hf_model: Any, ids: torch.Tensor, threshold: float, *, device: torch.device,
                    amp: Optional[torch.dtype], steps: int, warmup: int) -> dict:
    x = ids.to(device)
    patcher = hf_model.model.patcher
    out: dict[str, Any] = {}

    @torch.no_grad()
    def step() -> Any:
        with autocast(device, amp):
            res = patcher(x, patch_size=4, threshold=threshold)
        out["pl"] = res[1]
        return res

    dt = time_steps(step, steps, warmup, device, desc="HF patch")
    mem, kind = peak_memory(device)
    pl = out["pl"]
    return dict(ms=dt * 1e3, bytes_per_s=x.numel() / dt, peak_mem_gib=mem, peak_mem_kind=kind,
                mean_patch=x.shape[1] / float((pl > 0).sum(dim=1).double().mean()),
                patcher_params_m=sum(p.numel() for p in patcher.parameters()) / 1e6)
