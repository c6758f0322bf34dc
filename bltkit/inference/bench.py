"""Generation speed, as measurement.md defines it: new bytes a second for a batch size, prompt
length and new-byte count, greedy, after one warm-up call; time to first byte; and the cached
path against the uncached one (blt-reference §8) as a ratio measured in the same process.

``generation_benchmark(handle, batch, prompt_len, new_bytes)`` is the hook ``bltkit bench``
calls. Prompts are built-in English text cut to ``prompt_len`` bytes (row i starts i bytes
later, so rows differ). A row that meets EOS early stops (its bytes are counted as generated).
"""
from __future__ import annotations

import time
from typing import Optional

import torch

from ..data.vocab import encode
from .generate import decode_loop
from .recompute import RecomputeStepper
from .sampling import SamplingParams

_TEXT = ("The quick brown fox jumps over the lazy dog. Bytes in, patches inside, bytes out: a byte latent "
         "transformer reads raw UTF-8 and groups it into patches where the next byte is hard to guess. ")


def bench_prompts(batch: int, prompt_len: int) -> list[list[int]]:
    if batch < 1 or prompt_len < 0:
        raise ValueError(f"batch must be >= 1 and prompt_len >= 0, got {batch}, {prompt_len}")
    text = (_TEXT * (prompt_len // len(_TEXT) + 2)).encode()
    return [encode(text[i % len(_TEXT): i % len(_TEXT) + prompt_len], bos=True, eos=False) for i in range(batch)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(handle, stepper_fn, prompts, new_bytes: int) -> dict:
    dev = handle.device
    params = SamplingParams()
    # warm-up: a short run, so one-off costs (allocations, kernels' first launch) are not timed
    for _ in decode_loop(stepper_fn(prompts, min(8, new_bytes)), prompts, min(8, new_bytes), params, [0] * len(prompts)):
        pass
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    stepper = stepper_fn(prompts, new_bytes)
    t0 = time.perf_counter()
    ttfb: Optional[float] = None
    n = 0
    for _ in decode_loop(stepper, prompts, new_bytes, params, [0] * len(prompts)):
        if ttfb is None:
            ttfb = time.perf_counter() - t0
        n += 1
    _sync(dev)
    dt = time.perf_counter() - t0
    out = dict(new_bytes=n, seconds=dt, bytes_per_s=n / dt, ttfb_s=ttfb)
    if dev.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return out


def generation_benchmark(handle, batch: int, prompt_len: int, new_bytes: int,
                         uncached_new_bytes: Optional[int] = 16) -> dict:
    """Cached generation speed; with ``uncached_new_bytes`` (> 0) also the uncached path over
    that many bytes (it is O(T^2): keep it short) and ``speedup`` = cached / uncached bytes a second.
    With ``uncached_new_bytes < new_bytes`` the uncached rate is taken over a shorter prefix, where
    each of its bytes is cheaper, so the speedup is an underestimate; pass ``new_bytes`` for the
    like-for-like ratio.

    Returns ``bytes_per_s`` (all rows' new bytes a second), ``ttfb_s`` (prompt pass + first byte),
    ``new_bytes``, ``seconds``, the settings, and the uncached figures when measured.
    """
    if new_bytes < 1:
        raise ValueError(f"new_bytes must be >= 1, got {new_bytes}")
    prompts = bench_prompts(batch, prompt_len)
    rec = dict(batch=batch, prompt_len=prompt_len, device=str(handle.device),
               dtype=str(next(handle.model.parameters()).dtype).replace("torch.", ""),
               patcher=handle.patcher.scheme if handle.patcher is not None else None, mode="cached")
    with torch.no_grad():
        rec.update(_time(handle, lambda p, n: handle._stepper(True, p, n), prompts, new_bytes))
        if uncached_new_bytes:
            unc = _time(handle, lambda p, n: RecomputeStepper(handle.model, handle.patcher if handle.kind == "blt" else None,
                                                             handle.entropy_model, handle.device),
                        prompts, uncached_new_bytes)
            rec.update({f"uncached_{k}": v for k, v in unc.items()})
            rec["speedup"] = rec["bytes_per_s"] / unc["bytes_per_s"]
    return rec
