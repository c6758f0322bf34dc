"""Where bltkit runs and in what precision: the one place that turns ``--device`` and a precision
name into a torch device and a dtype, for training, the benchmark, the demo and ``bltkit.load``.

Why one module: the rule is a user-facing promise ("auto" is a CUDA GPU when there is one, bf16
autocast there and fp32 on a CPU) and its errors are what a user sees for a device their machine
lacks; written once, every command answers ``--device tpu`` or ``--device cuda`` on a CPU-only
machine with the same one line. Model code never calls this (it never names a device); the
runtimes around it do.

- ``resolve_device``  ``auto | cpu | cuda | cuda:N | mps`` -> ``torch.device``, or a ValueError
  naming the device and what this machine has;
- ``resolve_dtype``   a precision name (``auto``, ``bf16``, ``fp16``, ``fp32`` and the long
  spellings) -> the compute dtype on a device: ``auto`` is bf16 on CUDA and fp32 elsewhere;
- ``autocast_dtype`` / ``autocast``  the same rule as an autocast context over fp32 master
  weights (``None``: plain fp32, no autocast);
- ``synchronize`` / ``device_name``  for timing and for saying where a run ran.

Depends on torch only (the bottom layer, beside ``bltkit.nn`` and ``bltkit.data``).
"""
from __future__ import annotations

import contextlib
from typing import Optional, Union

import torch

DEVICES = "auto, cpu, cuda, cuda:N, mps"
_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "fp32": torch.float32, "float32": torch.float32}
PRECISIONS = ("auto",) + tuple(_DTYPES)

DeviceLike = Union[str, torch.device, None]


def resolve_device(name: DeviceLike = "auto", *, local_rank: Optional[int] = None, what: str = "--device") -> torch.device:
    """``name`` (``auto`` or None: ``cuda`` when a CUDA GPU is visible, else ``cpu``) as a device
    this machine has. ``local_rank`` picks ``cuda:local_rank`` for a bare ``cuda`` (torchrun: one
    GPU a process). A device torch does not know, or one this machine lacks, raises a ValueError
    whose one line names it (``what`` says where it came from: ``--device``, ``device`` ...)."""
    text = "auto" if name is None else str(name)
    if text == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda" if local_rank is None else f"cuda:{local_rank}")
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError):
        raise ValueError(f"{what} {text!r} is not a device bltkit runs on; choose {DEVICES}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what} {text!r}: CUDA is not available on this machine (torch {torch.__version__} "
                             f"sees no CUDA GPU); use --device cpu or auto")
        n = torch.cuda.device_count()
        if dev.index is None and local_rank is not None:
            dev = torch.device(f"cuda:{local_rank}")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"{what} {text!r}: this machine has {n} CUDA device{'s' if n != 1 else ''} "
                             f"(cuda:0..cuda:{n - 1})")
        return dev
    if dev.type == "mps":
        if not (torch.backends.mps.is_available()):
            raise ValueError(f"{what} {text!r}: MPS (Apple GPU) is not available on this machine")
        return dev
    raise ValueError(f"{what} {text!r} is not a device bltkit runs on; choose {DEVICES}")


def resolve_dtype(precision: Union[str, torch.dtype, None], device: torch.device, *, what: str = "precision") -> torch.dtype:
    """The compute dtype for ``precision`` on ``device``: ``auto`` (or None) is bf16 on CUDA and
    fp32 elsewhere (bf16 kernels on CPUs are slow and not what the CPU proofs measure)."""
    if isinstance(precision, torch.dtype):
        if precision not in _DTYPES.values():
            raise ValueError(f"{what} {precision} is not supported; choose {', '.join(PRECISIONS)}")
        return precision
    if precision is None or precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if precision not in _DTYPES:
        raise ValueError(f"{what} {precision!r} is not a precision bltkit runs in; choose {', '.join(PRECISIONS)}")
    return _DTYPES[precision]


def autocast_dtype(precision: Union[str, torch.dtype, None], device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype over fp32 master weights, or None for plain fp32 (no autocast)."""
    dt = resolve_dtype(precision, device)
    return None if dt == torch.float32 else dt


def scorer_precision(amp: Optional[torch.dtype]) -> str:
    """The ``precision`` name (``compute_entropies``, ``Patcher``) of an ``autocast_dtype`` result:
    "bf16" for bf16 autocast, "fp32" for none."""
    return "bf16" if amp == torch.bfloat16 else "fp32"


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` to ``dtype`` on ``device``'s type; a no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (CUDA, MPS), so wall-clock timings count them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    """The GPU's name for CUDA (``NVIDIA H100 80GB HBM3``), else the device type."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


__all__ = ["DEVICES", "PRECISIONS", "autocast", "autocast_dtype", "device_name", "resolve_device", "resolve_dtype",
           "scorer_precision",
           "synchronize"]
