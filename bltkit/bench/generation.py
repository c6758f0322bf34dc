"""The generation figure: greedy new bytes a second, batch 1 (512-byte prompt, 256 new bytes, the
anchor's setting) and an aggregate batch, after one warm-up call, with time to first byte
(measurement.md). bltkit's side is the inference engineer's
``bltkit.inference.bench.generation_benchmark`` (cached and uncached, as a ratio) when it is
there; until then the reference's uncached loop (blt-reference §8): at every step the entropy
model re-patches the whole prefix with the next-byte patch (pitfall 22) and the BLT re-runs over
it. HF's ``generate`` (also uncached, §8 "HF") runs beside it, time-boxed by its own new-byte
count. Axes: B rows, T prefix bytes, P patches, V vocabulary.
"""
from __future__ import annotations

import importlib
import time
from typing import Any, Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .entropy import entropy_patcher
from .timing import peak_memory, reset_peak_memory, synchronize
from .train_step import autocast


def inference_benchmark_hook() -> Optional[Callable[..., dict]]:
    """``bltkit.inference.bench.generation_benchmark`` when the inference engineer's module exists."""
    try:
        mod = importlib.import_module("bltkit.inference.bench")
    except ImportError:
        return None
    return getattr(mod, "generation_benchmark", None)


def cached_generation_figure(hook: Callable[..., dict], model: nn.Module, entropy_model: nn.Module,
                             threshold: float, batch: int, prompt_len: int, new_bytes: int,
                             device: torch.device) -> dict:
    """The inference engineer's cached generation: the models written as a bundle (entropy
    patching at ``threshold``), loaded with ``bltkit.load`` and timed by ``hook(handle, batch,
    prompt_len, new_bytes)``; its dict is returned as it is."""
    import tempfile

    import bltkit
    from ..bundle import save_bundle

    with tempfile.TemporaryDirectory() as d:
        save_bundle(d, model, kind="blt", patcher={"scheme": "entropy", "threshold": threshold},
                    entropy_model=entropy_model)
        handle = bltkit.load(d, device=str(device))
    rec = dict(hook(handle, batch, prompt_len, new_bytes))
    # The same keys as the uncached and HF figures: seconds as "s", new bytes counted a row.
    rec.setdefault("s", rec.get("seconds"))
    rec.setdefault("batch", batch)
    rec["total_new_bytes"] = rec["new_bytes"]
    rec["new_bytes"] = rec["new_bytes"] // batch
    rec.setdefault("mode", "cached (bltkit.inference)")
    return rec


@torch.no_grad()
def greedy_uncached(model: nn.Module, entropy_model: nn.Module, prompt: torch.Tensor, new_bytes: int,
                    threshold: float, device: torch.device, amp: Optional[torch.dtype],
                    on_byte: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """(B, T) prompt -> (B, T + new_bytes), greedy, re-patching and re-running the full prefix.
    SDPA throughout: the prefix grows a byte a step, and compiled FlexAttention (``dynamic=False``)
    would recompile at every new length."""
    patcher = entropy_patcher(entropy_model, threshold, "bf16" if amp == torch.bfloat16 else "fp32")
    seq = prompt.to(device)
    for i in range(new_bytes):
        pl = patcher(seq, include_next_token=True).patch_lengths.to(device)  # (B, P), Σ = T + 1
        with autocast(device, amp):
            logits = model(seq, pl, validate=False, attn_impl="sdpa")[:, -1]  # (B, V)
        seq = torch.cat([seq, logits.argmax(dim=-1, keepdim=True)], dim=1)
        if on_byte is not None:
            on_byte(i)
    return seq


def _timed_generation(run: Callable[[int, Callable[[int], None]], torch.Tensor], prompt_len: int, batch: int,
                      new_bytes: int, device: torch.device, desc: str, per_byte: bool = True) -> dict:
    """Time ``run(n, on_byte)`` for ``new_bytes`` after a warm-up call of 8 bytes (as the anchor)."""
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


def bltkit_generate_figure(model: nn.Module, entropy_model: nn.Module, prompt: torch.Tensor, new_bytes: int,
                           threshold: float, *, device: torch.device, amp: Optional[torch.dtype]) -> dict:
    rec = _timed_generation(
        lambda n, cb: greedy_uncached(model, entropy_model, prompt, n, threshold, device, amp, cb),
        prompt.shape[1], prompt.shape[0], new_bytes, device, f"bltkit generate b{prompt.shape[0]}")
    rec["mode"] = "uncached (re-patch + full forward a byte, blt-reference §8)"
    return rec


def hf_generate_figure(hf_model: Any, prompt: torch.Tensor, new_bytes: int, *, device: torch.device,
                       amp: Optional[torch.dtype]) -> dict:
    """HF ``generate`` as the anchor calls it (greedy, ``min_new_tokens`` = ``max_new_tokens``).
    HF gives no per-byte hook, so its time to first byte is not measured (None)."""
    x = prompt.to(device)

    @torch.no_grad()
    def run(n: int, on_byte: Callable[[int], None]) -> torch.Tensor:
        with autocast(device, amp):
            return hf_model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    rec = _timed_generation(run, x.shape[1], x.shape[0], new_bytes, device, f"HF generate b{x.shape[0]}",
                            per_byte=False)
    rec["mode"] = "HF generate, use_cache False (its default, blt-reference §8)"
    return rec
