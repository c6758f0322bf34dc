"""Runs the figures a ``BenchSettings`` asks for and returns one record a figure.

Each record holds bltkit's measurement, HF's on the same configuration in the same process
(``hf``; ``None`` when transformers is not importable or ``hf`` is off; ``{"error": ...}`` when HF
cannot build or run it), and the ratio bltkit / HF of bytes a second. Models are freed between
figures so that peak memory belongs to one model at a time.
"""
from __future__ import annotations

import dataclasses
import gc
import traceback
from typing import Any, Callable, Optional

import torch

from ..model import ByteLatentTransformer, load_blt_config
from ..nn.attention import flex_compiles
from .compile import compile_blocks
from .entropy import load_bench_entropy_model
from .generation import (bltkit_generate_figure, cached_generation_figure, hf_generate_figure,
                         inference_benchmark_hook)
from .hardware import device_name, peak_bf16_flops
from .hf_peer import build_hf_blt, hf_available, hf_semantics, patcher_config
from .inputs import anchor_patch_rows, blt_patch_lengths, hf_patch_lengths, mean_patch_length, random_bytes
from .patching import bltkit_patch_figure, hf_patch_figure
from .settings import BenchSettings
from .train_step import bltkit_train_figure, hf_train_figure


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a torch device (try cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: CUDA is not available on this machine")
    return dev


def amp_dtype(dtype: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype (None = plain fp32): ``auto`` is bf16 on CUDA and fp32 elsewhere."""
    if dtype == "bf16" or (dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _ratio(a: Optional[dict], b: Optional[dict]) -> Optional[float]:
    if not a or not b or "bytes_per_s" not in a or "bytes_per_s" not in b:
        return None
    return a["bytes_per_s"] / b["bytes_per_s"]


def _hf_guard(fn: Callable[[], dict]) -> dict:
    """Run a peer measurement (HF, or a collaborator's hook); a failure becomes ``{"error": ...}``
    with the traceback on stderr, so one peer cannot sink the run."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - any HF failure is reported, never fatal
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {e}"[:400]}


def run_benchmarks(s: BenchSettings, emit: Callable[[dict], None] = lambda r: None) -> list[dict]:
    """Measure ``s.only`` and return the records; ``emit`` sees each as soon as it is done."""
    device = resolve_device(s.device)
    cfg = load_blt_config(s.config)
    if s.attn_impl != "auto":
        cfg = dataclasses.replace(cfg, attn_impl=s.attn_impl)
    cfg.validate()
    amp = amp_dtype(s.dtype, device)
    name = device_name(device)
    peak = peak_bf16_flops(name) if device.type == "cuda" else None
    use_hf = s.hf and hf_available()
    base: dict[str, Any] = dict(config=s.config, device=name, dtype="bf16 autocast" if amp else "fp32",
                                torch=torch.__version__)
    if use_hf:
        import transformers
        base["transformers"] = transformers.__version__
    records: list[dict] = []

    def done(rec: dict) -> None:
        records.append(rec)
        emit(rec)

    def new_model() -> ByteLatentTransformer:
        with torch.device(device):
            return ByteLatentTransformer(cfg)

    if "train" in s.only:
        rows = anchor_patch_rows(s.rows, s.n_bytes)
        ids = random_bytes(s.rows, s.n_bytes + 1, s.seed)  # (B, N + 1): inputs and next-byte targets
        bpl, hpl = blt_patch_lengths(rows), hf_patch_lengths(rows)
        model = new_model()
        compiled = compile_blocks(model) if s.compile else 0
        compiled_attention = model.resolve_attn_impl(device) == "flex" and flex_compiles(device)
        mine = bltkit_train_figure(model, cfg, ids, bpl, device=device, amp=amp, steps=s.steps, warmup=s.warmup,
                                   bucket=s.bucket_for(compiled_attention), peak=peak)
        mine["compiled_blocks"] = compiled
        del model
        _free(device)
        hf = changes = None
        if use_hf:
            def hf_run() -> dict:
                nonlocal changes
                hf_model, changes = build_hf_blt(cfg, device)
                try:
                    return hf_train_figure(hf_model, hf_semantics(cfg), ids, hpl, bpl, device=device, amp=amp,
                                           steps=s.steps, warmup=s.warmup, peak=peak)
                finally:
                    del hf_model
                    _free(device)
            hf = _hf_guard(hf_run)
        done(dict(figure="train", **base, rows=s.rows, bytes=s.n_bytes, steps=s.steps, warmup=s.warmup,
                  mean_patch=mean_patch_length(hpl, s.n_bytes), bltkit=mine, hf=hf,
                  hf_semantic_changes=changes, ratio_bltkit_over_hf=_ratio(mine, hf)))

    if "patch" in s.only or "generate" in s.only:
        entropy_model, em_source = load_bench_entropy_model(s.entropy_config, device)
        hf_state: dict[str, Any] = {}

        def hf_with_patcher() -> Any:
            if "model" not in hf_state:
                max_pos = max(s.n_bytes, s.gen_prompt_bytes + s.hf_new_bytes) + 16
                hf_state["model"], hf_state["changes"] = build_hf_blt(
                    cfg, device, patcher=patcher_config(entropy_model, max_pos), threshold=s.threshold)
                hf_state["model"].eval()
            return hf_state["model"]

        if "patch" in s.only:
            ids = random_bytes(s.rows, s.n_bytes, s.seed)
            mine = bltkit_patch_figure(entropy_model, ids, s.threshold, device=device, amp=amp, steps=s.steps,
                                       warmup=s.warmup)
            mine["entropy_model_source"] = em_source
            hf = _hf_guard(lambda: hf_patch_figure(hf_with_patcher(), ids, s.threshold, device=device, amp=amp,
                                                   steps=s.steps, warmup=s.warmup)) if use_hf else None
            done(dict(figure="patch", **base, rows=s.rows, bytes=s.n_bytes, threshold=s.threshold, bltkit=mine,
                      hf=hf, ratio_bltkit_over_hf=_ratio(mine, hf)))

        if "generate" in s.only:
            model = new_model().eval()
            gen_entropy, _ = load_bench_entropy_model(s.entropy_config, device, attn_impl="sdpa")
            hook = inference_benchmark_hook()
            mine_g: dict[str, Any] = {"entropy_model_source": em_source, "cached_over_uncached": {},
                                      "cached_source": "bltkit.inference.bench.generation_benchmark" if hook
                                      else None}
            hf_g: Optional[dict] = {} if use_hf else None
            ratios: dict[str, Optional[float]] = {}
            for batch in dict.fromkeys([1, s.gen_batch]):
                key = f"batch{batch}"
                prompt = random_bytes(batch, s.gen_prompt_bytes, s.seed + batch)
                uncached = bltkit_generate_figure(model, gen_entropy, prompt, s.gen_new_bytes, s.threshold,
                                                  device=device, amp=amp)
                best = uncached
                if hook is not None:
                    cached = _hf_guard(lambda: cached_generation_figure(
                        hook, model, entropy_model, s.threshold, batch, s.gen_prompt_bytes, s.gen_new_bytes, device))
                    if "error" not in cached:
                        best = dict(cached, uncached=uncached)
                    else:
                        best = dict(uncached, cached_error=cached["error"])
                mine_g[key] = best
                mine_g["cached_over_uncached"][key] = _ratio(best, uncached) if "uncached" in best else None
                if hf_g is not None:
                    hf_g[key] = _hf_guard(lambda: hf_generate_figure(hf_with_patcher(), prompt, s.hf_new_bytes,
                                                                     device=device, amp=amp))
                ratios[key] = _ratio(mine_g[key], hf_g.get(key) if hf_g is not None else None)
            del model, gen_entropy
            done(dict(figure="generate", **base, prompt_bytes=s.gen_prompt_bytes, new_bytes=s.gen_new_bytes,
                      hf_new_bytes=s.hf_new_bytes if use_hf else None, threshold=s.threshold, bltkit=mine_g,
                      hf=hf_g, ratio_bltkit_over_hf=ratios))
        hf_state.clear()
        del entropy_model
        _free(device)
    return records
