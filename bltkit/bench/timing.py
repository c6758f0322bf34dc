"""Synchronised timing and peak memory for the figures (measurement.md: after warm-up).

On CUDA a timed region starts and ends with ``torch.cuda.synchronize`` so queued kernels are
counted; peak memory is ``max_memory_allocated`` since the last reset. On CPU there is no
resettable allocator peak: the process's maximum resident set size is reported instead and
labelled so (``peak_mem_kind``).
"""
from __future__ import annotations

import resource
import sys
import time
from typing import Callable

import torch
from tqdm.auto import tqdm


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[float, str]:
    """(GiB, what it measures)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return rss * scale / 2**30, "process max RSS (CPU, not resettable)"


def time_steps(step: Callable[[], object], steps: int, warmup: int, device: torch.device,
               desc: str = "bench") -> float:
    """Seconds a call of ``step`` after ``warmup`` untimed calls (mean over ``steps``). Peak
    memory is reset after the warm-up, so ``peak_memory`` afterwards covers the timed calls."""
    for _ in tqdm(range(warmup), desc=f"{desc} warm-up", leave=False, disable=None):
        step()
    synchronize(device)
    reset_peak_memory(device)
    t0 = time.perf_counter()
    for _ in tqdm(range(steps), desc=desc, leave=False, disable=None):
        step()
    synchronize(device)
    return (time.perf_counter() - t0) / steps
