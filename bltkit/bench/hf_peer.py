"""Hugging Face's ``BltForCausalLM`` built from the same bltkit config, and its side of the three
figures, each called as the anchor calls it.

The model is built through ``bltkit.interop.hf.blt_config_to_hf`` (the bltkit <-> HF config
mapping): random weights, fixed patch lengths and no patcher for the training step
(``patch_in_forward`` off), the entropy patcher in the forward for patching and generation. HF
cannot express some bltkit semantics (sliding windows, EOS resets, block-causal global, zero
empty rows: docs/architecture.md, "Reference vs Hugging Face"); the peer is built *with HF's own
semantics* and the record lists what differs (``semantic_changes``), since this is a speed
comparison, not parity. For FLOPs the peer is counted with the analytic formula on a bltkit
config that has HF's semantics (``hf_semantics``), so its MFU uses the attention it really
computes. Axes: B rows, N bytes, P patches.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..model.config import BLTConfig
from ..runtime import autocast
from .measure import time_generation, time_train_steps
from .workloads import analytic_train_flops


def hf_available() -> bool:
    return importlib.util.find_spec("transformers") is not None


def hf_semantics(cfg: BLTConfig) -> BLTConfig:
    """``cfg`` with HF's attention semantics: no windows or EOS resets, causal global, uniform
    empty rows, cross heads = local heads, re-pooling at every encoder cross step."""
    return dataclasses.replace(
        cfg,
        encoder=dataclasses.replace(cfg.encoder, window=None, doc_reset=False),
        decoder=dataclasses.replace(cfg.decoder, window=None, doc_reset=False),
        global_model=dataclasses.replace(cfg.global_model, doc_reset=False),
        cross_attn=dataclasses.replace(cfg.cross_attn, empty_rows="uniform", repool_each_layer=True,
                                       n_heads=cfg.encoder.n_heads),
        attn_impl="sdpa",
    )


def patcher_config(entropy_model: nn.Module, max_positions: int) -> dict:
    """HF ``patcher_config`` with the bench entropy model's sizes (HF's patcher: full causal)."""
    c = entropy_model.config
    return dict(hidden_size=c.dim, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                intermediate_size=c.hidden, max_position_embeddings=max_positions)


def build_hf_blt(cfg: BLTConfig, device: torch.device, patcher: Optional[dict] = None,
                 threshold: Optional[float] = None) -> tuple[Any, list[str]]:
    """(``BltForCausalLM`` on ``device`` with random weights, semantic changes vs ``cfg``).

    ``patcher`` (an HF ``patcher_config`` dict) puts the entropy patcher in the forward, with
    ``threshold`` in nats; without it the model takes the caller's ``patch_lengths``."""
    from transformers import BltForCausalLM

    from ..interop.hf import blt_config_to_hf

    scheme = {"scheme": "entropy", "threshold": threshold} if patcher is not None else None
    hfc, changes = blt_config_to_hf(cfg, patcher=scheme, patcher_config=patcher, allow_semantic_change=True)
    with torch.device(device):
        model = BltForCausalLM(hfc)
    return model, changes


def hf_train_figure(model: nn.Module, flops_cfg: BLTConfig, ids: torch.Tensor, hf_patch_lengths: torch.Tensor,
                    blt_patch_lengths: torch.Tensor, *, device: torch.device, amp: Optional[torch.dtype],
                    steps: int, warmup: int, peak: Optional[float]) -> dict:
    """HF's step exactly as the anchor runs it: ``labels = input_ids`` (HF shifts), Σ patch = N."""
    x = ids[:, :-1].to(device)  # (B, N): the same input bytes as bltkit's step
    pl = hf_patch_lengths.to(device)
    flops, source = analytic_train_flops(flops_cfg, x.cpu(), blt_patch_lengths)

    def loss_fn() -> torch.Tensor:
        return model(input_ids=x, labels=x, patch_lengths=pl, use_cache=False).loss

    return time_train_steps(model, loss_fn, flops, source + " with HF's attention semantics", x.numel(), device, amp,
                            steps, warmup, peak, "HF train")


def hf_patch_step(hf_model: Any, ids: torch.Tensor, threshold: float, *, device: torch.device,
                  amp: Optional[torch.dtype]) -> tuple[Callable[[], Any], Callable[[float, float, str], dict]]:
    """(step, record) of HF's ``model.model.patcher`` as the anchor calls it (``patch_size=4``,
    threshold in nats), as ``workloads.bltkit_patch_step``."""
    x = ids.to(device)
    patcher = hf_model.model.patcher
    out: dict[str, Any] = {}

    @torch.no_grad()
    def step() -> Any:
        with autocast(device, amp):
            res = patcher(x, patch_size=4, threshold=threshold)
        out["pl"] = res[1]
        return res

    def record(dt: float, mem: float, kind: str) -> dict:
        pl = out["pl"]
        return dict(ms=dt * 1e3, bytes_per_s=x.numel() / dt, peak_mem_gib=mem, peak_mem_kind=kind,
                    mean_patch=x.shape[1] / float((pl > 0).sum(dim=1).double().mean()),
                    patcher_params_m=sum(p.numel() for p in patcher.parameters()) / 1e6)

    return step, record


def hf_generate_figure(hf_model: Any, prompt: torch.Tensor, new_bytes: int, *, device: torch.device,
                       amp: Optional[torch.dtype]) -> dict:
    """HF ``generate`` as the anchor calls it (greedy, ``min_new_tokens`` = ``max_new_tokens``,
    uncached: its default for BLT). HF gives no per-byte hook, so its time to first byte is not
    measured (None)."""
    x = prompt.to(device)

    @torch.no_grad()
    def run(n: int, on_byte: Callable[[int], None]) -> torch.Tensor:
        with autocast(device, amp):
            return hf_model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    rec = time_generation(run, x.shape[1], x.shape[0], new_bytes, device, f"HF generate b{x.shape[0]}",
                          per_byte=False)
    rec["mode"] = "HF generate, use_cache False (its default)"
    return rec
