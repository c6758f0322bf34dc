"""How a figure is measured, for bltkit and its Hugging Face peer alike: synchronised timing after
warm-up, peak memory, model-FLOPs utilisation, a timed optimiser step and timed generation.

- Timing: on CUDA a timed region starts and ends with a synchronise so queued kernels count.
  Paths compared in one figure (the patch figure: bltkit, its dense-mask baseline, HF) are timed
  in turn, one call of each a round, medians (``time_in_turn``).
- Peak memory: ``max_memory_allocated`` since the last reset on CUDA; a CPU has no resettable
  allocator peak, so the process's maximum resident set size is reported and labelled so
  (``peak_mem_kind``).
- Profiles (``bltkit bench --profile DIR``): ``torch.profiler`` over a few warm calls, the top
  operators and kernels by device time on CUDA (self CPU time elsewhere) written as a table and
  as JSON.
- MFU = achieved FLOP/s / the GPU's dense bf16 peak (datasheet, no sparsity). Only GPUs named in
  ``PEAK_BF16_DENSE`` get one; anything else (CPU included) reports ``None`` rather than a guess.
"""
from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ..runtime import autocast, synchronize

# (substring of torch.cuda.get_device_name, dense bf16 FLOP/s), most specific first.
PEAK_BF16_DENSE: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("GH200", 989e12),  # the H200/H100 SXM chip
    ("H200", 989e12),  # same chip as H100 SXM (more, faster memory): same compute peak
    ("H100", 989e12),  # H100 SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312e12),
]


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


def time_in_turn(steps: dict[str, Callable[[], object]], rounds: int, warmup: int, device: torch.device,
                 desc: str = "bench") -> tuple[dict[str, tuple[float, float]], dict[str, Exception], str]:
    """(timings, errors, memory kind): for each named step (median seconds a call, peak memory GiB
    of its timed calls). Each round calls every step once, one after another, after ``warmup``
    untimed rounds: a change in the machine's speed (a shared VM) then falls on all of them alike,
    so their ratios hold where blocks timed one after another drift apart. On CUDA a call's peak
    is what it allocated beyond what was already allocated (the other steps' models stay resident);
    on a CPU it is the process's maximum RSS (``peak_memory``). A step that raises is dropped from
    later rounds, its exception in ``errors``."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    peaks: dict[str, float] = {name: 0.0 for name in steps}
    failed: dict[str, Exception] = {}
    cuda = device.type == "cuda"
    for r in tqdm(range(warmup + rounds), desc=f"{desc} (in turn)", leave=False, disable=None):
        for name, step in steps.items():
            if name in failed:
                continue
            synchronize(device)
            reset_peak_memory(device)
            base = torch.cuda.memory_allocated(device) if cuda else 0
            t0 = time.perf_counter()
            try:
                step()
                synchronize(device)
            except Exception as e:  # noqa: BLE001 - one peer's failure must not sink the others
                failed[name] = e
                continue
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
                peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30 if cuda else peak_memory(device)[0]
                peaks[name] = max(peaks[name], peak)
    kind = "cuda max_memory_allocated beyond what was allocated before the call" if cuda else peak_memory(device)[1]
    timings = {name: (statistics.median(times[name]), peaks[name]) for name in steps if name not in failed}
    return timings, failed, kind


def make_optimizer(model: nn.Module, device: torch.device) -> torch.optim.AdamW:
    """AdamW at lr 1e-4 as the anchor; fused on CUDA (the CPU keeps the default implementation)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-4, fused=True if device.type == "cuda" else None)


def time_train_steps(model: nn.Module, loss_fn: Callable[[], torch.Tensor], flops: int, flops_source: str,
                     n_bytes: int, device: torch.device, amp: Optional[torch.dtype], steps: int, warmup: int,
                     peak: Optional[float], desc: str, profile_dir: Optional[str] = None) -> dict:
    """Forward (``loss_fn`` under autocast) + backward + AdamW, timed; the training figure's record
    (``flops``: one step's, from ``flops_source``). With ``profile_dir``, two more steps are
    profiled into ``profile-train-step.{txt,json}`` there (outside the timing)."""
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
    if profile_dir:
        profile_calls(step, device, 2, profile_dir, "train-step")
    return dict(
        step_ms=dt * 1e3, bytes_per_s=n_bytes / dt, tflop_per_step=flops / 1e12,
        achieved_tflops=flops / dt / 1e12, mfu=mfu(flops, dt, peak) if amp == torch.bfloat16 else None,
        flops_source=flops_source, peak_mem_gib=mem, peak_mem_kind=mem_kind, loss=loss,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        optimizer="AdamW fused" if device.type == "cuda" else "AdamW (default, CPU)",
    )


def time_generation(run: Callable[[int, Callable[[int], None]], torch.Tensor], prompt_len: int, batch: int,
                    new_bytes: int, device: torch.device, desc: str, per_byte: bool = True) -> dict:
    """Time ``run(n, on_byte)`` -> (B, prompt_len + n) for ``new_bytes`` after a warm-up call of 8
    bytes (as the anchor); ``on_byte(i)`` after byte ``i`` gives the time to first byte."""
    run(min(8, new_bytes), lambda i: None)
    synchronize(device)
    reset_peak_memory(device)
    first: dict[str, float] = {}
    bar = tqdm(total=new_bytes, desc=desc, leave=False, disable=None if per_byte else True)
    t0 = time.perf_counter()

    def on_byte(i: int) -> None:
        if i == 0:
            synchronize(device)
            first["ttfb"] = time.perf_counter() - t0
        bar.update(1)

    out = run(new_bytes, on_byte)
    synchronize(device)
    dt = time.perf_counter() - t0
    bar.close()
    mem, kind = peak_memory(device)
    got = int(out.shape[1]) - prompt_len
    return dict(batch=batch, new_bytes=got, s=dt, bytes_per_s=batch * got / dt,
                ttfb_s=first.get("ttfb"), peak_mem_gib=mem, peak_mem_kind=kind)


def profile_calls(fn: Callable[[], object], device: torch.device, calls: int, directory: str, name: str,
                  rows: int = 25) -> dict:
    """Profile ``calls`` warm calls of ``fn`` and write ``DIR/profile-NAME.txt`` (the profiler's
    table) and ``DIR/profile-NAME.json`` (the top ``rows`` entries). Sorted by self device time on
    CUDA, where kernels are the cost, else by self CPU time. Returns the JSON record."""
    import json
    import os

    from torch.profiler import ProfilerActivity, profile

    fn()  # warm: compilation, allocator and autotuning stay out of the profile
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        synchronize(device)
    averages = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    top = sorted(averages, key=lambda e: getattr(e, attr, 0) or 0, reverse=True)[:rows]
    total = sum(getattr(e, attr, 0) or 0 for e in averages)
    rec = dict(name=name, device=str(device), calls=calls, sort=attr, total_self_us=total,
               top=[dict(op=e.key, count=e.count, self_us=getattr(e, attr, 0) or 0,
                         share=(getattr(e, attr, 0) or 0) / total if total else None) for e in top])
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"profile-{name}.txt"), "w") as f:
        f.write(f"# {name}: {calls} calls on {device}, sorted by {attr}\n")
        f.write(averages.table(sort_by=attr, row_limit=rows))
    with open(os.path.join(directory, f"profile-{name}.json"), "w") as f:
        json.dump(rec, f, indent=1)
    return rec
