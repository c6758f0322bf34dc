"""The training-step figure: forward + backward + fused AdamW on the anchor's fixed patches.

measurement.md: real (non-padding) bytes a second after warm-up, model-FLOPs utilisation against
the GPU's dense bf16 peak, peak memory. bf16 autocast on CUDA with fp32 master weights (the
anchor's precision); fp32 on CPU. The bltkit step is the fast path: FlexAttention block masks on
CUDA (``attn_impl`` auto), ``validate=False`` (no host syncs in the step), patch columns padded to
a bucket, per-block compile when asked. FLOPs are analytic (``bltkit.training.flops``, the BLT
paper's convention: training = 3 x forward), or counted by ``FlopCounterMode`` when that module is
missing; the record says which (``flops_source``).
Axes: B rows, N bytes, P patches, V vocabulary.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..model.config import BLTConfig
from .buckets import pad_patch_columns
from .hardware import mfu
from .timing import peak_memory, time_steps


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def analytic_train_flops(cfg: BLTConfig, ids: torch.Tensor, patch_lengths: torch.Tensor) -> tuple[Optional[int], str]:
    """(training FLOPs of one step, source) from ``bltkit.training.flops``; (None, why) without it."""
    try:
        from ..training.flops import blt_forward_flops, training_flops
    except ImportError:
        return None, "unavailable"
    return training_flops(sum(blt_forward_flops(cfg, ids, patch_lengths).values())), "analytic (bltkit.training.flops)"


def counted_flops(step: Callable[[], Any]) -> int:
    """FLOPs of one call of ``step`` by torch's ``FlopCounterMode`` (matmuls and attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    fc = FlopCounterMode(display=False)
    with fc:
        step()
    return int(fc.get_total_flops())


def make_optimizer(model: nn.Module, device: torch.device) -> torch.optim.AdamW:
    """AdamW at lr 1e-4 as the anchor; fused on CUDA (the CPU keeps the default implementation)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-4, fused=True if device.type == "cuda" else None)


def _figure(model: nn.Module, loss_fn: Callable[[], torch.Tensor], flops: Optional[int], flops_source: str,
            n_bytes: int, device: torch.device, amp: Optional[torch.dtype], steps: int, warmup: int,
            peak: Optional[float], desc: str) -> dict:
    opt = make_optimizer(model, device)
    model.train()

    def step() -> torch.Tensor:
        with autocast(device, amp):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    dt = time_steps(step, steps, warmup, device, desc=desc)
    mem, mem_kind = peak_memory(device)
    loss = float(step().detach())  # one more step, outside the timing: the loss is a host sync
    if flops is None:
        flops, flops_source = counted_flops(step), "FlopCounterMode (torch.utils.flop_counter)"
    return dict(
        step_ms=dt * 1e3, bytes_per_s=n_bytes / dt, tflop_per_step=flops / 1e12,
        achieved_tflops=flops / dt / 1e12, mfu=mfu(flops, dt, peak) if amp == torch.bfloat16 else None,
        flops_source=flops_source, peak_mem_gib=mem, peak_mem_kind=mem_kind, loss=loss,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        optimizer="AdamW fused" if device.type == "cuda" else "AdamW (default, CPU)",
    )


def bltkit_train_figure(model: nn.Module, cfg: BLTConfig, ids: torch.Tensor, patch_lengths: torch.Tensor,
                        *, device: torch.device, amp: Optional[torch.dtype], steps: int, warmup: int,
                        bucket: int, peak: Optional[float]) -> dict:
    """``ids`` (B, N + 1): inputs are the first N bytes, targets the last N; ``patch_lengths``
    (B, P) in bltkit's convention over the N inputs."""
    x, y = ids[:, :-1].to(device), ids[:, 1:].to(device)  # (B, N) each
    flops, source = analytic_train_flops(cfg, x, patch_lengths)
    model.check_inputs(x, patch_lengths.to(device))  # once, outside the timed steps
    pl = pad_patch_columns(patch_lengths, bucket).to(device)  # (B, P') zero columns: a no-op

    def loss_fn() -> torch.Tensor:
        logits = model(x, pl, validate=False)  # (B, N, V) fp32
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    rec = _figure(model, loss_fn, flops, source, x.numel(), device, amp, steps, warmup, peak, "bltkit train")
    rec.update(attn_impl=model.resolve_attn_impl(device), patch_columns=int(pl.shape[1]), bucket=bucket)
    return rec


def hf_train_figure(model: nn.Module, flops_cfg: BLTConfig, ids: torch.Tensor, hf_patch_lengths: torch.Tensor,
                    blt_patch_lengths: torch.Tensor, *, device: torch.device, amp: Optional[torch.dtype],
                    steps: int, warmup: int, peak: Optional[float]) -> dict:
    """HF's step exactly as the anchor runs it: ``labels = input_ids`` (HF shifts), Σ patch = N."""
    x = ids[:, :-1].to(device)  # (B, N): the same input bytes as bltkit's step
    pl = hf_patch_lengths.to(device)
    flops, source = analytic_train_flops(flops_cfg, x.cpu(), blt_patch_lengths)
    if flops is not None:
        source += " with HF's attention semantics"

    def loss_fn() -> torch.Tensor:
        return model(input_ids=x, labels=x, patch_lengths=pl, use_cache=False).loss

    return _figure(model, loss_fn, flops, source, x.numel(), device, amp, steps, warmup, peak, "HF train")
