"""Dense bf16 peaks for model-FLOPs utilisation (measurement.md "Throughput and utilisation").

MFU = achieved FLOP/s / the GPU's dense bf16 peak (datasheet, no sparsity). Only GPUs named in
``PEAK_BF16_DENSE`` get an MFU; anything else (CPU included) reports ``None`` rather than a
guess. Matching is on the CUDA device name, most specific entry first.
"""
from __future__ import annotations

from typing import Optional

import torch

# (substring of torch.cuda.get_device_name, dense bf16 FLOP/s), most specific first.
PEAK_BF16_DENSE: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("GH200", 989e12),  # the H200/H100 SXM chip
    ("H200", 989e12),  # same chip as H100 SXM (more, faster memory): same compute peak
    ("H100", 989e12),  # H100 SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312e12),
]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def peak_bf16_flops(name: str) -> Optional[float]:
    """Dense bf16 peak FLOP/s of the device called ``name``, or None when not in the table."""
    for key, peak in PEAK_BF16_DENSE:
        if key.lower() in name.lower():
            return peak
    return None


def mfu(flops_per_step: Optional[float], seconds_per_step: float, peak: Optional[float]) -> Optional[float]:
    """Model-FLOPs utilisation in [0, 1], or None when the FLOPs or the peak are unknown."""
    if flops_per_step is None or peak is None or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / peak
